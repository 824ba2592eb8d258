// allreduce.cu - the custom one-host all-reduce: the handle (CUDA IPC buffer + signal area of every rank), the
// one-shot / two-shot kernels for f32/f16/bf16, and the block-scaled quantized (int8 / fp8-e4m3) variants.
//
// Protocol (see ssmtp.h "Custom all-reduce" for the contract):
//   * Rank r's allocation = [signal area | receive buffer]. The receive buffer has 2 halves (call parity) x ws slots
//     x slot_bytes. Slot q of rank r receives what rank q pushes to r. A call uses half (calls & 1), where `calls`
//     is a device-side counter of the rank (bumped by the last block of each launch), so CUDA-graph replays advance
//     it too. Why no closing barrier is needed: a block of call k+1 only passes its first barrier when every peer
//     has started call k+1, i.e. finished call k; so when call k+2 writes half (k & 1) again, no peer still reads it.
//   * Two-shot: reduce-scatter by pushes into the owner's slots; all-gather by pushes too: the owner stores its
//     reduced segment into part [slot/2, slot) of slot[owner] of every peer, and each rank copies the segments out
//     of its own buffer. Stores over NVLink measured faster than loads (2x H200, 16 MiB bf16: 60.8 us vs 68.7 with
//     the all-gather loading from the owners' buffers). Splitting a block's range into pipelined rounds with a flag
//     pair per round measured slower at every round size tried (16-64 KiB), so the phases run once per launch.
//   * Lamport one-shot: 3 sets x ws small slots filled with a sentinel; senders push data (never the sentinel),
//     receivers poll the data, sum, and reset the slot to the sentinel. Set = calls % 3 (a peer can be at most
//     one call ahead, and it writes set s again only after it has our data of 2 calls later).
//   * Barrier = per-block flags: block b of rank r stores the epoch into flags[b][r] of every peer (release, system
//     scope) and waits until its own flags[b][q] >= epoch for every peer q (acquire). Epochs are 2*call+1 and
//     2*call+2, derived from the call counter, so no host-side state enters the kernels (graph-safe). Work is split
//     so that every cross-rank dependency pairs the same block index on both ranks; identical launches (same sizes
//     on every rank) give identical splits.
//   * Waits are bounded (globaltimer, timeout_ns). On timeout or header mismatch the error word is set locally, on
//     every peer and in mapped host memory; later launches see it and exit at once.
// Accumulation is fp32 in rank order 0..ws-1 (no FMA contraction: __fadd_rn / __fmul_rn), so every rank computes
// the same bits; two-shot results are computed once and copied.
#include "common.cuh"

#include <algorithm>
#include <math.h>
#include <nvtx3/nvToolsExt.h>
#include <stdlib.h>

#define AR_MAX_BLOCKS 256
#define AR_THREADS 512
#define AR_DATA_OFFSET 65536        // signal area size; the receive buffer starts here
#define AR_TILE 512                 // quantized kernels: one warp handles 32 lanes x 16 elements
#define AR_UNROLL 4                 // packs in flight per thread (plain kernels): enough loads outstanding for HBM/NVLink
#define AR_LAM_SLOT (512 * 1024)    // bytes per lamport slot (messages above are reduced in chunks of this)
#define AR_LAM_WORD 0x80008000u     // lamport sentinel as a 32-bit word (two bf16/f16 -0.0, or one f32 subnormal)

enum { AR_ERR_TIMEOUT = 1, AR_ERR_MISMATCH = 2 };

struct ar_signal {
    uint64_t flags[AR_MAX_BLOCKS][SSMTP_AR_MAX_RANKS]; // flags[b][q]: last epoch rank q signalled to block b
    uint64_t hdr[2][SSMTP_AR_MAX_RANKS];               // hdr[call & 1][q]: message descriptor rank q sent
    uint32_t error;                                    // 0, or kind | peer << 4 | block << 8 | reporter << 16
    uint32_t done_blocks;                              // local: blocks of the running launch that finished
    uint64_t calls;                                    // local: completed launches of this handle
};
static_assert(sizeof(ar_signal) <= AR_DATA_OFFSET, "signal area too large");
static_assert(sizeof(cudaIpcMemHandle_t) == SSMTP_AR_IPC_HANDLE_BYTES, "IPC handle size");

// Everything a kernel needs, passed by value (a graph captures it; nothing in it changes between calls).
struct ar_ptrs {
    char *data[SSMTP_AR_MAX_RANKS];     // receive buffer of every rank, mapped here ([rank] = our own)
    char *lam[SSMTP_AR_MAX_RANKS];      // lamport slots of every rank
    ar_signal *sig[SSMTP_AR_MAX_RANKS]; // signal area of every rank
    uint32_t *host_err;                 // mapped pinned host word (device view)
    int rank, ws;
    int strong_fence; // 1: every thread fences (system scope) its pushes before the block signals (SSMTP_AR_FENCE)
    int64_t slot_bytes;
    uint64_t timeout_ns;
    uint64_t desc; // message descriptor (hash of sizes, dtype, algorithm, quantization)
};

struct ssmtp_ar {
    int32_t rank, ws, device, max_blocks;
    int64_t slot_bytes, oneshot_max_bytes;
    double timeout_s;
    char *base;                          // our allocation (signal area + receive buffer)
    char *peer_base[SSMTP_AR_MAX_RANKS]; // IPC mappings of the peers' allocations ([rank] = base)
    uint32_t *host_err;                  // pinned, mapped
    uint32_t *host_err_dev;
    cudaStream_t side; // non-blocking stream for reading the device error word
    int opened;
    uint32_t err; // the error word once seen (the handle is unusable from then on)
    ar_ptrs ptrs;
};

