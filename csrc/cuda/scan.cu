// scan.cu - selective scan (prefill) on the GPU: fp32 state in registers, fp32 accumulation, d_state up to 256,
// ngroups, D, z gating, dt_bias + softplus, initial/final state in slot-indexed rows, right-padded seq_lens.
// Semantics: ssmtp_scan_fwd in csrc/ssmtp.h; CPU reference: csrc/scan.c.
//
// Work mapping. A thread owns one channel and NS <= 16 of its states (TPC = ceil(N/16) threads per channel when
// d_state > 16, adjacent lanes, y summed with xor shuffles) and walks time. Consecutive threads are consecutive
// channels, so with the model's layout (x, dt, z, out channel-contiguous: stride[1] == 1) each per-step load and
// store of a warp is one contiguous run; other strides are correct, uncoalesced. B and C (shared by the channels
// of a group) are staged per tile of TT steps in shared memory as fp32; a block never straddles two groups.
//
// Time parallelism (few sequences x channels, e.g. B=1): the sequence is cut into K chunks, in three launches:
//   1. local:   per chunk k < K-1, from h = 0: h_loc_k (N floats) and sum_k = sum of delta over the chunk;
//   2. combine: per (seq, channel, state), sequential over chunks: H_0 = initial state,
//               H_{k+1} = exp(A * sum_k) * H_k + h_loc_k   (A is constant per channel, so the decay over a chunk is
//               exp(A * sum(delta)));
//   3. final:   per chunk, the scan again from H_k, writing y and (chunk holding position n-1) the final state.
// This costs ~2x the arithmetic of one pass, so it is used only when one pass would fill less than a third of the
// GPU. The chunk states need N+1 floats per (seq, channel, chunk) of scratch and the op has no workspace argument
// (the caller owns memory; no allocation on this path): they live in the first N+1 floats' worth of each chunk's
// own out row (bit-split into two 16-bit elements for f16/bf16 outputs), which pass 3 reads back into registers
// before it overwrites them with y. Chunks are >= that long. All three launches are stream-ordered and
// graph-capturable.
//
// Cost model (N = 16, bf16, z given): 8 bytes of HBM traffic per (channel, step) against 16 ex2 on the MUFU
// (16/clk/SM on sm_90) plus ~6 issue slots per state element: the MUFU ceiling is ~1 (channel, step) per clk per
// SM = ~2.1 TB/s (49% of the 4.26 TB/s copy rate), so for 16-bit inputs this kernel is bound by arithmetic and,
// in practice, by latency; f32 inputs (16 B per step) are near the memory floor. The work per step outside the
// state loop is two MUFU ops (softplus as one ex2 + a polynomial, branch-free; SiLU as one tanh for 16-bit out).
//
// Measured on one H200 (bf16, mamba-2.8b shapes, benchmarks/bench_ops.py; see benchmarks/results/):
//   - this loop, branchy softplus: B=8 L=2048 1040 us = 31% of the MUFU bound; B=1 L=32768 (17 chunks) 2935 us.
//   - a rewrite that grouped 4 steps branch-free, loaded x/dt/z one group ahead and double-buffered B/C in registers
//     needed 168 registers (3 blocks/SM instead of 5) and ran 1.4-2x SLOWER (B=8 L=2048 1463 us): a thread is
//     latency-bound at ~1200 cycles per step on its own (one warp per SM sub-partition: B=1, one pass), so the
//     kernel lives on warps per SM, not on instruction-level parallelism. Reverted; kept: the branch-free softplus
//     and two partial sums for y.
//   - threads per channel 2 or 4 (SSMTP_SCAN_TPC) were slower than 1 at every shape swept (B=1..8, L=512..8192),
//     and chunking pays below ~1/3 occupancy (B=1 L=2048: 888 us one pass, 177 us at 16 chunks).
//   - this loop again (commit 9332f75, benchmarks/results/ops-h200.json): B=8 L=2048 1065 us (30% of the MUFU bound),
//     B=1 L=32768 2889 us. Its sweep then set two defaults: 8 steps per load group (B=8 L=512 275 -> 254 us, B=1
//     L=8192 755 -> 708 us) and the chunk count rounded down to one wave (B=1 L=2048 218 -> 174 us with both).
//   The remaining gap to the MUFU bound is latency per warp (a load group costs ~a memory round trip, and 1-5 warps
//   share an SM sub-partition); staging x/dt/z through shared memory with cp.async, tiles ahead, is the next step.
#include "common.cuh"
#include "ssm_math.cuh"

