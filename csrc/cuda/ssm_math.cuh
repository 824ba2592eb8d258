// ssm_math.cuh - device math shared by the SSM kernels (conv1d.cu, scan.cu, step.cu): fast exp2, softplus and SiLU
// variants, and loads of the small per-channel parameters (D, dt_bias) that may be f32 or the dtype of x.
//
// Two accuracy tiers, chosen per kernel:
//   - "fast" (scan, conv1d, the decode step's state update): MUFU approximations (ex2.approx, lg2.approx,
//     rcp.approx), ~1e-6 relative error each. The prefill scan is limited by the multi-function unit (16
//     results/clk/SM on sm_90): one ex2 per state element per time step, so every MUFU op per (channel, step) outside
//     the state loop costs ~1/N of the kernel.
//   - "exact" (the decode step's per-row softplus and SiLU): expf/log1pf and IEEE division, the same formulas as the
//     CPU reference.
#pragma once

#include "common.cuh"

#define SSM_LOG2E 1.4426950408889634f

// 2^x with one MUFU op (max relative error ~2 ulp; flushes subnormal results to zero).
__device__ __forceinline__ float ssm_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float ssm_rcp(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float ssm_tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// softplus(v) = log1p(exp(v)) (torch passes v > 20 through; here that falls out: v + log1p(e^-20) rounds to v).
// Branch-free, one MUFU op: softplus(v) = max(v, 0) + u q(u), u = exp(-|v|) in (0, 1], q(u) ~ log1p(u)/u a degree-8
// polynomial (least squares on Chebyshev nodes; max relative error of u q(u) 1.9e-7 in f32 Horner, measured over
// 2e5 points of [0, 1]). Branch-free matters: the scan interleaves several time steps, and a branch per step would cut
// the instruction stream into blocks the scheduler cannot overlap.
__device__ __forceinline__ float ssm_softplus_fast(float v) {
    const float u = ssm_ex2(-fabsf(v) * SSM_LOG2E);
    float q = 0.005253457929939032f;
    q = fmaf(q, u, -0.02958850748836994f);
    q = fmaf(q, u, 0.07836166769266129f);
    q = fmaf(q, u, -0.13674770295619965f);
    q = fmaf(q, u, 0.19111430644989014f);
    q = fmaf(q, u, -0.24844369292259216f);
    q = fmaf(q, u, 0.33319270610809326f);
    q = fmaf(q, u, -0.49999502301216125f);
    q = fmaf(q, u, 1.0f);
    return fmaxf(v, 0.f) + u * q;
}

// silu(v) = v / (1 + exp(-v)). For 32-bit outputs: ex2 + rcp (~2 ulp). For 16-bit outputs the result is rounded to
// 8 (bf16) or 11 (f16) mantissa bits anyway: sigmoid(v) = 0.5 + 0.5 tanh(v/2) with one MUFU op (tanh.approx,
// ~2^-11 relative error) is below that rounding.
__device__ __forceinline__ float ssm_silu_fast(float v) { return v * ssm_rcp(1.f + ssm_ex2(-v * SSM_LOG2E)); }
__device__ __forceinline__ float ssm_silu_tanh(float v) { return v * fmaf(0.5f, ssm_tanh_approx(0.5f * v), 0.5f); }
template <typename T> __device__ __forceinline__ float ssm_silu_out(float v) { return ssm_silu_tanh(v); }
template <> __device__ __forceinline__ float ssm_silu_out<float>(float v) { return ssm_silu_fast(v); }

// Exact tier: the CPU reference's formulas (csrc/internal.h), with CUDA's expf/log1pf (<= 2 ulp).
__device__ __forceinline__ float ssm_softplus_exact(float v) { return v > 20.f ? v : log1pf(expf(v)); }
__device__ __forceinline__ float ssm_silu_exact(float v) { return __fdiv_rn(v, __fadd_rn(1.f, expf(-v))); }

// A 16-bit element given as its bits (from a packed vector load) to f32, without taking an address.
template <typename T> __device__ __forceinline__ float ssm_bits16_to_f32(uint32_t u);
template <> __device__ __forceinline__ float ssm_bits16_to_f32<__half>(uint32_t u) {
    return __half2float(__ushort_as_half((unsigned short)u));
}
template <> __device__ __forceinline__ float ssm_bits16_to_f32<__nv_bfloat16>(uint32_t u) {
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)u));
}

// A per-channel parameter (D, dt_bias): f32 or the dtype of x (validated by the C entry point).
__device__ __forceinline__ float ssm_load_param(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: return ((const float *)p)[i];
    case SSMTP_DTYPE_F16: return __half2float(((const __half *)p)[i]);
    case SSMTP_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default: return __int_as_float(0x7fc00000);
    }
}

// One conv1d decode step of one channel (conv1d.cu's decode kernel, decode.cu's fused block input): the window is the
// last W-1 of the S history columns `old` and x; acc = bias + sum_k w[k] * window[k] in that order (fmaf), returned
// as is (SiLU applied by the caller); `nw` gets the history shifted left by one with x entering last.
template <typename T, int W, int S>
__device__ __forceinline__ float ssm_conv_step(const float (&w)[W], float bias, const T (&old)[S], T xraw,
                                               T (&nw)[S]) {
    static_assert(S >= W - 1, "the history holds at least width - 1 columns");
    float acc = bias;
#pragma unroll
    for (int k = 0; k < W - 1; k++) acc = fmaf(w[k], to_f32<T>(old[S - (W - 1) + k]), acc);
    acc = fmaf(w[W - 1], to_f32<T>(xraw), acc);
#pragma unroll
    for (int j = 0; j < S; j++) nw[j] = j == S - 1 ? xraw : old[j + 1 < S ? j + 1 : j];
    return acc;
}