// ------------------------------------------------------------------------------------------------ device helpers

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t *p) {
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_sys(uint64_t *p, uint64_t v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t global_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ uint32_t ld_volatile(const uint32_t *p) { return *(const volatile uint32_t *)p; }

// Record an error here, on every peer (so their next launches stop too) and in host memory. First error wins.
__device__ void ar_raise(const ar_ptrs &a, uint32_t code) {
    atomicCAS(&a.sig[a.rank]->error, 0u, code);
    for (int p = 0; p < a.ws; p++)
        if (p != a.rank && ld_volatile(&a.sig[p]->error) == 0) *(volatile uint32_t *)&a.sig[p]->error = code;
    __threadfence_system();
    *(volatile uint32_t *)a.host_err = ld_volatile(&a.sig[a.rank]->error);
}

// Start of every kernel: thread 0 reads the call counter and the error word for the whole block (a uniform
// decision: no thread may skip a later __syncthreads). Returns false when the handle already failed.
__device__ __forceinline__ bool ar_begin(const ar_ptrs &a, uint64_t &call) {
    __shared__ uint64_t s_call;
    __shared__ uint32_t s_err;
    // Launched with programmatic dependent launch (the exact algorithms, see launch_plain): wait for the kernels
    // before this one (the input's producer, and transitively the previous all-reduce, whose last block bumped the
    // call counter read below), then let the next kernel's blocks be scheduled while this one exchanges data.
    // Without the launch attribute both are no-ops.
    ssm_pdl_wait();
    ssm_pdl_trigger();
    if (threadIdx.x == 0) {
        s_err = ld_volatile(&a.sig[a.rank]->error);
        s_call = *(const volatile uint64_t *)&a.sig[a.rank]->calls;
        if (s_err && blockIdx.x == 0) *(volatile uint32_t *)a.host_err = s_err;
    }
    __syncthreads();
    call = s_call;
    return s_err == 0;
}

// End of every kernel: the last block to finish bumps the call counter (seen by the next launch).
__device__ __forceinline__ void ar_end(const ar_ptrs &a, uint64_t call) {
    __syncthreads();
    if (threadIdx.x == 0) {
        ar_signal *own = a.sig[a.rank];
        const uint32_t prev = atomicAdd(&own->done_blocks, 1u);
        if (prev == gridDim.x - 1) {
            own->done_blocks = 0;
            *(volatile uint64_t *)&own->calls = call + 1;
            const uint32_t e = ld_volatile(&own->error);
            if (e) *(volatile uint32_t *)a.host_err = e;
            __threadfence();
        }
    }
}

// Cross-rank barrier of block blockIdx.x (all threads call it). Threads 1..ws (one per peer) signal and wait.
__device__ void ar_barrier(const ar_ptrs &a, uint64_t epoch, bool with_hdr) {
    if (a.strong_fence) __threadfence_system();
    __syncthreads();
    const int q = threadIdx.x;
    if (q < a.ws && q != a.rank) {
        ar_signal *own = a.sig[a.rank];
        const int par = (int)((epoch >> 1) & 1);
        if (with_hdr) *(volatile uint64_t *)&a.sig[q]->hdr[par][a.rank] = a.desc;
        st_release_sys(&a.sig[q]->flags[blockIdx.x][a.rank], epoch);
        const uint64_t *f = &own->flags[blockIdx.x][q];
        bool arrived = (int64_t)(ld_acquire_sys(f) - epoch) >= 0;
        if (!arrived) {
            const uint64_t t0 = global_ns();
            for (uint32_t spin = 1;; spin++) {
                if ((int64_t)(ld_acquire_sys(f) - epoch) >= 0) {
                    arrived = true;
                    break;
                }
                if ((spin & 255) == 0) {
                    if (ld_volatile(&own->error)) break;
                    if (global_ns() - t0 > a.timeout_ns) {
                        ar_raise(a, AR_ERR_TIMEOUT | (uint32_t)q << 4 | (blockIdx.x & 0xffu) << 8 |
                                        (uint32_t)a.rank << 16);
                        break;
                    }
                }
            }
        }
        if (arrived && with_hdr) {
            const uint64_t h = *(const volatile uint64_t *)&own->hdr[par][q];
            if (h != a.desc) ar_raise(a, AR_ERR_MISMATCH | (uint32_t)q << 4 | (uint32_t)a.rank << 16);
        }
    }
    __syncthreads();
}

// ------------------------------------------------------------------------------------------------ element access

template <typename T> struct ET;
template <> struct ET<float> {
    typedef unsigned int U;
    static constexpr int N = 4; // elements per 16-byte pack
    static __device__ __forceinline__ float f(U u) { return __uint_as_float(u); }
    static __device__ __forceinline__ U b(float x) { return __float_as_uint(x); }
};
template <> struct ET<__half> {
    typedef unsigned short U;
    static constexpr int N = 8;
    static __device__ __forceinline__ float f(U u) { return __half2float(__ushort_as_half(u)); }
    static __device__ __forceinline__ U b(float x) { return __half_as_ushort(__float2half_rn(x)); }
};
template <> struct ET<__nv_bfloat16> {
    typedef unsigned short U;
    static constexpr int N = 8;
    static __device__ __forceinline__ float f(U u) { return __uint_as_float((unsigned int)u << 16); }
    static __device__ __forceinline__ U b(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
};

template <typename T> struct alignas(16) Pk {
    typename ET<T>::U u[ET<T>::N];
};

// Caller's memory: a 16-byte access when the pack is full and the tensor is 16-byte aligned, else per element.
template <typename T> __device__ __forceinline__ Pk<T> ld_user(const T *p, int cnt, bool al) {
    typedef typename ET<T>::U U;
    Pk<T> r;
    if (al && cnt == ET<T>::N) {
        *reinterpret_cast<uint4 *>(&r) = *reinterpret_cast<const uint4 *>(p);
    } else {
#pragma unroll
        for (int i = 0; i < ET<T>::N; i++) r.u[i] = i < cnt ? reinterpret_cast<const U *>(p)[i] : (U)0;
    }
    return r;
}
template <typename T> __device__ __forceinline__ void st_user(T *p, int cnt, bool al, const Pk<T> &v) {
    typedef typename ET<T>::U U;
    if (al && cnt == ET<T>::N) {
        *reinterpret_cast<uint4 *>(p) = *reinterpret_cast<const uint4 *>(&v);
    } else {
#pragma unroll
        for (int i = 0; i < ET<T>::N; i++)
            if (i < cnt) reinterpret_cast<U *>(p)[i] = v.u[i];
    }
}
// Receive buffers (always 16-byte aligned at pack boundaries). Loads bypass L1 (the data was written by a peer).
template <typename T> __device__ __forceinline__ Pk<T> ld_buf(const T *p, int cnt) {
    typedef typename ET<T>::U U;
    Pk<T> r;
    if (cnt == ET<T>::N) {
        *reinterpret_cast<uint4 *>(&r) = __ldcg(reinterpret_cast<const uint4 *>(p));
    } else {
#pragma unroll
        for (int i = 0; i < ET<T>::N; i++) r.u[i] = i < cnt ? __ldcg(reinterpret_cast<const U *>(p) + i) : (U)0;
    }
    return r;
}
template <typename T> __device__ __forceinline__ void st_buf(T *p, int cnt, const Pk<T> &v) {
    st_user<T>(p, cnt, true, v);
}

template <typename T> __device__ __forceinline__ T *slot_ptr(const ar_ptrs &a, int dst, int64_t half_off, int slot,
                                                             int64_t part_off) {
    return reinterpret_cast<T *>(a.data[dst] + half_off + (int64_t)slot * a.slot_bytes + part_off);
}

// ------------------------------------------------------------------------------------------------ plain kernels

template <typename T> __device__ __forceinline__ int pk_cnt(int64_t len, int64_t k) {
    return (int)min((int64_t)ET<T>::N, len - k * ET<T>::N);
}

// Sum over ranks 0..ws-1 of the U packs at kb + u*stride (k < kend): own contribution from own_in, the others from
// load(q, k) (a receive slot). Results in o[u].
template <typename T, typename LOAD>
__device__ __forceinline__ void reduce_packs(const ar_ptrs &a, const T *own_in, int64_t len, bool al, int64_t kb,
                                             int64_t kend, LOAD load, Pk<T> (&o)[AR_UNROLL]) {
    constexpr int N = ET<T>::N;
    const int64_t stride = blockDim.x;
    float acc[AR_UNROLL][N];
    for (int q = 0; q < a.ws; q++) {
        Pk<T> v[AR_UNROLL];
#pragma unroll
        for (int u = 0; u < AR_UNROLL; u++) {
            const int64_t k = kb + u * stride;
            if (k < kend) v[u] = q == a.rank ? ld_user<T>(own_in + k * N, pk_cnt<T>(len, k), al) : load(q, k);
            else v[u] = Pk<T>();
        }
#pragma unroll
        for (int u = 0; u < AR_UNROLL; u++)
#pragma unroll
            for (int i = 0; i < N; i++)
                acc[u][i] = q == 0 ? ET<T>::f(v[u].u[i]) : __fadd_rn(acc[u][i], ET<T>::f(v[u].u[i]));
    }
#pragma unroll
    for (int u = 0; u < AR_UNROLL; u++)
#pragma unroll
        for (int i = 0; i < N; i++) o[u].u[i] = ET<T>::b(acc[u][i]);
}

// Copy packs [k0, kend) of src (caller's tensor) to dst (a receive slot), AR_UNROLL packs in flight per thread.
template <typename T>
__device__ __forceinline__ void push_packs(const T *src, T *dst, int64_t len, int64_t k0, int64_t kend, bool al) {
    constexpr int N = ET<T>::N;
    const int64_t stride = blockDim.x;
    for (int64_t kb = k0 + threadIdx.x; kb < kend; kb += stride * AR_UNROLL) {
        Pk<T> v[AR_UNROLL];
#pragma unroll
        for (int u = 0; u < AR_UNROLL; u++) {
            const int64_t k = kb + u * stride;
            if (k < kend) v[u] = ld_user<T>(src + k * N, pk_cnt<T>(len, k), al);
        }
#pragma unroll
        for (int u = 0; u < AR_UNROLL; u++) {
            const int64_t k = kb + u * stride;
            if (k < kend) st_buf<T>(dst + k * N, pk_cnt<T>(len, k), v[u]);
        }
    }
}

// One-shot: push the whole input to every peer, barrier, sum slots 0..ws-1 (own input for our own slot).
template <typename T>
__global__ void __launch_bounds__(AR_THREADS) ar_oneshot_kernel(ar_ptrs a, const T *in, T *out, int64_t n, bool al) {
    constexpr int N = ET<T>::N;
    uint64_t call;
    if (!ar_begin(a, call)) return;
    const int64_t half_off = (int64_t)(call & 1) * a.ws * a.slot_bytes;
    const int64_t npk = (n + N - 1) / N, per = (npk + gridDim.x - 1) / gridDim.x;
    const int64_t k0 = (int64_t)blockIdx.x * per, k1 = min(k0 + per, npk), stride = blockDim.x;
    for (int p = 0; p < a.ws; p++)
        if (p != a.rank) push_packs<T>(in, slot_ptr<T>(a, p, half_off, a.rank, 0), n, k0, k1, al);
    ar_barrier(a, 2 * call + 1, blockIdx.x == 0);
    for (int64_t kb = k0 + threadIdx.x; kb < k1; kb += stride * AR_UNROLL) {
        Pk<T> o[AR_UNROLL];
        reduce_packs<T>(a, in, n, al, kb, k1,
                        [&](int q, int64_t k) {
                            return ld_buf<T>(slot_ptr<T>(a, a.rank, half_off, q, 0) + k * N, pk_cnt<T>(n, k));
                        },
                        o);
#pragma unroll
        for (int u = 0; u < AR_UNROLL; u++) {
            const int64_t k = kb + u * stride;
            if (k < k1) st_user<T>(out + k * N, pk_cnt<T>(n, k), al, o[u]);
        }
    }
    ar_end(a, call);
}

// Two-shot: segment q (seg elements, a multiple of N) is reduced by rank q. Reduce-scatter: push into part
// [0, slot/2) of the owner's slot[rank]. All-gather: the owner stores the reduced segment into part [slot/2, slot)
// of slot[owner] of every peer, and every rank copies the others' segments out of its own buffer.
template <typename T>
__global__ void __launch_bounds__(AR_THREADS)
    ar_twoshot_kernel(ar_ptrs a, const T *in, T *out, int64_t n, int64_t seg, bool al) {
    constexpr int N = ET<T>::N;
    uint64_t call;
    if (!ar_begin(a, call)) return;
    const int64_t half_off = (int64_t)(call & 1) * a.ws * a.slot_bytes, ag_off = a.slot_bytes / 2;
    const int64_t segpk = seg / N, per = (segpk + gridDim.x - 1) / gridDim.x;
    const int64_t k0 = (int64_t)blockIdx.x * per, k1 = min(k0 + per, segpk), stride = blockDim.x;
    for (int q = 0; q < a.ws; q++) {
        if (q == a.rank) continue;
        const int64_t base = q * seg, len = max((int64_t)0, min(seg, n - base)), kend = min(k1, (len + N - 1) / N);
        push_packs<T>(in + base, slot_ptr<T>(a, q, half_off, a.rank, 0), len, k0, kend, al);
    }
    ar_barrier(a, 2 * call + 1, blockIdx.x == 0);
    {
        const int64_t base = a.rank * seg, len = max((int64_t)0, min(seg, n - base)),
                      kend = min(k1, (len + N - 1) / N);
        for (int64_t kb = k0 + threadIdx.x; kb < kend; kb += stride * AR_UNROLL) {
            Pk<T> o[AR_UNROLL];
            reduce_packs<T>(a, in + base, len, al, kb, kend,
                            [&](int q, int64_t k) {
                                return ld_buf<T>(slot_ptr<T>(a, a.rank, half_off, q, 0) + k * N, pk_cnt<T>(len, k));
                            },
                            o);
#pragma unroll
            for (int u = 0; u < AR_UNROLL; u++) {
                const int64_t k = kb + u * stride;
                if (k < kend) {
                    const int cnt = pk_cnt<T>(len, k);
                    st_user<T>(out + base + k * N, cnt, al, o[u]);
                    for (int p = 0; p < a.ws; p++)
                        if (p != a.rank) st_buf<T>(slot_ptr<T>(a, p, half_off, a.rank, ag_off) + k * N, cnt, o[u]);
                }
            }
        }
    }
    ar_barrier(a, 2 * call + 2, false);
    for (int q = 0; q < a.ws; q++) {
        if (q == a.rank) continue;
        const int64_t base = q * seg, len = max((int64_t)0, min(seg, n - base)), kend = min(k1, (len + N - 1) / N);
        const T *src = slot_ptr<T>(a, a.rank, half_off, q, ag_off); // pushed here by the owner
        for (int64_t kb = k0 + threadIdx.x; kb < kend; kb += stride * AR_UNROLL) {
            Pk<T> v[AR_UNROLL];
#pragma unroll
            for (int u = 0; u < AR_UNROLL; u++) {
                const int64_t k = kb + u * stride;
                if (k < kend) v[u] = ld_buf<T>(src + k * N, pk_cnt<T>(len, k));
            }
#pragma unroll
            for (int u = 0; u < AR_UNROLL; u++) {
                const int64_t k = kb + u * stride;
                if (k < kend) st_user<T>(out + base + k * N, pk_cnt<T>(len, k), al, v[u]);
            }
        }
    }
    ar_end(a, call);
}

// ------------------------------------------------------------------------------------------------ lamport

template <typename T> struct LamSent;
template <> struct LamSent<float> {
    static constexpr unsigned int S = AR_LAM_WORD, R = 0x80000000u; // sentinel, and what a sender sends instead
};
template <> struct LamSent<__half> {
    static constexpr unsigned short S = 0x8000, R = 0x0000;
};
template <> struct LamSent<__nv_bfloat16> {
    static constexpr unsigned short S = 0x8000, R = 0x0000;
};

template <typename T> __device__ __forceinline__ void lam_clean(Pk<T> &v) {
#pragma unroll
    for (int i = 0; i < ET<T>::N; i++)
        if (v.u[i] == LamSent<T>::S) v.u[i] = LamSent<T>::R;
}

__device__ __forceinline__ uint4 ld_volatile_v4(const void *p) {
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}

// Wait until the cnt elements at p (our own lamport slot of peer q) hold data, then reset them to the sentinel.
template <typename T> __device__ Pk<T> lam_take(const ar_ptrs &a, T *p, int cnt, int q) {
    typedef typename ET<T>::U U;
    Pk<T> v;
    uint64_t t0 = 0;
    for (uint32_t spin = 1;; spin++) {
        if (cnt == ET<T>::N) {
            *reinterpret_cast<uint4 *>(&v) = ld_volatile_v4(p);
        } else {
#pragma unroll
            for (int i = 0; i < ET<T>::N; i++) v.u[i] = i < cnt ? *(const volatile U *)(reinterpret_cast<U *>(p) + i) : (U)0;
        }
        bool ready = true;
#pragma unroll
        for (int i = 0; i < ET<T>::N; i++) ready &= (i >= cnt) || v.u[i] != LamSent<T>::S;
        if (ready) break;
        if ((spin & 255) == 0) {
            if (ld_volatile(&a.sig[a.rank]->error)) break;
            const uint64_t now = global_ns();
            if (!t0) t0 = now;
            else if (now - t0 > a.timeout_ns) {
                ar_raise(a, AR_ERR_TIMEOUT | (uint32_t)q << 4 | (blockIdx.x & 0xffu) << 8 | (uint32_t)a.rank << 16);
                break;
            }
        }
    }
    Pk<T> s;
#pragma unroll
    for (int i = 0; i < ET<T>::N; i++) s.u[i] = LamSent<T>::S;
    st_buf<T>(p, cnt, s);
    return v;
}

template <typename T>
__global__ void __launch_bounds__(AR_THREADS) ar_lamport_kernel(ar_ptrs a, const T *in, T *out, int64_t n, bool al) {
    constexpr int N = ET<T>::N;
    uint64_t call;
    if (!ar_begin(a, call)) return;
    const int64_t set_off = (int64_t)(call % 3) * a.ws * AR_LAM_SLOT;
    const int64_t npk = (n + N - 1) / N, per = (npk + gridDim.x - 1) / gridDim.x;
    const int64_t k0 = (int64_t)blockIdx.x * per, k1 = min(k0 + per, npk);
    for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
        const int cnt = pk_cnt<T>(n, k);
        Pk<T> v = ld_user<T>(in + k * N, cnt, al);
        lam_clean<T>(v);
        for (int p = 0; p < a.ws; p++)
            if (p != a.rank)
                st_buf<T>(reinterpret_cast<T *>(a.lam[p] + set_off + (int64_t)a.rank * AR_LAM_SLOT) + k * N, cnt, v);
    }
    for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
        const int cnt = pk_cnt<T>(n, k);
        float acc[N];
        for (int q = 0; q < a.ws; q++) {
            Pk<T> v;
            if (q == a.rank) {
                v = ld_user<T>(in + k * N, cnt, al);
                lam_clean<T>(v);
            } else {
                v = lam_take<T>(a, reinterpret_cast<T *>(a.lam[a.rank] + set_off + (int64_t)q * AR_LAM_SLOT) + k * N,
                                cnt, q);
            }
#pragma unroll
            for (int i = 0; i < N; i++) acc[i] = q == 0 ? ET<T>::f(v.u[i]) : __fadd_rn(acc[i], ET<T>::f(v.u[i]));
        }
        Pk<T> o;
#pragma unroll
        for (int i = 0; i < N; i++) o.u[i] = ET<T>::b(acc[i]);
        st_user<T>(out + k * N, cnt, al, o);
    }
    ar_end(a, call);
}

__global__ void fill_u32_kernel(uint32_t *p, int64_t n, uint32_t v) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = v;
}