#include <stdlib.h>

#define OP "scan_fwd"

namespace {

struct ScanArgs {
    const void *x, *dt, *B, *C, *z, *D, *dt_bias;
    const float *A;
    float *state;
    const int32_t *state_idx, *seq_lens;
    void *out;
    int64_t batch, dim, len, N, per_group, nslots;
    int64_t sx0, sx1, sx2, sdt0, sdt1, sdt2, sz0, sz1, sz2, so0, so1, so2;
    int64_t sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3;
    int64_t sA0, sA1, sD, sbias, ss0, ss1, ss2, sidx, slens;
    int64_t chunk; // Tc: steps per chunk; the last chunk also takes the remainder (length in [Tc, 2Tc))
    int nchunks;   // K
    int cb_per_group;
    int D_dtype, bias_dtype, softplus, load_state;
};

constexpr int THREADS = 128;

// Per-chunk scratch floats in out elements of type T: a float is 1 f32 element or 2 16-bit elements.
template <typename T> __device__ __forceinline__ void scr_put(T *row, int64_t st, int64_t j, float v) {
    if (sizeof(T) == 4) {
        ((float *)row)[j * st] = v;
    } else {
        const uint32_t u = __float_as_uint(v);
        ((uint16_t *)row)[(2 * j) * st] = (uint16_t)(u & 0xffffu);
        ((uint16_t *)row)[(2 * j + 1) * st] = (uint16_t)(u >> 16);
    }
}
template <typename T> __device__ __forceinline__ float scr_get(const T *row, int64_t st, int64_t j) {
    if (sizeof(T) == 4) return ((const float *)row)[j * st];
    const uint32_t lo = ((const uint16_t *)row)[(2 * j) * st], hi = ((const uint16_t *)row)[(2 * j + 1) * st];
    return __uint_as_float(lo | (hi << 16));
}

__device__ __forceinline__ void seq_info(const ScanArgs &a, int64_t b, int64_t *slot, int64_t *n) {
    *slot = a.state_idx ? (int64_t)a.state_idx[b * a.sidx] : b;
    int64_t len = a.len;
    if (a.seq_lens) {
        len = a.seq_lens[b * a.slens];
        len = len < 0 ? 0 : (len > a.len ? a.len : len); // clamped: no host-side check on the GPU path
    }
    *n = len;
}

// Shared-memory tile geometry for B/C (fp32): row of one time step. TPC == 1: NS floats (all lanes of a warp read
// the same address: broadcast). TPC > 1: part p's NS states at p * PART (NS = 16: 4 floats of padding, so the 8 lanes
// of a 16-byte access phase hit 8 distinct 4-bank groups; NS < 16: packed, the parts of one channel read adjacent
// 16-byte words).
template <int NS, int TPC> struct Tile {
    static constexpr int NSP = NS * TPC;                             // padded states per channel
    static constexpr int PART = TPC == 1 ? 0 : (NS == 16 ? 20 : NS); // offset of part p: p * PART
    static constexpr int RS = TPC == 1 ? NS : TPC * PART;            // floats per time step
    static constexpr int TT = NSP >= 128 ? 16 : 64;                  // steps per tile (smem <= 40 KB per block)
    static __device__ __forceinline__ int at(int t, int s) {
        return t * RS + (TPC == 1 ? s : (s / NS) * PART + s % NS);
    }
};

// Passes 1 (FINAL = false: local chunk states) and 3 (FINAL = true: outputs, final state).
// grid: (ngroups * cb_per_group, chunks, batch); block: THREADS = (THREADS/TPC channels) x TPC parts.
// U: steps whose x/dt/z loads are issued together (8 for d_state 9..16, the models'; 4 otherwise).
template <typename T, int NS, int TPC, bool FINAL, int U = 4>
__global__ void __launch_bounds__(THREADS, TPC == 1 ? 5 : 4) scan_kernel(const ScanArgs a) {
    using G = Tile<NS, TPC>;
    constexpr int CPB = THREADS / TPC;
    __shared__ __align__(16) float smB[G::TT * G::RS];
    __shared__ __align__(16) float smC[FINAL ? G::TT * G::RS : 4];

    const int tid = threadIdx.x, part = tid % TPC;
    const int64_t grp = blockIdx.x / a.cb_per_group, cb = blockIdx.x % a.cb_per_group;
    const int64_t cig = cb * CPB + tid / TPC;
    const bool active = cig < a.per_group;
    const int64_t c = grp * a.per_group + (active ? cig : a.per_group - 1);
    const int k = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t t_beg = (int64_t)k * a.chunk;
    const int64_t t_end = (k == a.nchunks - 1) ? a.len : t_beg + a.chunk;

    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    T *outp = (T *)a.out + b * a.so0 + c * a.so1;
    const bool has_state = a.state != nullptr;
    if (has_state && (slot < 0 || slot >= a.nslots)) { // padding row: zeros; bad slot: NaN; state untouched
        if (FINAL && active && part == 0) {
            const T fill = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
            for (int64_t t = t_beg; t < t_end; t++) outp[t * a.so2] = fill;
        }
        return;
    }
    const int64_t t_val = max(t_beg, min(t_end, n)); // steps [t_beg, t_val) are computed, [t_val, t_end) zero
    if (!FINAL && t_val == t_beg) return;            // nothing to carry (the combine stops before this chunk)

    float A2[NS], h[NS];
#pragma unroll
    for (int j = 0; j < NS; j++) {
        const int64_t s = (int64_t)part * NS + j;
        A2[j] = s < a.N ? a.A[c * a.sA0 + s * a.sA1] * SSM_LOG2E : 0.f;
        h[j] = 0.f;
    }
    if (FINAL) {
        if (a.nchunks == 1) {
            if (has_state && a.load_state) {
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    const int64_t s = (int64_t)part * NS + j;
                    if (s < a.N) h[j] = a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2];
                }
            }
        } else {
            if (t_val > t_beg) { // H_k, left by the combine in this chunk's own out row
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    const int64_t s = (int64_t)part * NS + j;
                    if (s < a.N) h[j] = scr_get<T>(outp + t_beg * a.so2, a.so2, s);
                }
            }
            __syncthreads(); // every part has read its scratch before any thread writes this row
        }
    }

    const float bias = a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias) : 0.f;
    const float Dv = (FINAL && a.D) ? ssm_load_param(a.D, a.D_dtype, c * a.sD) : 0.f;
    const T *__restrict__ xp = (const T *)a.x + b * a.sx0 + c * a.sx1;
    const T *__restrict__ dtp = (const T *)a.dt + b * a.sdt0 + c * a.sdt1;
    const T *__restrict__ zp = (FINAL && a.z) ? (const T *)a.z + b * a.sz0 + c * a.sz1 : nullptr;
    const T *__restrict__ Bp = (const T *)a.B + b * a.sB0 + grp * a.sB1;
    const T *__restrict__ Cp = (const T *)a.C + b * a.sC0 + grp * a.sC1;
    const bool softplus = a.softplus != 0;
    const bool store = active && part == 0;
    float sum_delta = 0.f;

    // One time step at tile row tt (absolute step t).
    auto step = [&](float xv, float dtv, float zv, int tt, int64_t t) {
        float delta = dtv + bias;
        if (softplus) delta = ssm_softplus_fast(delta);
        const float dx = delta * xv;
        const float *Bt = smB + tt * G::RS + part * G::PART;
        const float *Ct = smC + (FINAL ? tt * G::RS + part * G::PART : 0);
        float y = 0.f, y1 = 0.f; // two partial sums: half the serial FMA chain
        if (NS >= 4) {
#pragma unroll
            for (int j = 0; j < NS; j += 4) {
                const float4 b4 = *(const float4 *)(Bt + j);
                const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
                float cc[4] = {0.f, 0.f, 0.f, 0.f};
                if (FINAL) {
                    const float4 c4 = *(const float4 *)(Ct + j);
                    cc[0] = c4.x; cc[1] = c4.y; cc[2] = c4.z; cc[3] = c4.w;
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float dA = ssm_ex2(delta * A2[j + e]);
                    h[j + e] = fmaf(dA, h[j + e], dx * bb[e]);
                    if (FINAL) {
                        if (e & 1) y1 = fmaf(h[j + e], cc[e], y1);
                        else y = fmaf(h[j + e], cc[e], y);
                    }
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const float dA = ssm_ex2(delta * A2[j]);
                h[j] = fmaf(dA, h[j], dx * Bt[j]);
                if (FINAL) y = fmaf(h[j], Ct[j], y);
            }
        }
        y += y1;
        if constexpr (!FINAL) {
            sum_delta += delta;
        } else {
#pragma unroll
            for (int o = TPC / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
            if (store) {
                y = fmaf(Dv, xv, y);
                if (zp) y *= ssm_silu_out<T>(zv);
                outp[t * a.so2] = from_f32<T>(y);
            }
        }
    };

    for (int64_t t0 = t_beg; t0 < t_val; t0 += G::TT) {
        const int nt = (int)min((int64_t)G::TT, t_val - t0);
        __syncthreads(); // the previous tile's readers are done
        for (int i = tid; i < nt * G::NSP; i += THREADS) {
            const int tt = i / G::NSP, s = i % G::NSP;
            float bv = 0.f, cv = 0.f;
            if (s < a.N) {
                bv = to_f32<T>(Bp[s * a.sB2 + (t0 + tt) * a.sB3]);
                if (FINAL) cv = to_f32<T>(Cp[s * a.sC2 + (t0 + tt) * a.sC3]);
            }
            smB[G::at(tt, s)] = bv;
            if (FINAL) smC[G::at(tt, s)] = cv;
        }
        __syncthreads();
        int tt = 0;
        for (; tt + U <= nt; tt += U) {
            float xv[U], dv[U], zv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t t = t0 + tt + u;
                xv[u] = to_f32<T>(xp[t * a.sx2]);
                dv[u] = to_f32<T>(dtp[t * a.sdt2]);
                zv[u] = (zp && store) ? to_f32<T>(zp[t * a.sz2]) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < U; u++) step(xv[u], dv[u], zv[u], tt + u, t0 + tt + u);
        }
        for (; tt < nt; tt++) {
            const int64_t t = t0 + tt;
            step(to_f32<T>(xp[t * a.sx2]), to_f32<T>(dtp[t * a.sdt2]),
                 (zp && store) ? to_f32<T>(zp[t * a.sz2]) : 0.f, tt, t);
        }
    }

    if (!FINAL) { // local chunk state and sum of delta into this chunk's out row (read by the combine)
        if (active) {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const int64_t s = (int64_t)part * NS + j;
                if (s < a.N) scr_put<T>(outp + t_beg * a.so2, a.so2, s, h[j]);
            }
            if (part == 0) scr_put<T>(outp + t_beg * a.so2, a.so2, a.N, sum_delta);
        }
        return;
    }
    if (store)
        for (int64_t t = t_val; t < t_end; t++) outp[t * a.so2] = from_f32<T>(0.f);
    if (has_state && active) {
        const bool last = n > 0 ? (t_beg <= n - 1 && n - 1 < t_end) : (k == 0 && !a.load_state);
        if (last) {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const int64_t s = (int64_t)part * NS + j;
                if (s < a.N) a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] = n > 0 ? h[j] : 0.f;
            }
        }
    }
}

