// decode.cu - the input half of a Mamba-1 block's decode step in one kernel: residual add, RMSNorm, in_proj (a
// weight-streaming GEMV), conv step + SiLU. Semantics: ssmtp_mamba_decode_in in csrc/ssmtp.h; CPU reference:
// csrc/decode.c.
//
// Why: at batch 1-4 a decode step is a chain of small kernels, and each costs its launch, ramp and drain on the
// critical path even with programmatic dependent launch. Unfused, this half of a block is three kernels: the
// residual add + RMSNorm (a torch.compile'd kernel, which does not take part in PDL), in_proj (cuBLAS, no PDL) and
// the conv step; fused it is one, launched with PDL so that its weight stream starts while out_proj of the previous
// layer (or its all-reduce) finishes.
//
// Work layout (the GEMV as linear.cu's linear_small): KS warps share one in_proj row, 8 warps per block, a block
// covers RPB = 8 / KS rows per row group and G consecutive row groups (G from the launcher: the prologue below is
// paid once per block, so a block takes a few row groups; with many blocks the scheduler still balances the tail).
// Prologue, once per block, after the PDL wait: every block reads the whole residual (M x H: the GEMV needs all of
// the normalised row anyway), sums the squares with a block reduction, and keeps h = norm(res + add) in shared memory
// as T; block 0 also writes res_out. The first weight packs of the block's first row are loaded before the wait.
// Epilogue, per row: lane m of the row's first warp rounds row m's sum to T; x rows (j < dl) go through the conv step
// of channel j (ssm_conv_step, the arithmetic of conv1d.cu's decode kernel) and z rows are stored.
// Bytes: the in_proj weight once (2 dl x H x elem: 52 MB of mamba-2.8b's 87 MB per layer) + a few KB per block
// of residual from L2.
#include "common.cuh"
#include "ssm_math.cuh"

#include <stdlib.h>

#define OP "mamba_decode_in"

namespace {

constexpr int THREADS = 256, WARPS = THREADS / 32, UNROLL = 4;

struct DecInArgs {
    const void *res, *add;
    void *res_out;
    const void *norm_w, *w, *bias, *conv_w, *conv_b;
    void *conv_state;
    const int32_t *state_idx;
    void *xc, *z;
    int64_t H, dl, nslots, G, W, S;
    int64_t sres, sadd, sro, sxc, sz, scw0, scw1, scb, ss0, ss1, ss2, sidx;
    int res_f32, out_f32;
    float eps;
};

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

template <typename T, int M>
__device__ __forceinline__ void fma_pack(const uint4 &wv, const T *xs, int64_t H, int64_t k, float (&acc)[M]) {
    constexpr int P = Pack16<T>::N;
    float wf[P];
    Pack16<T>::to_f32(wv, wf);
#pragma unroll
    for (int m = 0; m < M; m++) {
        float xf[P];
        Pack16<T>::to_f32(reinterpret_cast<const uint4 *>(xs + m * H)[k], xf);
#pragma unroll
        for (int i = 0; i < P; i++) acc[m] = fmaf(wf[i], xf[i], acc[m]);
    }
}

// The conv step of channel c for one row, xz its in_proj output (W, S from the launcher: a switch here keeps one
// kernel per (T, M, KS) instead of one per conv shape; it runs on M lanes per row).
template <typename T, int W, int S>
__device__ __forceinline__ float conv_one(const DecInArgs &a, T *st, int64_t c, T xz) {
    float cw[W];
#pragma unroll
    for (int j = 0; j < W; j++) cw[j] = to_f32<T>(((const T *)a.conv_w)[c * a.scw0 + j * a.scw1]);
    const float cb = a.conv_b ? to_f32<T>(((const T *)a.conv_b)[c * a.scb]) : 0.f;
    T old[S], nw[S];
#pragma unroll
    for (int j = 0; j < S; j++) old[j] = st[j * a.ss2];
    const float y = ssm_conv_step<T, W, S>(cw, cb, old, xz, nw);
#pragma unroll
    for (int j = 0; j < S; j++) st[j * a.ss2] = nw[j];
    return y;
}

template <typename T> __device__ __forceinline__ float conv_any(const DecInArgs &a, T *st, int64_t c, T xz) {
    switch (a.W * 8 + a.S) {
    case 2 * 8 + 1: return conv_one<T, 2, 1>(a, st, c, xz);
    case 2 * 8 + 2: return conv_one<T, 2, 2>(a, st, c, xz);
    case 3 * 8 + 2: return conv_one<T, 3, 2>(a, st, c, xz);
    case 3 * 8 + 3: return conv_one<T, 3, 3>(a, st, c, xz);
    case 4 * 8 + 3: return conv_one<T, 4, 3>(a, st, c, xz);
    default: return conv_one<T, 4, 4>(a, st, c, xz);
    }
}

template <typename T, int M, int KS>
__global__ void __launch_bounds__(THREADS) decode_in_kernel(const DecInArgs a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw); // (M, H): the normalised block input
    __shared__ float red[WARPS][M];
    __shared__ float part[WARPS][M];
    constexpr int P = Pack16<T>::N, RPB = WARPS / KS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, kw = warp % KS;
    const int64_t H = a.H, N = 2 * a.dl, npk = H / P, step = KS * 32;
    const int64_t nrg = (N + RPB - 1) / RPB;
    const T *w = (const T *)a.w;
    ssm_pdl_trigger();