// ------------------------------------------------------------------------------------------------ quantized

// 16 consecutive elements of the caller's tensor as floats (cnt valid, the rest 0).
template <typename T> __device__ __forceinline__ void ld16(const T *p, int cnt, bool al, float (&v)[16]) {
    typedef typename ET<T>::U U;
    constexpr int NV = 16 / ET<T>::N; // 16-byte words
    if (al && cnt == 16) {
        uint4 w[NV];
#pragma unroll
        for (int j = 0; j < NV; j++) w[j] = reinterpret_cast<const uint4 *>(p)[j];
        const U *u = reinterpret_cast<const U *>(w);
#pragma unroll
        for (int i = 0; i < 16; i++) v[i] = ET<T>::f(u[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 16; i++) v[i] = i < cnt ? ET<T>::f(reinterpret_cast<const U *>(p)[i]) : 0.f;
    }
}
template <typename T> __device__ __forceinline__ void st16(T *p, int cnt, bool al, const float (&v)[16]) {
    typedef typename ET<T>::U U;
    constexpr int NV = 16 / ET<T>::N;
    if (al && cnt == 16) {
        uint4 w[NV];
        U *u = reinterpret_cast<U *>(w);
#pragma unroll
        for (int i = 0; i < 16; i++) u[i] = ET<T>::b(v[i]);
#pragma unroll
        for (int j = 0; j < NV; j++) reinterpret_cast<uint4 *>(p)[j] = w[j];
    } else {
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (i < cnt) reinterpret_cast<U *>(p)[i] = ET<T>::b(v[i]);
    }
}

// Quantize 16 values with the L lanes that share one block of 16*L elements (same math as quant.cu / quant.c:
// amax over the valid elements; scale = amax/qmax, NaN for a non-finite block, 0 for an all-zero one;
// q = rne(x * qmax/amax) saturated). Every lane of the warp must call it. Returns the block's scale.
template <bool I8, int L> __device__ __forceinline__ float quant16(const float (&v)[16], int cnt, uint4 &qv) {
    float amax = 0.f;
    int finite = 1;
#pragma unroll
    for (int i = 0; i < 16; i++)
        if (i < cnt) {
            if (!isfinite(v[i])) finite = 0;
            else amax = fmaxf(amax, fabsf(v[i]));
        }
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        finite &= __shfl_xor_sync(0xffffffffu, finite, o);
    }
    const float qmax = I8 ? 127.f : 448.f;
    const float scale = finite ? amax / qmax : __int_as_float(0x7fc00000);
    const float inv = (finite && amax > 0.f) ? qmax / amax : 0.f;
    uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const float x = (finite && i < cnt) ? __fmul_rn(v[i], inv) : 0.f;
        uint32_t byte;
        if (I8) {
            byte = (uint32_t)(uint8_t)(int8_t)fminf(fmaxf(rintf(x), -127.f), 127.f);
        } else {
            const __nv_fp8_e4m3 f(fminf(fmaxf(x, -448.f), 448.f));
            byte = (uint32_t)f.__x;
        }
        w[i / 4] |= byte << (8 * (i % 4));
    }
    qv = make_uint4(w[0], w[1], w[2], w[3]);
    return scale;
}