// Pass 2: one thread per (seq, channel, state), channel fastest; sequential over the chunks holding valid steps.
// Loads of up to 8 chunks are issued before their (dependent) updates.
template <typename T>
__global__ void __launch_bounds__(256) scan_combine_kernel(const ScanArgs a) {
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= a.batch * a.dim * a.N) return;
    const int64_t c = i % a.dim, s = (i / a.dim) % a.N, b = i / (a.dim * a.N);
    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    const bool has_state = a.state != nullptr;
    if (has_state && (slot < 0 || slot >= a.nslots)) return;
    if (n == 0) return;
    const int64_t kv = min((n - 1) / a.chunk, (int64_t)a.nchunks - 1) + 1; // chunks holding valid steps
    float H = (has_state && a.load_state) ? a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] : 0.f;
    const float As = a.A[c * a.sA0 + s * a.sA1];
    T *row = (T *)a.out + b * a.so0 + c * a.so1;
    for (int64_t k0 = 0; k0 < kv; k0 += 8) {
        float hl[8], sd[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int64_t k = k0 + u;
            hl[u] = 0.f;
            sd[u] = 0.f;
            if (k < kv - 1) {
                const T *r = row + k * a.chunk * a.so2;
                hl[u] = scr_get<T>(r, a.so2, s);
                sd[u] = scr_get<T>(r, a.so2, a.N);
            }
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int64_t k = k0 + u;
            if (k < kv) {
                scr_put<T>(row + k * a.chunk * a.so2, a.so2, s, H);
                H = fmaf(expf(As * sd[u]), H, hl[u]);
            }
        }
    }
}

