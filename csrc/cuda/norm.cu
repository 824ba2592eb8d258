// norm.cu - the gated RMSNorm over groups of channels on the GPU. Semantics: ssmtp_gated_norm in csrc/ssmtp.h; CPU
// reference: csrc/norm.c.
//
// Why a kernel of its own: in Zamba2's decode step the norm sits between the state update and out_proj's GEMV, both
// launched with programmatic dependent launch (PDL). torch.compile's two kernels there (a reduction and a pointwise
// pass) take no part in PDL, so out_proj could not start streaming its weights before they were done. This kernel is
// one launch with PDL.
//
// Work layout: one block per (row, group); each thread walks the group's channels with a block stride, sums v^2 of
// its own (v = y * silu(gate), fp32), the block sums those (warp shuffles, then shared memory), and a second walk
// recomputes v (its y / gate elements are still in L1) and writes round(weight * round(v * r)). The reduction order
// differs from the CPU reference's sequential sum, so results may differ by a rounding.
#include "common.cuh"
#include "ssm_math.cuh"

#define OP "gated_norm"

namespace {

constexpr int NORM_THREADS = 256;

template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
    gated_norm_kernel(const T *y, int64_t sy, const T *gate, int64_t sg, // out may alias y or gate
                      const T *__restrict__ w, T *out, int64_t so, int64_t ngroups, int64_t G, float eps) {
    ssm_pdl_trigger();
    const int64_t m = blockIdx.x / ngroups, c0 = (blockIdx.x % ngroups) * G;
    const T *yr = y + m * sy + c0, *gr = gate + m * sg + c0;
    ssm_pdl_wait(); // y (and gate) come from the kernels before
    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < G; c += NORM_THREADS) {
        const float v = to_f32<T>(yr[c]) * ssm_silu_exact(to_f32<T>(gr[c]));
        ss = fmaf(v, v, ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __shared__ float part[NORM_THREADS / 32];
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) tot += part[i];
    const float r = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(tot, (float)G), eps)));
    T *orow = out + m * so + c0;
    for (int64_t c = threadIdx.x; c < G; c += NORM_THREADS) {
        const float v = to_f32<T>(yr[c]) * ssm_silu_exact(to_f32<T>(gr[c]));
        const float n = to_f32<T>(from_f32<T>(v * r));
        orow[c] = from_f32<T>(to_f32<T>(w[c0 + c]) * n);
    }
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_gated_norm(const ssmtp_gated_norm_params_t *p, void *stream) {
    const int64_t M = p->y.shape[0], D = p->y.shape[1], G = p->group;
    if (M == 0 || D == 0) return SSMTP_OK;
    const int64_t blocks = M * (D / G);
    if (blocks > 0x7fffffffLL)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M x groups = %lld blocks too many", (long long)blocks);
    SSMTP_TRY(ssmtp_cuda_set_device(p->y.device));
    const bool pdl = ssmtp_pdl_enabled(p->y.device);
    cudaStream_t s = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->y.dtype, T, OP, {
        return ssmtp_launch(OP, gated_norm_kernel<T>, (unsigned)blocks, NORM_THREADS, 0, s, pdl, (const T *)p->y.data,
                            (int64_t)p->y.stride[0], (const T *)p->gate.data, (int64_t)p->gate.stride[0],
                            (const T *)p->weight.data, (T *)p->out.data, (int64_t)p->out.stride[0], D / G, G,
                            p->eps);
    });
    return SSMTP_OK;
}
