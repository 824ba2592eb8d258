// common.cuh - shared helpers for the CUDA sources: error checks, SM count, dtype load/store, kernel launches (with
// programmatic dependent launch), the prefill ops' save arguments.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include <stdlib.h>

#include <mutex>
#include <utility>

#include "internal.h"

// Return SSMTP_ERR_CUDA with the failing call named when a runtime call fails.
#define SSMTP_CUDA_TRY(call)                                                                                        \
    do {                                                                                                            \
        cudaError_t e_ = (call);                                                                                    \
        if (e_ != cudaSuccess)                                                                                      \
            return ssmtp_fail(SSMTP_ERR_CUDA, "%s:%d %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_));   \
    } while (0)

// After a launch: catches bad configurations immediately (asynchronous faults surface at the next sync).
#define SSMTP_CUDA_CHECK_LAUNCH(what) SSMTP_CUDA_TRY(cudaGetLastError())

// Make the tensors' device current for this thread (our static runtime shares the driver's primary context with
// torch's runtime, so this is cheap when it is already current).
static inline ssmtp_status_t ssmtp_cuda_set_device(int device) {
    int cur = -1;
    SSMTP_CUDA_TRY(cudaGetDevice(&cur));
    if (cur != device) SSMTP_CUDA_TRY(cudaSetDevice(device));
    return SSMTP_OK;
}

// SM count of a device, cached (host side; safe during graph capture).
static inline ssmtp_status_t ssm_sm_count(int device, int *sms) {
    static int cache[64];
    if (device >= 0 && device < 64 && cache[device] > 0) {
        *sms = cache[device];
        return SSMTP_OK;
    }
    SSMTP_CUDA_TRY(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device));
    if (device >= 0 && device < 64) cache[device] = *sms;
    return SSMTP_OK;
}

// Resident blocks per SM of `kernel` at `threads` threads and `smem` bytes of dynamic shared memory (occupancy
// calculator; at least 1), cached per (kernel, threads, smem): launchers that size a grid to one wave call it per
// launch (host side; safe during graph capture).
static inline int ssm_blocks_per_sm(const void *kernel, int threads, size_t smem) {
    struct Entry { const void *kernel; int threads; size_t smem; int blocks; };
    static Entry cache[128];
    static int n = 0;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < n; i++)
        if (cache[i].kernel == kernel && cache[i].threads == threads && cache[i].smem == smem) return cache[i].blocks;
    int b = 1;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, threads, smem) != cudaSuccess || b < 1) {
        (void)cudaGetLastError();
        b = 1;
    }
    if (n < 128) cache[n++] = Entry{kernel, threads, smem, b};
    return b;
}

// Let `kernel` take `smem` bytes of dynamic shared memory on `device` (needed above 48 KB; set once per kernel and
// device; call before ssm_blocks_per_sm with that size, which otherwise assumes the default cap).
static inline ssmtp_status_t ssm_allow_smem(const void *kernel, size_t smem, int device) {
    if (smem <= 48 * 1024) return SSMTP_OK;
    struct Entry { const void *kernel; int device; size_t smem; };
    static Entry done[64];
    static int n = 0;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < n; i++)
        if (done[i].kernel == kernel && done[i].device == device && done[i].smem >= smem) return SSMTP_OK;
    SSMTP_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (n < 64) done[n++] = Entry{kernel, device, smem};
    return SSMTP_OK;
}

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 16 bytes (one vector load) of T as floats.
template <typename T> struct Pack16;
template <> struct Pack16<float> {
    static constexpr int N = 4;
    static __device__ __forceinline__ void to_f32(const uint4 &u, float (&f)[4]) {
        f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
};
template <> struct Pack16<__nv_bfloat16> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void to_f32(const uint4 &u, float (&f)[8]) {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct Pack16<__half> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void to_f32(const uint4 &u, float (&f)[8]) {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 v = __half22float2(*reinterpret_cast<const __half2 *>(&w[i]));
            f[2 * i] = v.x, f[2 * i + 1] = v.y;
        }
    }
};

// A 16-byte load of read-once data (streamed weights): no L1 allocation.
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// cp.async (sm_80+): 16 bytes global -> shared without a register round trip, grouped by commit/wait. Below sm_80 a
// plain load and store (synchronous: correct, not overlapped). Both addresses 16-byte aligned.
__device__ __forceinline__ void ssm_cp16(void *smem, const void *gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(__cvta_generic_to_global(gmem))
                 : "memory");
#else
    *(uint4 *)smem = *(const uint4 *)gmem;