template <typename T, int NS, int TPC, int U = 4> struct Launch {
    static ssmtp_status_t run(ScanArgs &a, int device, cudaStream_t st) {
        constexpr int CPB = THREADS / TPC;
        using G = Tile<NS, TPC>;
        a.cb_per_group = (int)((a.per_group + CPB - 1) / CPB);
        const int64_t ngroups = a.dim / a.per_group;
        const int64_t nblk = ngroups * a.cb_per_group; // blocks per (sequence, chunk)
        if (nblk > 0x7fffffff || a.batch > 65535)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": grid too large (batch=%lld dim=%lld)", (long long)a.batch,
                              (long long)a.dim);

        // Chunk count. target = blocks resident on the whole GPU at full occupancy.
        static int occ = 0; // per instantiation; the same on every device of one model
        if (occ == 0) {
            int o = 0;
            SSMTP_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, scan_kernel<T, NS, TPC, true, U>, THREADS, 0));
            occ = o > 0 ? o : 1;
        }
        int sms = 132;
        SSMTP_TRY(ssm_sm_count(device, &sms));
        const int64_t target = (int64_t)sms * occ;
        const int64_t per_chunk = a.batch * nblk;
        int64_t K = 1;
        // floor, not ceil: K * per_chunk must fit in one wave (measured, B=1 d_inner 5120 L=2048: 16 chunks = 640
        // blocks in 660 slots 177 us; 17 chunks = 680 blocks, a second wave, 218 us).
        if (per_chunk * 3 < target) K = target / per_chunk;
        const char *env = getenv("SSMTP_SCAN_CHUNKS"); // tuning override (benchmarks): exact chunk count
        if (env && *env) K = atoll(env);
        // Chunks hold their scratch (N+1 floats in out elements) and amortise the second pass: >= 64 steps.
        const int64_t scratch = (a.N + 1) * (int64_t)(4 / sizeof(T));
        int64_t min_len = scratch > 64 ? scratch : 64;
        if (K > a.len / min_len) K = a.len / min_len;
        if (K < 1) K = 1;
        if (K > 65535) K = 65535;
        a.nchunks = (int)K;
        a.chunk = K == 1 ? a.len : a.len / K; // the last chunk takes the remainder
        (void)G::TT;

        const dim3 block(THREADS);
        if (K > 1) {
            scan_kernel<T, NS, TPC, false, U><<<dim3((unsigned)nblk, (unsigned)(K - 1), (unsigned)a.batch), block, 0, st>>>(a);
            SSMTP_CUDA_CHECK_LAUNCH(OP);
            const int64_t nc = a.batch * a.dim * a.N;
            scan_combine_kernel<T><<<(unsigned)((nc + 255) / 256), 256, 0, st>>>(a);
            SSMTP_CUDA_CHECK_LAUNCH(OP);
        }
        scan_kernel<T, NS, TPC, true, U><<<dim3((unsigned)nblk, (unsigned)K, (unsigned)a.batch), block, 0, st>>>(a);
        SSMTP_CUDA_CHECK_LAUNCH(OP);
        return SSMTP_OK;
    }
};