    // The first weight packs of this warp's first row, in flight across the wait and the prologue.
    int64_t rg = (int64_t)blockIdx.x * a.G;
    const int64_t rg_end = rg + a.G < nrg ? rg + a.G : nrg;
    int64_t row = rg * RPB + warp / KS;
    uint4 wv[UNROLL];
    const int64_t k0 = kw * 32 + lane;
    bool pre = row < N && k0 + (UNROLL - 1) * step < npk;
    if (pre) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) wv[u] = ld_stream(reinterpret_cast<const uint4 *>(w + row * H) + k0 + u * step);
    }
    ssm_pdl_wait();

    // Prologue: r = res + add (fp32), v = (T) r, s = 1 / sqrt(mean(v^2) + eps) (IEEE, as the CPU reference),
    // h = (T)(norm_w * (T)(v s)).
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int64_t e = threadIdx.x; e < H; e += THREADS) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float r = a.res_f32 ? ((const float *)a.res)[m * a.sres + e] : to_f32<T>(((const T *)a.res)[m * a.sres + e]);
            if (a.add) r = __fadd_rn(r, to_f32<T>(((const T *)a.add)[m * a.sadd + e]));
            if (blockIdx.x == 0) {
                if (a.out_f32) ((float *)a.res_out)[m * a.sro + e] = r;
                else ((T *)a.res_out)[m * a.sro + e] = from_f32<T>(r);
            }
            const T v = from_f32<T>(r);
            xs[m * H + e] = v;
            const float vf = to_f32<T>(v);
            ss[m] = fmaf(vf, vf, ss[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
        if (lane == 0) red[warp][m] = ss[m];
    }
    __syncthreads();
    float sc[M];
#pragma unroll
    for (int m = 0; m < M; m++) {
        float t = 0.f;
#pragma unroll
        for (int i = 0; i < WARPS; i++) t += red[i][m];
        sc[m] = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(t, (float)H), a.eps)));
    }
    for (int64_t e = threadIdx.x; e < H; e += THREADS) {
        const float nw = to_f32<T>(((const T *)a.norm_w)[e]);
#pragma unroll
        for (int m = 0; m < M; m++)
            xs[m * H + e] = from_f32<T>(__fmul_rn(nw, round_t<T>(__fmul_rn(to_f32<T>(xs[m * H + e]), sc[m]))));
    }
    __syncthreads();

    for (; rg < rg_end; rg++) {
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
        int64_t k = k0;
        bool more = pre;
        if (row < N) {
            const uint4 *wr = reinterpret_cast<const uint4 *>(w + row * H);
            while (more) {
#pragma unroll
                for (int u = 0; u < UNROLL; u++) fma_pack<T, M>(wv[u], xs, H, k + u * step, acc);
                k += UNROLL * step;
                more = k + (UNROLL - 1) * step < npk;
                if (more) {
#pragma unroll
                    for (int u = 0; u < UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
                }
            }
            for (; k < npk; k += step) fma_pack<T, M>(ld_stream(wr + k), xs, H, k, acc);
        }
        // The next row group's first packs go out before this one's reduction and epilogue.
        const int64_t row_n = row + RPB;
        pre = rg + 1 < rg_end && row_n < N && k0 + (UNROLL - 1) * step < npk;
        if (pre) {
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                wv[u] = ld_stream(reinterpret_cast<const uint4 *>(w + row_n * H) + k0 + u * step);
        }
#pragma unroll
        for (int m = 0; m < M; m++)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
        if constexpr (KS > 1) {
            if (lane == 0) {
#pragma unroll
                for (int m = 0; m < M; m++) part[warp][m] = acc[m];
            }
            __syncthreads();
#pragma unroll
            for (int m = 0; m < M; m++) {
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < KS; j++) t += part[warp - kw + j][m];
                acc[m] = t;
            }
            __syncthreads(); // part is rewritten by the next row group
        }
        if (kw == 0 && lane < M && row < N) {
            // lane m finishes row m of the batch (runtime m: pick it out of the unrolled accumulators)
            const int m = lane;
            float s = acc[0];
#pragma unroll
            for (int i = 1; i < M; i++)
                if (m == i) s = acc[i];
            if (a.bias) s = __fadd_rn(s, to_f32<T>(((const T *)a.bias)[row]));
            const T xz = from_f32<T>(s);
            if (row >= a.dl) {
                ((T *)a.z)[m * a.sz + (row - a.dl)] = xz;
            } else {
                const int64_t c = row;
                const int64_t slot = a.state_idx ? (int64_t)a.state_idx[m * a.sidx] : m;
                T *out = (T *)a.xc + m * a.sxc + c;
                if (slot < 0 || slot >= a.nslots) {
                    *out = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
                } else {
                    const float y = conv_any<T>(a, (T *)a.conv_state + slot * a.ss0 + c * a.ss1, c, xz);
                    *out = from_f32<T>(ssm_silu_out<T>(y));
                }
            }
        }
        row = row_n;
    }
}

