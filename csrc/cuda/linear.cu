// linear.cu - the small-batch linear layer on the GPU (decode GEMV): out (M, N) = x (M, K) W (N, K)^T (+ bias),
// M <= 8, fp32 accumulation. Semantics identical to the CPU reference in csrc/linear.c up to the summation order.
//
// Why: a decode step at batch <= 8 is a chain of weight-streaming products. On H200 (2026-11-22, mamba-2.8b bf16,
// benchmarks/profile_decode.py) cuBLAS ran out_proj (2560 x 5120) and x_proj (192 x 5120) as split-K GEMMs at
// ~7 us each plus a 1.6 us split-K reduction kernel: 1.10 ms per step for 0.42 ms of weight bytes at HBM speed.
//
// Layout of the work: KS warps share one weight row (KS in {1, 2, 4, 8}, picked so that N x KS warps fill the GPU
// about twice over), 8 warps per block, so a block covers 8 / KS rows. Lane l of warp w of a row reads the 16-byte
// packs k = w * 32 + l + i * (KS * 32): every load instruction of a warp reads 512 contiguous bytes, and each thread
// keeps UNROLL packs in flight (weights bypass L1: they are read once). The M rows of x are re-read from L1/L2 (the
// same K elements for every weight row; x is at most 8 x 20 KiB). Partial sums: warp shuffle, then the KS warps of a
// row through shared memory; the first warp of the row adds the bias and writes the M outputs.
// Bytes moved per call: N x K x elem (weights, once) + M x (K + N) x elem; the floor is weights / HBM bandwidth.
// Launched with PDL (sm_90+): each thread issues its first UNROLL weight packs before griddepcontrol.wait, so the
// weight stream starts while the previous kernel finishes; x is read and out written only after the wait.
#include "common.cuh"

#include <stdlib.h>

#include <nvtx3/nvToolsExt.h>

#define OP "linear_small"
#define LIN_THREADS 256
#define LIN_WARPS (LIN_THREADS / 32)
#define LIN_UNROLL 4