template <bool I8> __device__ __forceinline__ void deq16(uint4 qv, float s, float (&d)[16]) {
    const uint32_t w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const uint8_t byte = (uint8_t)(w[i / 4] >> (8 * (i % 4)));
        float q;
        if (I8) {
            q = (float)(int8_t)byte;
        } else {
            __nv_fp8_e4m3 f;
            f.__x = byte;
            q = float(f);
        }
        d[i] = __fmul_rn(q, s);
    }
}

// A quantized part of a slot: q bytes at [0, sc_off), fp32 scales from sc_off (one per block of 16*L elements).
struct qpart {
    char *p;
    int64_t sc_off;
};
template <int L> __device__ __forceinline__ void qstore(qpart d, int64_t e0, int cnt, uint4 qv, float s) {
    if (cnt <= 0) return;
    *reinterpret_cast<uint4 *>(d.p + e0) = qv;
    if ((threadIdx.x & 31) % L == 0) reinterpret_cast<float *>(d.p + d.sc_off)[e0 / (16 * L)] = s;
}
template <int L> __device__ __forceinline__ float qload(qpart d, int64_t e0, int cnt, uint4 &qv) {
    if (cnt <= 0) {
        qv = make_uint4(0u, 0u, 0u, 0u);
        return 0.f;
    }
    qv = __ldcg(reinterpret_cast<const uint4 *>(d.p + e0));
    return __ldcg(reinterpret_cast<const float *>(d.p + d.sc_off) + e0 / (16 * L));
}