// Warps per weight row: as linear_small (the fewest giving >= 2 x (SMs x 32) warps while every lane of a row still
// reads at least one 16-byte pack).
int pick_ks(int64_t N, int64_t npk, int sms) {
    int ks = 1;
    while (ks < 8 && N * ks < 2LL * sms * 32 && npk >= 2LL * ks * 32) ks *= 2;
    return ks;
}

template <typename T, int M, int KS>
ssmtp_status_t launch_ks(const DecInArgs &a, unsigned grid, size_t smem, cudaStream_t s, bool pdl) {
    auto kernel = decode_in_kernel<T, M, KS>;
    if (smem > 48 * 1024)
        SSMTP_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    return ssmtp_launch(OP, kernel, grid, dim3(THREADS), smem, s, pdl, a);
}

template <typename T, int M>
ssmtp_status_t launch_m(const DecInArgs &a, int ks, unsigned grid, size_t smem, cudaStream_t s, bool pdl) {
    switch (ks) {
    case 1: return launch_ks<T, M, 1>(a, grid, smem, s, pdl);
    case 2: return launch_ks<T, M, 2>(a, grid, smem, s, pdl);
    case 4: return launch_ks<T, M, 4>(a, grid, smem, s, pdl);
    default: return launch_ks<T, M, 8>(a, grid, smem, s, pdl);
    }
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream) {
    const int64_t M = p->res.shape[0], H = p->res.shape[1], dl = p->weight.shape[0] / 2;
    const int64_t W = p->conv_w.shape[1], S = p->conv_state.shape[2];
    const int64_t es = (int64_t)ssmtp_dtype_size(p->weight.dtype);
    if (M < 1 || M > SSMTP_DECODE_IN_MAX_M)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M=%lld rows on CUDA, supported 1..%d", (long long)M,
                          SSMTP_DECODE_IN_MAX_M);
    if ((H * es) % 16 || (uintptr_t)p->weight.data % 16)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": H=%lld (%lld-byte rows) needs 16-byte aligned weight rows on CUDA",
                          (long long)H, (long long)(H * es));
    if (W < 2 || W > 4 || (S != W && S != W - 1))
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": conv width %lld with a %lld-column state on CUDA (width 2..4, "
                          "state width or width - 1 columns)", (long long)W, (long long)S);
    const size_t smem = (size_t)(M * H * es);
    if (smem > 160 * 1024)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M x H = %lld x %lld does not fit shared memory", (long long)M,
                          (long long)H);
    if (dl == 0) return SSMTP_OK;
    SSMTP_TRY(ssmtp_cuda_set_device(p->weight.device));
    const int dev = p->weight.device;
    int sms = 132;
    SSMTP_TRY(ssm_sm_count(dev, &sms));

    DecInArgs a = {};
    a.res = p->res.data;
    a.add = p->add.data;
    a.res_out = p->res_out.data;
    a.norm_w = p->norm_w.data;
    a.w = p->weight.data;
    a.bias = p->bias.data;
    a.conv_w = p->conv_w.data;
    a.conv_b = p->conv_b.data;
    a.conv_state = p->conv_state.data;
    a.state_idx = (const int32_t *)p->state_idx.data;
    a.xc = p->xc.data;
    a.z = p->z.data;
    a.H = H;
    a.dl = dl;
    a.nslots = p->conv_state.shape[0];
    a.sres = p->res.stride[0];
    if (a.add) a.sadd = p->add.stride[0];
    a.sro = p->res_out.stride[0];
    a.sxc = p->xc.stride[0];
    a.sz = p->z.stride[0];
    a.scw0 = p->conv_w.stride[0];
    a.scw1 = p->conv_w.stride[1];
    if (a.conv_b) a.scb = p->conv_b.stride[0];
    a.ss0 = p->conv_state.stride[0];
    a.ss1 = p->conv_state.stride[1];
    a.ss2 = p->conv_state.stride[2];
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    a.res_f32 = p->res.dtype == SSMTP_DTYPE_F32;
    a.out_f32 = p->res_out.dtype == SSMTP_DTYPE_F32;
    a.eps = p->eps;
    a.W = W;
    a.S = S;

    const int ks = pick_ks(2 * dl, H * es / 16, sms);
    const int64_t rpb = WARPS / ks, nrg = (2 * dl + rpb - 1) / rpb;
    // Row groups per block (SSMTP_DECODE_IN_G overrides, for benchmarks): 2, or 1 when that would leave fewer than
    // two blocks per SM.
    int64_t g = nrg >= 4LL * sms ? 2 : 1;
    const char *env = getenv("SSMTP_DECODE_IN_G");
    if (env && *env && atoi(env) > 0) g = atoi(env);
    a.G = g;
    const int64_t grid = (nrg + g - 1) / g;
    if (grid > 0x7fffffff) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %lld row groups", (long long)nrg);
    cudaStream_t s = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(dev);
    SSMTP_DISPATCH_FLOAT(p->weight.dtype, T, OP, {
        switch (M) {
        case 1: return launch_m<T, 1>(a, ks, (unsigned)grid, smem, s, pdl);
        case 2: return launch_m<T, 2>(a, ks, (unsigned)grid, smem, s, pdl);
        case 3: return launch_m<T, 3>(a, ks, (unsigned)grid, smem, s, pdl);
        default: return launch_m<T, 4>(a, ks, (unsigned)grid, smem, s, pdl);
        }
    });
    return SSMTP_OK;
}