namespace {

template <typename T, int M>
__device__ __forceinline__ void fma_pack(const uint4 &wv, const T *x, int64_t sx, int64_t k, float (&acc)[M]) {
    constexpr int P = Pack16<T>::N;
    float wf[P];
    Pack16<T>::to_f32(wv, wf);
#pragma unroll
    for (int m = 0; m < M; m++) {
        float xf[P];
        Pack16<T>::to_f32(__ldg(reinterpret_cast<const uint4 *>(x + m * sx) + k), xf);
#pragma unroll
        for (int i = 0; i < P; i++) acc[m] = fmaf(wf[i], xf[i], acc[m]);
    }
}

template <typename T, int M, int KS>
__global__ void __launch_bounds__(LIN_THREADS)
    linear_small_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                        T *__restrict__ out, int64_t so, int64_t N, int64_t K) {
    constexpr int P = Pack16<T>::N, RPB = LIN_WARPS / KS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, kw = warp % KS;
    const int64_t row = (int64_t)blockIdx.x * RPB + warp / KS;
    const int64_t npk = K / P, step = KS * 32;
    ssm_pdl_trigger();
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
    if constexpr (M > 4) { // the rotated loop below costs registers: 3 blocks per SM instead of 4 at M = 8
        ssm_pdl_wait();
        if (row < N) {
            const uint4 *wr = reinterpret_cast<const uint4 *>(w + row * K);
            int64_t k = kw * 32 + lane;
            for (; k + (LIN_UNROLL - 1) * step < npk; k += LIN_UNROLL * step) {
                uint4 wv[LIN_UNROLL];
#pragma unroll
                for (int u = 0; u < LIN_UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
#pragma unroll
                for (int u = 0; u < LIN_UNROLL; u++) fma_pack<T, M>(wv[u], x, sx, k + u * step, acc);
            }
            for (; k < npk; k += step) fma_pack<T, M>(ld_stream(wr + k), x, sx, k, acc);
        }
    } else {
        // The first LIN_UNROLL weight packs are in flight before the wait (no earlier kernel writes weights); each
        // iteration then consumes its packs and issues the next ones.
        const uint4 *wr = row < N ? reinterpret_cast<const uint4 *>(w + row * K) : nullptr;
        int64_t k = kw * 32 + lane;
        bool more = row < N && k + (LIN_UNROLL - 1) * step < npk;
        uint4 wv[LIN_UNROLL];
        if (more) {
#pragma unroll
            for (int u = 0; u < LIN_UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
        }
        ssm_pdl_wait();
        if (row < N) {
            while (more) {
#pragma unroll
                for (int u = 0; u < LIN_UNROLL; u++) fma_pack<T, M>(wv[u], x, sx, k + u * step, acc);
                k += LIN_UNROLL * step;
                more = k + (LIN_UNROLL - 1) * step < npk;
                if (more) {
#pragma unroll
                    for (int u = 0; u < LIN_UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
                }
            }
            for (; k < npk; k += step) fma_pack<T, M>(ld_stream(wr + k), x, sx, k, acc);
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
    __shared__ float part[LIN_WARPS][M];
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) part[warp][m] = acc[m];
    }
    __syncthreads();
    if (kw == 0 && lane < M && row < N) {
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < KS; j++) s += part[warp + j][lane];
        if (bias) s += to_f32<T>(bias[row]);
        out[lane * so + row] = from_f32<T>(s);
    }
}

template <typename T, int M, int KS>
static ssmtp_status_t launch_ks(const ssmtp_linear_params_t *p, bool pdl, cudaStream_t s) {
    const int64_t N = p->weight.shape[0], K = p->x.shape[1];
    const unsigned grid = (unsigned)((N + LIN_WARPS / KS - 1) / (LIN_WARPS / KS));
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    T *o = (T *)p->out.data;
    const int64_t sx = p->x.stride[0], so = p->out.stride[0];
    return ssmtp_launch(OP, linear_small_kernel<T, M, KS>, grid, LIN_THREADS, 0, s, pdl, x, sx, w, b, o, so, N, K);
}

// Warps per weight row (KS). At M <= 2, one wave: the largest KS whose grid is resident all at once while every lane
// of a row still reads at least one 16-byte pack: all blocks stream together and none waits for a second wave, whose
// partial tail costs up to a block's lifetime. Otherwise (M > 2, or no KS fits one wave): the fewest warps per row
// that give >= 2 x (SMs x 32) warps in all. SSMTP_LINEAR_ONE_WAVE=0: always the latter (for comparisons).
// Measured on H200 (bench_ops, bf16, linear-one-wave-h200-6b32f74-*.json, same run): out_proj 5120 -> 2560 at M = 1
// 7.2 us (KS 2, one wave) vs 7.6 (KS 4); 2560 -> 2560 (TP=2) 4.2 vs 5.6 us; mamba-2.8b decode step at B=1 2.23 vs
// 2.26 ms. At M = 4 and 8 the one-wave choice was slower (14.1 vs 11.9 us): more rows per block there cost the
// register-heavier kernel more than the tail, hence M <= 2.
static int pick_ks(int64_t N, int64_t npk, int sms) {
    int ks = 1;
    while (ks < 8 && N * ks < 2LL * sms * 32 && npk >= 2LL * ks * 32) ks *= 2;
    return ks;
}

static bool one_wave_on() {
    static const int on = [] {
        const char *env = getenv("SSMTP_LINEAR_ONE_WAVE");
        return !(env && env[0] == '0' && env[1] == 0);
    }();
    return on;
}

template <typename T, int M>
static ssmtp_status_t launch_m(const ssmtp_linear_params_t *p, int sms, bool pdl, cudaStream_t s) {
    const int64_t N = p->weight.shape[0], npk = p->x.shape[1] * (int64_t)sizeof(T) / 16;
    int ks = 0;
    if (one_wave_on() && M <= 2) {
        const void *kern[4] = {(const void *)linear_small_kernel<T, M, 1>, (const void *)linear_small_kernel<T, M, 2>,
                               (const void *)linear_small_kernel<T, M, 4>, (const void *)linear_small_kernel<T, M, 8>};
        for (int i = 3; i >= 0 && !ks; i--) {
            const int k = 1 << i;
            const int64_t grid = (N + LIN_WARPS / k - 1) / (LIN_WARPS / k);
            if (npk >= 32LL * k && grid <= (int64_t)ssm_blocks_per_sm(kern[i], LIN_THREADS, 0) * sms) ks = k;
        }
    }
    if (!ks) ks = pick_ks(N, npk, sms);
    switch (ks) {
    case 1: return launch_ks<T, M, 1>(p, pdl, s);
    case 2: return launch_ks<T, M, 2>(p, pdl, s);
    case 4: return launch_ks<T, M, 4>(p, pdl, s);
    default: return launch_ks<T, M, 8>(p, pdl, s);
    }
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_linear_small(const ssmtp_linear_params_t *p, void *stream) {
    const char *op = OP;
    const int64_t M = p->x.shape[0], K = p->x.shape[1], N = p->weight.shape[0];
    if (M < 1 || M > SSMTP_LINEAR_SMALL_MAX_M)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: M=%lld rows of x on CUDA, supported 1..%d", op, (long long)M,
                          SSMTP_LINEAR_SMALL_MAX_M);
    const int64_t es = (int64_t)ssmtp_dtype_size(p->x.dtype);
    if ((K * es) % 16 || (uintptr_t)p->x.data % 16 || (uintptr_t)p->weight.data % 16 ||
        (M > 1 && (p->x.stride[0] * es) % 16))
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: K=%lld (x %lld-byte rows, stride %lld) needs 16-byte aligned rows "
                          "of x and weight on CUDA", op, (long long)K, (long long)(K * es), (long long)p->x.stride[0]);
    if (N == 0) return SSMTP_OK;
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    const int dev = p->x.device;
    int sms = 132;
    SSMTP_TRY(ssm_sm_count(dev, &sms));
    cudaStream_t s = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(dev);
    ssmtp_status_t err = SSMTP_OK;
    nvtxRangePushA("ssmtp::linear_small");
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, op, {
        switch (M) {
        case 1: err = launch_m<T, 1>(p, sms, pdl, s); break;
        case 2: err = launch_m<T, 2>(p, sms, pdl, s); break;
        case 3: err = launch_m<T, 3>(p, sms, pdl, s); break;
        case 4: err = launch_m<T, 4>(p, sms, pdl, s); break;
        case 5: err = launch_m<T, 5>(p, sms, pdl, s); break;
        case 6: err = launch_m<T, 6>(p, sms, pdl, s); break;
        case 7: err = launch_m<T, 7>(p, sms, pdl, s); break;
        default: err = launch_m<T, 8>(p, sms, pdl, s); break;
        }
    });
    nvtxRangePop();
    return err;
}