// acc = sum over ranks (order 0..ws-1) of dequantize(quantize(x_q)) for the 16 elements at e0 of a part, then
// requantize: returns the scale of the reduced block, its q bytes in q2, and the dequantized values in o.
template <typename T, bool I8, int L>
__device__ __forceinline__ float qreduce16(const ar_ptrs &a, const T *own_in, int64_t half_off, int64_t part_off,
                                           int64_t sc_off, int64_t e0, int cnt, bool al, uint4 &q2, float (&o)[16]) {
    float acc[16];
    for (int q = 0; q < a.ws; q++) {
        float d[16];
        uint4 qv;
        float s;
        if (q == a.rank) {
            float v[16];
            ld16<T>(own_in + e0, max(cnt, 0), al, v);
            s = quant16<I8, L>(v, cnt, qv);
        } else {
            s = qload<L>(qpart{(char *)slot_ptr<char>(a, a.rank, half_off, q, part_off), sc_off}, e0, cnt, qv);
        }
        deq16<I8>(qv, s, d);
#pragma unroll
        for (int i = 0; i < 16; i++) acc[i] = q == 0 ? d[i] : __fadd_rn(acc[i], d[i]);
    }
    const float s2 = quant16<I8, L>(acc, cnt, q2);
    deq16<I8>(q2, s2, o);
    return s2;
}

// Quantized one-shot: quantize the whole chunk and push it to every peer; every rank reduces everything.
template <typename T, bool I8, int L>
__global__ void __launch_bounds__(AR_THREADS) ar_q1_kernel(ar_ptrs a, const T *in, T *out, int64_t n, bool al) {
    uint64_t call;
    if (!ar_begin(a, call)) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t half_off = (int64_t)(call & 1) * a.ws * a.slot_bytes;
    const int64_t sc_off = (n + AR_TILE - 1) / AR_TILE * AR_TILE;
    const int64_t ntiles = (n + AR_TILE - 1) / AR_TILE, per = (ntiles + gridDim.x - 1) / gridDim.x;
    const int64_t t0 = (int64_t)blockIdx.x * per, t1 = min(t0 + per, ntiles);
    for (int64_t t = t0 + warp; t < t1; t += nwarps) {
        const int64_t e0 = t * AR_TILE + lane * 16;
        const int cnt = (int)max((int64_t)0, min((int64_t)16, n - e0));
        float v[16];
        ld16<T>(in + e0, cnt, al, v);
        uint4 qv;
        const float s = quant16<I8, L>(v, cnt, qv);
        for (int p = 0; p < a.ws; p++)
            if (p != a.rank) qstore<L>(qpart{slot_ptr<char>(a, p, half_off, a.rank, 0), sc_off}, e0, cnt, qv, s);
    }
    ar_barrier(a, 2 * call + 1, blockIdx.x == 0);
    for (int64_t t = t0 + warp; t < t1; t += nwarps) {
        const int64_t e0 = t * AR_TILE + lane * 16;
        const int cnt = (int)max((int64_t)0, min((int64_t)16, n - e0));
        uint4 q2;
        float o[16];
        qreduce16<T, I8, L>(a, in, half_off, 0, sc_off, e0, cnt, al, q2, o);
        if (cnt > 0) st16<T>(out + e0, cnt, al, o);
    }
    ar_end(a, call);
}

