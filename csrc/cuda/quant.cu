// quant.cu - block-scaled int8 / fp8-e4m3 quantize and dequantize on the GPU (the quantized all-reduce's wire
// format). One warp per block of `block` elements; semantics identical to the CPU reference in csrc/quant.c.
#include "common.cuh"

#include <math.h>

template <typename T, bool INT8>
__global__ void quantize_kernel(const T *__restrict__ x, void *__restrict__ q, float *__restrict__ scales, int64_t n,
                                int block) {
    const int64_t warp = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int64_t b0 = warp * block;
    if (b0 >= n) return;
    const int64_t e = min(b0 + block, n);
    float amax = 0.f;
    int finite = 1;
    for (int64_t i = b0 + lane; i < e; i += 32) {
        float v = to_f32<T>(x[i]);
        if (!isfinite(v)) finite = 0;
        else amax = fmaxf(amax, fabsf(v));
    }
    for (int o = 16; o > 0; o >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        finite &= __shfl_xor_sync(0xffffffffu, finite, o);
    }
    const float qmax = INT8 ? 127.f : 448.f;
    if (lane == 0) scales[warp] = finite ? amax / qmax : __int_as_float(0x7fc00000);
    const float inv = (finite && amax > 0.f) ? qmax / amax : 0.f;
    for (int64_t i = b0 + lane; i < e; i += 32) {
        float v = finite ? to_f32<T>(x[i]) * inv : 0.f;
        if (INT8) {
            ((int8_t *)q)[i] = (int8_t)fminf(fmaxf(rintf(v), -127.f), 127.f);
        } else {
            ((__nv_fp8_e4m3 *)q)[i] = __nv_fp8_e4m3(fminf(fmaxf(v, -448.f), 448.f));
        }
    }
}

template <typename T, bool INT8>
__global__ void dequantize_kernel(T *__restrict__ x, const void *__restrict__ q, const float *__restrict__ scales,
                                  int64_t n, int block) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = INT8 ? (float)((const int8_t *)q)[i] : float(((const __nv_fp8_e4m3 *)q)[i]);
        x[i] = from_f32<T>(v * scales[i / block]);
    }
}

extern "C" ssmtp_status_t ssmtp_cuda_quantize(const ssmtp_quant_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    const int64_t n = p->x.shape[0];
    if (n == 0) return SSMTP_OK;
    const int64_t nb = (n + p->block - 1) / p->block;
    const int warps = 8;
    const unsigned grid = (unsigned)((nb + warps - 1) / warps);
    cudaStream_t s = (cudaStream_t)stream;
    const bool i8 = p->q.dtype == SSMTP_DTYPE_I8;
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, "quantize", {
        if (i8)
            quantize_kernel<T, true><<<grid, warps * 32, 0, s>>>((const T *)p->x.data, p->q.data,
                                                                 (float *)p->scales.data, n, p->block);
        else
            quantize_kernel<T, false><<<grid, warps * 32, 0, s>>>((const T *)p->x.data, p->q.data,
                                                                  (float *)p->scales.data, n, p->block);
    });
    SSMTP_CUDA_CHECK_LAUNCH("quantize");
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_dequantize(const ssmtp_quant_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    const int64_t n = p->x.shape[0];
    if (n == 0) return SSMTP_OK;
    const int64_t nblk = (n + 255) / 256;
    const unsigned grid = (unsigned)(nblk < 65535 ? nblk : 65535);
    cudaStream_t s = (cudaStream_t)stream;
    const bool i8 = p->q.dtype == SSMTP_DTYPE_I8;
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, "dequantize", {
        if (i8)
            dequantize_kernel<T, true><<<grid, 256, 0, s>>>((T *)p->x.data, p->q.data, (const float *)p->scales.data,
                                                            n, p->block);
        else
            dequantize_kernel<T, false><<<grid, 256, 0, s>>>((T *)p->x.data, p->q.data,
                                                             (const float *)p->scales.data, n, p->block);
    });
    SSMTP_CUDA_CHECK_LAUNCH("dequantize");
    return SSMTP_OK;
}