template <typename T> ssmtp_status_t dispatch_n(ScanArgs &a, int device, cudaStream_t st) {
    const int64_t N = a.N;
    if (N <= 1) return Launch<T, 1, 1>::run(a, device, st);
    if (N <= 2) return Launch<T, 2, 1>::run(a, device, st);
    if (N <= 4) return Launch<T, 4, 1>::run(a, device, st);
    if (N <= 8) return Launch<T, 8, 1>::run(a, device, st);
    if (N <= 16) {
        // d_state 9..16 (the models'): one thread per channel by default; 2 or 4 threads per channel (8 or 4 states
        // each) quadruple the threads when there are few sequences x channels, at the cost of repeating the
        // per-step softplus/SiLU work per thread. SSMTP_SCAN_TPC overrides (benchmarks).
        int tpc = 1;
        const char *env = getenv("SSMTP_SCAN_TPC");
        if (env && *env) tpc = atoi(env);
        if (tpc == 2) return Launch<T, 8, 2>::run(a, device, st);
        if (tpc == 4) return Launch<T, 4, 4>::run(a, device, st);
        // x/dt/z loads 8 steps at a time by default (measured 5-13% faster than 4 on every swept shape, same
        // occupancy); SSMTP_SCAN_U=4 selects 4 (benchmarks, tests).
        const char *envu = getenv("SSMTP_SCAN_U");
        if (envu && atoi(envu) == 4) return Launch<T, 16, 1, 4>::run(a, device, st);
        return Launch<T, 16, 1, 8>::run(a, device, st);
    }
    if (N <= 32) return Launch<T, 16, 2>::run(a, device, st);
    if (N <= 64) return Launch<T, 16, 4>::run(a, device, st);
    if (N <= 128) return Launch<T, 16, 8>::run(a, device, st);
    if (N <= 256) return Launch<T, 16, 16>::run(a, device, st);
    return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": d_state=%lld > 256", (long long)N);
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_scan_fwd(const ssmtp_scan_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    ScanArgs a;
    memset(&a, 0, sizeof a);
    a.x = p->x.data;
    a.dt = p->dt.data;
    a.B = p->B.data;
    a.C = p->C.data;
    a.z = p->z.data;
    a.D = p->D.data;
    a.dt_bias = p->dt_bias.data;
    a.A = (const float *)p->A.data;
    a.state = (float *)p->state.data;
    a.state_idx = (const int32_t *)p->state_idx.data;
    a.seq_lens = (const int32_t *)p->seq_lens.data;
    a.out = p->out.data;
    a.batch = p->x.shape[0];
    a.dim = p->x.shape[1];
    a.len = p->x.shape[2];
    a.N = p->A.shape[1];
    a.per_group = a.dim / p->B.shape[1];
    a.sx0 = p->x.stride[0]; a.sx1 = p->x.stride[1]; a.sx2 = p->x.stride[2];
    a.sdt0 = p->dt.stride[0]; a.sdt1 = p->dt.stride[1]; a.sdt2 = p->dt.stride[2];
    if (a.z) { a.sz0 = p->z.stride[0]; a.sz1 = p->z.stride[1]; a.sz2 = p->z.stride[2]; }
    a.so0 = p->out.stride[0]; a.so1 = p->out.stride[1]; a.so2 = p->out.stride[2];
    a.sB0 = p->B.stride[0]; a.sB1 = p->B.stride[1]; a.sB2 = p->B.stride[2]; a.sB3 = p->B.stride[3];
    a.sC0 = p->C.stride[0]; a.sC1 = p->C.stride[1]; a.sC2 = p->C.stride[2]; a.sC3 = p->C.stride[3];
    a.sA0 = p->A.stride[0]; a.sA1 = p->A.stride[1];
    if (a.D) { a.sD = p->D.stride[0]; a.D_dtype = p->D.dtype; }
    if (a.dt_bias) { a.sbias = p->dt_bias.stride[0]; a.bias_dtype = p->dt_bias.dtype; }
    if (a.state) {
        a.nslots = p->state.shape[0];
        a.ss0 = p->state.stride[0]; a.ss1 = p->state.stride[1]; a.ss2 = p->state.stride[2];
    }
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    if (a.seq_lens) a.slens = p->seq_lens.stride[0];
    a.softplus = p->dt_softplus;
    a.load_state = p->load_state;
    if (a.batch == 0 || a.dim == 0) return SSMTP_OK;
    // seqlen == 0 still launches: the final state is then the initial one (zeros when !load_state).
    cudaStream_t st = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, OP, { return dispatch_n<T>(a, p->x.device, st); });
    return SSMTP_OK;
}