// Quantized two-shot: quantized reduce-scatter (pushed to the owner), fp32 sum, requantize, quantized all-gather
// (pushed by the owner into every peer's buffer, as in the plain two-shot). seg is a multiple of AR_TILE, so
// segments start on quantization-block boundaries of the whole message.
template <typename T, bool I8, int L>
__global__ void __launch_bounds__(AR_THREADS)
    ar_q2_kernel(ar_ptrs a, const T *in, T *out, int64_t n, int64_t seg, bool al) {
    uint64_t call;
    if (!ar_begin(a, call)) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t half_off = (int64_t)(call & 1) * a.ws * a.slot_bytes, ag_off = a.slot_bytes / 2;
    const int64_t sc_off = seg;
    const int64_t ntiles = seg / AR_TILE, per = (ntiles + gridDim.x - 1) / gridDim.x;
    const int64_t t0 = (int64_t)blockIdx.x * per, t1 = min(t0 + per, ntiles);
    for (int q = 0; q < a.ws; q++) {
        if (q == a.rank) continue;
        const int64_t base = q * seg, len = max((int64_t)0, min(seg, n - base));
        const qpart dst{slot_ptr<char>(a, q, half_off, a.rank, 0), sc_off};
        for (int64_t t = t0 + warp; t < t1 && t * AR_TILE < len; t += nwarps) {
            const int64_t e0 = t * AR_TILE + lane * 16;
            const int cnt = (int)max((int64_t)0, min((int64_t)16, len - e0));
            float v[16];
            ld16<T>(in + base + e0, cnt, al, v);
            uint4 qv;
            const float s = quant16<I8, L>(v, cnt, qv);
            qstore<L>(dst, e0, cnt, qv, s);
        }
    }
    ar_barrier(a, 2 * call + 1, blockIdx.x == 0);
    {
        const int64_t base = a.rank * seg, len = max((int64_t)0, min(seg, n - base));
        for (int64_t t = t0 + warp; t < t1 && t * AR_TILE < len; t += nwarps) {
            const int64_t e0 = t * AR_TILE + lane * 16;
            const int cnt = (int)max((int64_t)0, min((int64_t)16, len - e0));
            uint4 q2;
            float o[16];
            const float s2 = qreduce16<T, I8, L>(a, in + base, half_off, 0, sc_off, e0, cnt, al, q2, o);
            if (cnt > 0) st16<T>(out + base + e0, cnt, al, o);
            for (int p = 0; p < a.ws; p++)
                if (p != a.rank)
                    qstore<L>(qpart{slot_ptr<char>(a, p, half_off, a.rank, ag_off), sc_off}, e0, cnt, q2, s2);
        }
    }
    ar_barrier(a, 2 * call + 2, false);
    for (int q = 0; q < a.ws; q++) {
        if (q == a.rank) continue;
        const int64_t base = q * seg, len = max((int64_t)0, min(seg, n - base));
        const qpart src{slot_ptr<char>(a, a.rank, half_off, q, ag_off), sc_off}; // pushed here by the owner
        for (int64_t t = t0 + warp; t < t1 && t * AR_TILE < len; t += nwarps) {
            const int64_t e0 = t * AR_TILE + lane * 16;
            const int cnt = (int)max((int64_t)0, min((int64_t)16, len - e0));
            if (cnt <= 0) continue;
            uint4 qv;
            const float s = qload<L>(src, e0, cnt, qv);
            float o[16];
            deq16<I8>(qv, s, o);
            st16<T>(out + base + e0, cnt, al, o);
        }
    }
    ar_end(a, call);
}

// ------------------------------------------------------------------------------------------------ host side

static ssmtp_status_t ar_error_status(ssmtp_ar_t *ar, uint32_t e) {
    ar->err = e;
    const int kind = (int)(e & 0xf), peer = (int)((e >> 4) & 0xf), block = (int)((e >> 8) & 0xff),
              who = (int)((e >> 16) & 0xff);
    if (kind == AR_ERR_MISMATCH)
        return ssmtp_fail(SSMTP_ERR_INVALID,
                          "ar: ranks %d and %d called the all-reduce with different messages (size, dtype, algorithm "
                          "or quantization); this handle is unusable now: free it and make a new one",
                          who, peer);
    return ssmtp_fail(SSMTP_ERR_TIMEOUT,
                      "ar: rank %d waited more than %.3g s for rank %d (block %d): a rank did not make the same "
                      "all-reduce call; this handle is unusable now: free it and make a new one",
                      who, ar->timeout_s, peer, block);
}

extern "C" int32_t ssmtp_cuda_ar_world_size(const ssmtp_ar_t *ar) { return ar->ws; }
extern "C" int32_t ssmtp_cuda_ar_device(const ssmtp_ar_t *ar) { return ar->device; }

extern "C" ssmtp_status_t ssmtp_cuda_ar_init(ssmtp_ar_t **out, const ssmtp_ar_config_t *cfg) {
    ssmtp_status_t st = SSMTP_OK;
    cudaError_t e;
    ssmtp_ar_t *ar = (ssmtp_ar_t *)calloc(1, sizeof *ar);
    if (!ar) return ssmtp_fail(SSMTP_ERR_NOMEM, "ar_init: out of host memory");
    ar->rank = cfg->rank;
    ar->ws = cfg->world_size;
    ar->device = cfg->device;
    ar->max_blocks = cfg->max_blocks;
    ar->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : 30.0;
    ar->oneshot_max_bytes = cfg->oneshot_max_bytes > 0 ? cfg->oneshot_max_bytes : ((int64_t)1 << 20);
    const int64_t buffer = cfg->buffer_bytes > 0 ? cfg->buffer_bytes : ((int64_t)128 << 20);
    ar->slot_bytes = buffer / (2 * ar->ws) / 4096 * 4096;
    if (ar->slot_bytes < 65536) {
        st = ssmtp_fail(SSMTP_ERR_INVALID, "ar_init: buffer_bytes=%lld gives %lld-byte slots; need >= 64 KiB (buffer "
                        ">= %d KiB)", (long long)buffer, (long long)ar->slot_bytes, 2 * ar->ws * 64);
        goto fail;
    }
    if ((st = ssmtp_cuda_set_device(ar->device)) != SSMTP_OK) goto fail;
    if (ar->max_blocks <= 0) { /* one block per multiprocessor: every block of a launch is resident at once */
        int sms = 0;
        if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ar->device)) != cudaSuccess) {
            st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_init: %s", cudaGetErrorString(e));
            goto fail;
        }
        ar->max_blocks = sms < AR_MAX_BLOCKS ? sms : AR_MAX_BLOCKS;
    }
    {
        const size_t lam_off = AR_DATA_OFFSET + (size_t)ar->slot_bytes * 2 * ar->ws;
        const size_t bytes = lam_off + (size_t)3 * ar->ws * AR_LAM_SLOT;
        if ((e = cudaMalloc((void **)&ar->base, bytes)) != cudaSuccess) {
            st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_init: cudaMalloc(%zu) failed: %s", bytes, cudaGetErrorString(e));
            goto fail;
        }
        const int64_t words = (int64_t)3 * ar->ws * AR_LAM_SLOT / 4;
        fill_u32_kernel<<<256, 256>>>((uint32_t *)(ar->base + lam_off), words, AR_LAM_WORD);
        if ((e = cudaGetLastError()) != cudaSuccess) {
            st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_init: fill: %s", cudaGetErrorString(e));
            goto fail;
        }
    }
    if ((e = cudaMemset(ar->base, 0, AR_DATA_OFFSET)) != cudaSuccess ||
        (e = cudaHostAlloc((void **)&ar->host_err, 64, cudaHostAllocMapped | cudaHostAllocPortable)) != cudaSuccess ||
        (e = cudaHostGetDevicePointer((void **)&ar->host_err_dev, ar->host_err, 0)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&ar->side, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaDeviceSynchronize()) != cudaSuccess) {
        st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_init: %s", cudaGetErrorString(e));
        goto fail;
    }
    *(volatile uint32_t *)ar->host_err = 0;
    ar->peer_base[ar->rank] = ar->base;
    *out = ar;
    return SSMTP_OK;