#endif
}
__device__ __forceinline__ void ssm_cp_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void ssm_cp_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Dispatch a float dtype code to a C++ type; every switch ends in an "unsupported" default.
#define SSMTP_DISPATCH_FLOAT(code, T, OPNAME, ...)                                                                  \
    switch (code) {                                                                                                 \
    case SSMTP_DTYPE_F32: { typedef float T; __VA_ARGS__; } break;                                                 \
    case SSMTP_DTYPE_F16: { typedef __half T; __VA_ARGS__; } break;                                                \
    case SSMTP_DTYPE_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;                                        \
    default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: dtype %s unsupported on CUDA", OPNAME,                    \
                               ssmtp_dtype_name(code));                                                             \
    }

// Programmatic dependent launch (sm_90+). A kernel launched with ssmtp_launch(..., pdl = true, ...) may start while
// the kernel before it on the stream is still running: it may read memory no earlier kernel of the stream writes
// (weights, parameters) before ssm_pdl_wait(), and must call ssm_pdl_wait() before it reads anything an earlier kernel
// wrote or writes anything at all (wait returns once every earlier kernel has completed and its writes are visible;
// without the launch attribute it returns at once). ssm_pdl_trigger() lets the next kernel's blocks be scheduled
// before this one's exit (the hardware launches them only once every block of this grid has started and triggered,
// so they never take the place of this grid's own unscheduled blocks). Under stream capture the launch attribute
// becomes a programmatic edge of the CUDA graph.
__device__ __forceinline__ void ssm_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void ssm_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches on this device use programmatic dependent launch: compute capability >= 9.0 and SSMTP_PDL unset
// or not "0" (read once per device; SSMTP_PDL=0 gives the plain stream order, for comparisons).
static inline bool ssmtp_pdl_enabled(int device) {
    static int cache[64]; // 0 unknown, 1 off, 2 on (a benign race: every writer stores the same)
    if (device >= 0 && device < 64 && cache[device]) return cache[device] == 2;
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
        (void)cudaGetLastError();
        major = 0;
    }
    const char *env = getenv("SSMTP_PDL");
    const bool on = major >= 9 && !(env && env[0] == '0' && env[1] == 0);
    if (device >= 0 && device < 64) cache[device] = on ? 2 : 1;
    return on;
}

// The launch configuration of grid x block with smem bytes of dynamic shared memory on stream s: the
// programmatic-stream-serialization attribute when pdl and, when cluster_z > 0, the blocks grouped in thread-block
// clusters of (1, 1, cluster_z); attr holds the attributes cfg points to (it must outlive cfg's use).
static inline cudaLaunchConfig_t ssmtp_launch_config(dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl,
                                                     unsigned cluster_z, cudaLaunchAttribute (&attr)[2]) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    unsigned n = 0;
    if (cluster_z > 0) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = 1;
        attr[n].val.clusterDim.y = 1;
        attr[n].val.clusterDim.z = cluster_z;
        n++;
    }
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cfg;
}

// kernel<<<grid, block, smem, stream>>>(args...) with ssmtp_launch_config's attributes; a failed launch is reported
// (and cleared) as SSMTP_ERR_CUDA naming op.
template <typename... KArgs, typename... Args>
static inline ssmtp_status_t ssmtp_launch_cluster(const char *op, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                                  size_t smem, cudaStream_t s, bool pdl, unsigned cluster_z,
                                                  Args &&...args) {
    cudaLaunchAttribute attr[2];
    const cudaLaunchConfig_t cfg = ssmtp_launch_config(grid, block, smem, s, pdl, cluster_z, attr);
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    (void)cudaGetLastError();
    if (e != cudaSuccess) return ssmtp_fail(SSMTP_ERR_CUDA, "%s: kernel launch: %s", op, cudaGetErrorString(e));
    return SSMTP_OK;
}

// The same without clusters.
template <typename... KArgs, typename... Args>
static inline ssmtp_status_t ssmtp_launch(const char *op, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                          cudaStream_t s, bool pdl, Args &&...args) {
    return ssmtp_launch_cluster(op, kernel, grid, block, smem, s, pdl, 0u, std::forward<Args>(args)...);
}

// The pointers every SSM op's kernel arguments carry (scan.cu, step.cu, ssd.cu: structs with these member names),
// from its params (ssmtp.h: tensors of these names).
template <class Args, class Params> static inline void ssm_fill_ptrs(Args &a, const Params *p) {
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
    a.out = p->out.data;
}

// The optional intermediate-state saves of the prefill ops (save_pos / save_idx, see ssmtp.h) as kernels read them.
struct SaveArgs {
    const int32_t *pos, *idx; // null: no saves
    int64_t n, sp0, sp1, si0, si1;
    __device__ __forceinline__ int64_t pos_at(int64_t b, int64_t j) const { return pos[b * sp0 + j * sp1]; }
    __device__ __forceinline__ int64_t slot_at(int64_t b, int64_t j) const { return idx[b * si0 + j * si1]; }
};
static inline SaveArgs ssm_save_args(const ssmtp_tensor_t &pos, const ssmtp_tensor_t &idx) {
    SaveArgs v = {};
    if (pos.data) {
        v.pos = (const int32_t *)pos.data;
        v.idx = (const int32_t *)idx.data;
        v.n = pos.shape[1];
        v.sp0 = pos.stride[0]; v.sp1 = pos.stride[1];
        v.si0 = idx.stride[0]; v.si1 = idx.stride[1];
    }
    return v;
}
