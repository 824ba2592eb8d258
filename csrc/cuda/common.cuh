// common.cuh - shared device helpers for the CUDA sources: error checks, dtype load/store, NVTX ranges.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

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

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Dispatch a float dtype code to a C++ type; every switch ends in an "unsupported" default.
#define SSMTP_DISPATCH_FLOAT(code, T, OPNAME, ...)                                                                  \
    switch (code) {                                                                                                 \
    case SSMTP_DTYPE_F32: { typedef float T; __VA_ARGS__; } break;                                                 \
    case SSMTP_DTYPE_F16: { typedef __half T; __VA_ARGS__; } break;                                                \
    case SSMTP_DTYPE_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;                                        \
    default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: dtype %s unsupported on CUDA", OPNAME,                    \
                               ssmtp_dtype_name(code));                                                             \
    }