fail:
    if (ar->side) cudaStreamDestroy(ar->side);
    if (ar->host_err) cudaFreeHost(ar->host_err);
    if (ar->base) cudaFree(ar->base);
    free(ar);
    return st;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_ipc_handle(const ssmtp_ar_t *ar, void *out) {
    SSMTP_TRY(ssmtp_cuda_set_device(ar->device));
    cudaIpcMemHandle_t h;
    SSMTP_CUDA_TRY(cudaIpcGetMemHandle(&h, ar->base));
    memcpy(out, &h, sizeof h);
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_open_peers(ssmtp_ar_t *ar, const void *handles) {
    if (ar->opened) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_open_peers: peers are already open");
    SSMTP_TRY(ssmtp_cuda_set_device(ar->device));
    ssmtp_status_t st = SSMTP_OK;
    const char *hs = (const char *)handles;
    int p;
    cudaIpcMemHandle_t own;
    cudaError_t e = cudaIpcGetMemHandle(&own, ar->base);
    if (e != cudaSuccess) {
        st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_open_peers: cudaIpcGetMemHandle: %s", cudaGetErrorString(e));
        goto fail;
    }
    if (memcmp(&own, hs + (size_t)ar->rank * SSMTP_AR_IPC_HANDLE_BYTES, sizeof own) != 0) {
        st = ssmtp_fail(SSMTP_ERR_INVALID, "ar_open_peers: handle %d is not this rank's own (handles out of order?)",
                        (int)ar->rank);
        goto fail;
    }
    for (p = 0; p < ar->ws; p++) {
        if (p == ar->rank) continue;
        cudaIpcMemHandle_t h;
        memcpy(&h, hs + (size_t)p * SSMTP_AR_IPC_HANDLE_BYTES, sizeof h);
        void *ptr = NULL;
        e = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_open_peers: cudaIpcOpenMemHandle(rank %d) on cuda:%d: %s", p,
                            (int)ar->device, cudaGetErrorString(e));
            goto fail;
        }
        ar->peer_base[p] = (char *)ptr;
    }
    memset(&ar->ptrs, 0, sizeof ar->ptrs);
    for (p = 0; p < ar->ws; p++) {
        ar->ptrs.data[p] = ar->peer_base[p] + AR_DATA_OFFSET;
        ar->ptrs.lam[p] = ar->ptrs.data[p] + ar->slot_bytes * 2 * ar->ws;
        ar->ptrs.sig[p] = (ar_signal *)ar->peer_base[p];
    }
    ar->ptrs.host_err = ar->host_err_dev;
    ar->ptrs.rank = ar->rank;
    ar->ptrs.ws = ar->ws;
    ar->ptrs.slot_bytes = ar->slot_bytes;
    ar->ptrs.timeout_ns = (uint64_t)(ar->timeout_s * 1e9);
    {
        /* default: bar.sync then st.release.sys by the signalling thread (release is cumulative over what the block
         * wrote before the bar.sync); SSMTP_AR_FENCE=strong adds a system-scope fence in every thread. */
        const char *f = getenv("SSMTP_AR_FENCE");
        ar->ptrs.strong_fence = f && strcmp(f, "strong") == 0;
    }
    ar->opened = 1;
    return SSMTP_OK;
fail:
    for (p = 0; p < ar->ws; p++)
        if (p != ar->rank && ar->peer_base[p]) {
            cudaIpcCloseMemHandle(ar->peer_base[p]);
            ar->peer_base[p] = NULL;
        }
    return st;
}

static int64_t round_down(int64_t x, int64_t m) { return x / m * m; }
static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Largest chunk (elements) per launch for a (dtype, quantization, algorithm).
static int64_t chunk_cap(const ssmtp_ar_t *ar, int32_t dtype, int32_t qdtype, int32_t block, int32_t algo) {
    const int64_t es = (int64_t)ssmtp_dtype_size(dtype);
    if (algo == SSMTP_AR_LAMPORT) return round_down(AR_LAM_SLOT / es, AR_TILE);
    const int64_t part = algo == SSMTP_AR_TWOSHOT ? ar->slot_bytes / 2 : ar->slot_bytes;
    int64_t m;
    if (qdtype < 0) m = round_down(part / es, AR_TILE);
    else m = round_down((part - 16) * block / (block + 4), AR_TILE); /* q bytes + 4-byte scale per block */
    return algo == SSMTP_AR_TWOSHOT ? m * ar->ws : m;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_chunk_elems(const ssmtp_ar_t *ar, int32_t dtype, int32_t qdtype,
                                                    int32_t block, int32_t algo, int64_t *elems) {
    *elems = chunk_cap(ar, dtype, qdtype, block, algo == SSMTP_AR_AUTO ? SSMTP_AR_TWOSHOT : algo);
    return SSMTP_OK;
}

static uint64_t mix64(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 29);
}

// The exact algorithms, launched with programmatic dependent launch on sm_90+ (ssmtp_pdl_enabled; SSMTP_AR_PDL=0
// turns it off for these alone): the launch latency overlaps the producer's tail, and the kernel after the all-reduce
// (the decode step's next GEMV or state update) starts its weight loads while the exchange runs.
static bool ar_pdl(int device) {
    static int env = -1;
    if (env < 0) {
        const char *v = getenv("SSMTP_AR_PDL");
        env = (v && v[0] == '0' && v[1] == 0) ? 0 : 1;
    }
    return env && ssmtp_pdl_enabled(device);
}

template <typename T>
static ssmtp_status_t launch_plain(const ar_ptrs &a, int32_t algo, const T *in, T *out, int64_t n, int max_blocks,
                                   bool al, bool pdl, cudaStream_t s) {
    constexpr int N = ET<T>::N;
    const char *op = "ar_all_reduce";
    if (algo == SSMTP_AR_ONESHOT || algo == SSMTP_AR_LAMPORT) {
        const int64_t npk = (n + N - 1) / N;
        const int grid = (int)std::min<int64_t>(max_blocks, std::max<int64_t>(1, (npk + AR_THREADS - 1) / AR_THREADS));
        if (algo == SSMTP_AR_LAMPORT)
            return ssmtp_launch(op, ar_lamport_kernel<T>, dim3(grid), dim3(AR_THREADS), 0, s, pdl, a, in, out, n, al);
        return ssmtp_launch(op, ar_oneshot_kernel<T>, dim3(grid), dim3(AR_THREADS), 0, s, pdl, a, in, out, n, al);
    }
    const int64_t seg = round_up((n + a.ws - 1) / a.ws, N), segpk = seg / N;
    const int grid = (int)std::min<int64_t>(max_blocks, std::max<int64_t>(1, (segpk + AR_THREADS - 1) / AR_THREADS));
    return ssmtp_launch(op, ar_twoshot_kernel<T>, dim3(grid), dim3(AR_THREADS), 0, s, pdl, a, in, out, n, seg, al);
}

template <typename T, bool I8, int L>
static void launch_quant_l(const ar_ptrs &a, int32_t algo, const T *in, T *out, int64_t n, int max_blocks, bool al,
                           cudaStream_t s) {
    const int wpb = AR_THREADS / 32;
    if (algo == SSMTP_AR_ONESHOT) {
        const int64_t tiles = (n + AR_TILE - 1) / AR_TILE;
        const int grid = (int)std::min<int64_t>(max_blocks, std::max<int64_t>(1, (tiles + wpb - 1) / wpb));
        ar_q1_kernel<T, I8, L><<<grid, AR_THREADS, 0, s>>>(a, in, out, n, al);
    } else {
        const int64_t seg = round_up((n + a.ws - 1) / a.ws, AR_TILE), tiles = seg / AR_TILE;
        const int grid = (int)std::min<int64_t>(max_blocks, std::max<int64_t>(1, (tiles + wpb - 1) / wpb));
        ar_q2_kernel<T, I8, L><<<grid, AR_THREADS, 0, s>>>(a, in, out, n, seg, al);
    }
}

template <typename T, bool I8>
static ssmtp_status_t launch_quant(const ar_ptrs &a, int32_t algo, int32_t block, const T *in, T *out, int64_t n,
                                   int max_blocks, bool al, cudaStream_t s) {
    switch (block) {
    case 32: launch_quant_l<T, I8, 2>(a, algo, in, out, n, max_blocks, al, s); break;
    case 64: launch_quant_l<T, I8, 4>(a, algo, in, out, n, max_blocks, al, s); break;
    case 128: launch_quant_l<T, I8, 8>(a, algo, in, out, n, max_blocks, al, s); break;
    case 256: launch_quant_l<T, I8, 16>(a, algo, in, out, n, max_blocks, al, s); break;
    default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "ar_quant_all_reduce: block=%d", (int)block);
    }
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_run(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out,
                                            int32_t qdtype, int32_t block, int32_t algo, void *stream) {
    const char *op = qdtype < 0 ? "ar_all_reduce" : "ar_quant_all_reduce";
    if (!ar->opened) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: peers are not open (call ar_open_peers)", op);
    const uint32_t herr = ar->err ? ar->err : *(volatile uint32_t *)ar->host_err;
    if (herr) return ar_error_status(ar, herr);
    int64_t n = 1;
    for (int d = 0; d < in->ndim; d++) n *= in->shape[d];
    if (n == 0) return SSMTP_OK;
    SSMTP_TRY(ssmtp_cuda_set_device(ar->device));
    const int64_t es = (int64_t)ssmtp_dtype_size(in->dtype);
    if (algo == SSMTP_AR_AUTO) algo = n * es <= ar->oneshot_max_bytes ? SSMTP_AR_ONESHOT : SSMTP_AR_TWOSHOT;
    const bool al = ((uintptr_t)in->data % 16 == 0) && ((uintptr_t)out->data % 16 == 0);
    const int64_t cap = chunk_cap(ar, in->dtype, qdtype, block, algo);
    cudaStream_t s = (cudaStream_t)stream;
    ar_ptrs a = ar->ptrs;
    nvtxRangePushA(op);
    ssmtp_status_t st = SSMTP_OK;
    for (int64_t c0 = 0; c0 < n && st == SSMTP_OK; c0 += cap) {
        const int64_t m = std::min(cap, n - c0);
        uint64_t h = mix64(0x55aa, (uint64_t)n);
        h = mix64(h, (uint64_t)m);
        h = mix64(h, (uint64_t)in->dtype);
        h = mix64(h, (uint64_t)algo);
        h = mix64(h, (uint64_t)(qdtype + 1) << 16 | (uint64_t)block);
        a.desc = h;
        const char *ib = (const char *)in->data + c0 * es;
        char *ob = (char *)out->data + c0 * es;
        if (qdtype < 0) {
            SSMTP_DISPATCH_FLOAT(in->dtype, T, op,
                                 st = launch_plain<T>(a, algo, (const T *)ib, (T *)ob, m, ar->max_blocks, al,
                                                      ar_pdl(ar->device), s));
        } else {
            const bool i8 = qdtype == SSMTP_DTYPE_I8;
            SSMTP_DISPATCH_FLOAT(in->dtype, T, op, {
                st = i8 ? launch_quant<T, true>(a, algo, block, (const T *)ib, (T *)ob, m, ar->max_blocks, al, s)
                        : launch_quant<T, false>(a, algo, block, (const T *)ib, (T *)ob, m, ar->max_blocks, al, s);
            });
        }
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = ssmtp_fail(SSMTP_ERR_CUDA, "%s: launch failed: %s", op, cudaGetErrorString(e));
    }
    nvtxRangePop();
    return st;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_check(ssmtp_ar_t *ar, int32_t sync) {
    uint32_t e = ar->err ? ar->err : *(volatile uint32_t *)ar->host_err;
    if (!e && sync) {
        SSMTP_TRY(ssmtp_cuda_set_device(ar->device));
        SSMTP_CUDA_TRY(cudaMemcpyAsync(&e, &((ar_signal *)ar->base)->error, sizeof e, cudaMemcpyDeviceToHost, ar->side));
        SSMTP_CUDA_TRY(cudaStreamSynchronize(ar->side));
    }
    if (e) return ar_error_status(ar, e);
    return SSMTP_OK;
}

// Bandwidth probe (ssmtp_ar_probe): SM stores of zeros (src == NULL) or an SM copy, 16 bytes per thread and access.
__global__ void __launch_bounds__(AR_THREADS) ar_probe_kernel(const uint4 *src, uint4 *dst, int64_t n16) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = src ? __ldcs(src + i + u * stride) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int u = 0; u < 4; u++) dst[i + u * stride] = v[u];
    }
    for (; i < n16; i += stride) dst[i] = src ? __ldcs(src + i) : make_uint4(0u, 0u, 0u, 0u);
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_probe(ssmtp_ar_t *ar, int32_t mode, int64_t bytes, void *stream) {
    if (!ar->opened) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_probe: peers are not open (call ar_open_peers)");
    const int64_t half = ar->slot_bytes * ar->ws; // the receive buffer is 2 * ws slots
    if (bytes > half)
        return ssmtp_fail(SSMTP_ERR_INVALID, "ar_probe: %lld bytes > half the buffer (%lld)", (long long)bytes,
                          (long long)half);
    SSMTP_TRY(ssmtp_cuda_set_device(ar->device));
    const int peer = (ar->rank + 1) % ar->ws;
    char *src = ar->ptrs.data[ar->rank], *dst = ar->ptrs.data[peer] + half;
    cudaStream_t s = (cudaStream_t)stream;
    if (mode == 0) {
        SSMTP_CUDA_TRY(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, s));
        return SSMTP_OK;
    }
    ar_probe_kernel<<<ar->max_blocks, AR_THREADS, 0, s>>>(mode == 2 ? (const uint4 *)src : NULL, (uint4 *)dst,
                                                          bytes / 16);
    SSMTP_CUDA_TRY(cudaGetLastError());
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_ar_free(ssmtp_ar_t *ar) {
    ssmtp_status_t st = SSMTP_OK;
    cudaError_t e = cudaSuccess, e2;
    if (ssmtp_cuda_set_device(ar->device) == SSMTP_OK) e = cudaDeviceSynchronize();
    for (int p = 0; p < ar->ws; p++)
        if (p != ar->rank && ar->peer_base[p]) {
            e2 = cudaIpcCloseMemHandle(ar->peer_base[p]);
            if (e == cudaSuccess) e = e2;
        }
    if (ar->side) cudaStreamDestroy(ar->side);
    if (ar->host_err) cudaFreeHost(ar->host_err);
    if (ar->base) {
        e2 = cudaFree(ar->base);
        if (e == cudaSuccess) e = e2;
    }
    if (e != cudaSuccess) st = ssmtp_fail(SSMTP_ERR_CUDA, "ar_free: %s", cudaGetErrorString(e));
    free(ar);
    return st;
}
