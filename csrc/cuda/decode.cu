// decode.cu - the input half of a Mamba-1 block's decode step in one kernel: residual add, RMSNorm, in_proj (a
// weight-streaming GEMV), conv step + SiLU. Semantics: ssmtp_mamba_decode_in in csrc/ssmtp.h; CPU reference:
// csrc/decode.c.
//
// Why: at batch 1-4 a decode step is a chain of small kernels, and each costs its launch, ramp and drain on the
// critical path even with programmatic dependent launch. Unfused, this half of a block is three kernels: the
// residual add + RMSNorm (a torch.compile'd kernel, which does not take part in PDL), in_proj (cuBLAS, no PDL) and
// the conv step; fused it is one, launched with PDL so that its weight stream starts while the kernel before it (the
// previous layer's out_proj, or its all-reduce) finishes.
//
// Work layout: 8 warps per block; every warp streams `rpw` whole in_proj rows (lane l reads packs l, l + 32, ...
// of a row: each load instruction of a warp reads 512 contiguous bytes), the rows of a warp adjacent. rpw is the
// fewest rows that let every warp be resident at once (occupancy calculator), and the grid has exactly the warps
// that needs: every warp does the same work, there is no second wave and no tail. A warp's packs form one stream:
// RING = 8 packs per lane in flight, the first 8 issued before the PDL wait. Per row only warp shuffles: no barrier
// after the prologue.
// Prologue, once per block (one wave of blocks): the block reads the whole residual (M x H), sums the squares with a
// block reduction and keeps h = norm(res + add) in shared memory as T (every warp needs all of it); block 0 writes
// res_out. Epilogue per row: lane m < M finishes batch row m: the bias and one rounding to T, then the conv step of
// channel `row` (ssm_conv_step, the arithmetic of conv1d.cu's decode kernel, its operands loaded when the row
// starts) for x rows, or the store for z rows.
// Bytes: the in_proj weight once (2 dl x H x elem: 52 MB of mamba-2.8b's 87 MB per layer) + the residual (a few KB
// per block, from L2).

#include "common.cuh"
#include "ssm_math.cuh"

#include <stdlib.h>

#define OP "mamba_decode_in"

namespace {


struct DecInArgs {
    const void *res, *add;
    void *res_out;
    const void *norm_w, *w, *bias, *conv_w, *conv_b;
    void *conv_state;
    const int32_t *state_idx;
    void *xc, *z;
    int64_t H, dl, nslots, W, S, rpw;
    int64_t sres, sadd, sro, sxc, sz, scw0, scw1, scb, ss0, ss1, ss2, sidx;
    int res_f32, out_f32;
    float eps;
};

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

// The conv operands of one (row, m) of a group: loaded at the top of the group, so that their latency overlaps the
// group's products instead of following its barrier (up to 4 columns: W, S <= 4 from the launcher).
template <typename T> struct ConvOps {
    float w[4], b;
    T old[4];
    T *st; // null: not an x row of a live slot
};

template <typename T> __device__ __forceinline__ void conv_load(const DecInArgs &a, int64_t c, int64_t slot,
                                                                ConvOps<T> &o) {
    o.st = (T *)a.conv_state + slot * a.ss0 + c * a.ss1;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        o.w[j] = j < a.W ? to_f32<T>(((const T *)a.conv_w)[c * a.scw0 + j * a.scw1]) : 0.f;
        o.old[j] = j < a.S ? o.st[j * a.ss2] : from_f32<T>(0.f);
    }
    o.b = a.conv_b ? to_f32<T>(((const T *)a.conv_b)[c * a.scb]) : 0.f;
}

// The conv step on loaded operands (W, S at compile time: one kernel per (T, M, PPT), a switch per conv shape).
template <typename T, int W, int S> __device__ __forceinline__ float conv_one(ConvOps<T> &o, T xz, int64_t ss2) {
    float w[W];
    T old[S], nw[S];
#pragma unroll
    for (int j = 0; j < W; j++) w[j] = o.w[j];
#pragma unroll
    for (int j = 0; j < S; j++) old[j] = o.old[j];
    const float y = ssm_conv_step<T, W, S>(w, o.b, old, xz, nw);
#pragma unroll
    for (int j = 0; j < S; j++) o.st[j * ss2] = nw[j];
    return y;
}

template <typename T> __device__ __forceinline__ float conv_any(const DecInArgs &a, ConvOps<T> &o, T xz) {
    switch (a.W * 8 + a.S) {
    case 2 * 8 + 1: return conv_one<T, 2, 1>(o, xz, a.ss2);
    case 2 * 8 + 2: return conv_one<T, 2, 2>(o, xz, a.ss2);
    case 3 * 8 + 2: return conv_one<T, 3, 2>(o, xz, a.ss2);
    case 3 * 8 + 3: return conv_one<T, 3, 3>(o, xz, a.ss2);
    case 4 * 8 + 3: return conv_one<T, 4, 3>(o, xz, a.ss2);
    default: return conv_one<T, 4, 4>(o, xz, a.ss2);
    }
}

constexpr int THREADS = 256, WARPS = THREADS / 32;
constexpr int RING = 8; // weight packs in flight per lane

// The in_proj row `row` of this warp is done: sum the lanes, then lane m < M finishes row m of the batch (bias, one
// rounding to T, then the conv step for an x row, the store for a z row).
template <typename T, int M>
__device__ __forceinline__ void finish_row(const DecInArgs &a, int64_t row, float (&acc)[M], ConvOps<T> &co,
                                           int64_t slot) {
    const int lane = threadIdx.x % 32;
    float mine = 0.f;
#pragma unroll
    for (int m = 0; m < M; m++) {
        float v = acc[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == m) mine = v;
        acc[m] = 0.f;
    }
    if (lane >= M) return;
    if (a.bias) mine = __fadd_rn(mine, to_f32<T>(((const T *)a.bias)[row]));
    const T xz = from_f32<T>(mine);
    if (row >= a.dl) {
        ((T *)a.z)[lane * a.sz + (row - a.dl)] = xz;
    } else {
        T *out = (T *)a.xc + lane * a.sxc + row;
        if (co.st) *out = from_f32<T>(ssm_silu_out<T>(conv_any<T>(a, co, xz)));
        else *out = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
    }
}

template <typename T, int M>
__global__ void __launch_bounds__(THREADS) decode_in_kernel(const DecInArgs a) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *xs = reinterpret_cast<T *>(smem_raw); // (M, H): the normalised block input
    __shared__ float ssr[WARPS][M];
    constexpr int P = Pack16<T>::N;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // 32-bit counters (the launcher checked 2 dl x steps per row < 2^31): fewer registers in the streaming loop
    const int H = (int)a.H, N = (int)(2 * a.dl), npk = H / P, spr = (npk + 31) / 32; // 32-pack steps per row
    // this warp's rows: [r0, r1), a.rpw of them (the last warp fewer)
    const int r0 = (int)(((int64_t)blockIdx.x * WARPS + warp) * a.rpw);
    const int r1 = r0 + (int)a.rpw < N ? r0 + (int)a.rpw : N;
    const int nsteps = r0 < N ? (r1 - r0) * spr : 0;
    const uint4 *w = reinterpret_cast<const uint4 *>(a.w);
    ssm_pdl_trigger();

    // The warp's packs as one stream of steps s = (row - r0) * spr + j: lane reads pack j * 32 + lane of the row
    // (nothing past the row's end). The first RING steps are issued before the PDL wait (weights: nothing earlier on
    // the stream writes them); each step consumed issues step s + RING.
    uint4 ring[RING];
    int lrow = r0, lj = 0; // the load cursor
    auto issue = [&](uint4 &dst) {
        const int k = lj * 32 + lane;
        dst = k < npk ? ld_stream(w + (int64_t)lrow * npk + k) : make_uint4(0, 0, 0, 0);
        if (++lj == spr) { lj = 0; lrow++; }
    };
#pragma unroll
    for (int u = 0; u < RING; u++)
        if (u < nsteps) issue(ring[u]);
    ssm_pdl_wait();

    // Prologue (every block, whole rows): r = res + add (fp32), v = (T) r, s = 1 / sqrt(mean(v^2) + eps) (IEEE, as
    // the CPU reference), h = (T)(norm_w * (T)(v s)) into shared memory; block 0 writes res_out.
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    for (int e = threadIdx.x; e < H; e += THREADS) {
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
        if (lane == 0) ssr[warp][m] = ss[m];
    }
    __syncthreads();
    float sc[M];
#pragma unroll
    for (int m = 0; m < M; m++) {
        float t = 0.f;
#pragma unroll
        for (int i = 0; i < WARPS; i++) t += ssr[i][m];
        sc[m] = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(t, (float)H), a.eps)));
    }
    for (int e = threadIdx.x; e < H; e += THREADS) {
        const float nw = to_f32<T>(((const T *)a.norm_w)[e]);
#pragma unroll
        for (int m = 0; m < M; m++)
            xs[m * H + e] = from_f32<T>(__fmul_rn(nw, round_t<T>(__fmul_rn(to_f32<T>(xs[m * H + e]), sc[m]))));
    }
    __syncthreads(); // no barrier after this: warps stream their own rows

    // lane m < M: the slot of batch row m, and the conv operands of the current row (loaded at the row's start)
    const int64_t slot = lane < M ? (a.state_idx ? (int64_t)a.state_idx[lane * a.sidx] : lane) : -1;
    ConvOps<T> co;
    auto row_start = [&](int row) {
        co.st = nullptr;
        if (lane < M && row < a.dl && slot >= 0 && slot < a.nslots) conv_load<T>(a, row, slot, co);
    };
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
    int crow = r0, cj = 0; // the compute cursor
    if (nsteps > 0) row_start(crow);
    for (int base = 0; base < nsteps; base += RING) {
#pragma unroll
        for (int u = 0; u < RING; u++) {
            if (base + u < nsteps) {
                const uint4 wv = ring[u];
                if (base + u + RING < nsteps) issue(ring[u]);
                const int k = cj * 32 + lane;
                if (k < npk) {
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
                if (++cj == spr) {
                    finish_row<T, M>(a, crow, acc, co, slot);
                    cj = 0;
                    if (++crow < r1) row_start(crow);
                }
            }
        }
    }
}

// Blocks per SM of a kernel (occupancy calculator; cached per kernel and dynamic shared memory size).
template <typename K> int blocks_per_sm(K kernel, size_t smem) {
    static size_t cache_smem[4];
    static int cache_v[4];
    for (int i = 0; i < 4; i++)
        if (cache_v[i] > 0 && cache_smem[i] == smem) return cache_v[i];
    int v = 1;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, THREADS, smem) != cudaSuccess || v < 1) {
        (void)cudaGetLastError();
        v = 1;
    }
    for (int i = 0; i < 4; i++)
        if (cache_v[i] == 0) {
            cache_smem[i] = smem;
            cache_v[i] = v;
            break;
        }
    return v;
}

template <typename T, int M>
ssmtp_status_t launch_m(DecInArgs a, size_t smem, int sms, cudaStream_t s, bool pdl) {
    auto kernel = decode_in_kernel<T, M>;
    if (smem > 48 * 1024)
        SSMTP_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    // Rows per warp: the fewest that fit every warp in one wave (SSMTP_DECODE_IN_RPW overrides, for benchmarks);
    // then exactly as many warps as that needs, so every warp streams the same number of rows.
    const int64_t N = 2 * a.dl, resident = (int64_t)blocks_per_sm(kernel, smem) * sms * WARPS;
    int64_t rpw = (N + resident - 1) / resident;
    const char *env = getenv("SSMTP_DECODE_IN_RPW");
    if (env && *env && atoi(env) > 0) rpw = atoi(env);
    a.rpw = rpw;
    const int64_t warps = (N + rpw - 1) / rpw, grid = (warps + WARPS - 1) / WARPS;
    if (N * ((a.H / Pack16<T>::N + 31) / 32 + RING) > 0x7fffffff)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %lld x %lld in_proj", (long long)N, (long long)a.H);
    return ssmtp_launch(OP, kernel, dim3((unsigned)grid), dim3(THREADS), smem, s, pdl, a);
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
    if (M * H * es > 160 * 1024)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M x H = %lld x %lld (%lld bytes of input) on CUDA: at most "
                          "160 KiB", (long long)M, (long long)H, (long long)(M * H * es));
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

    const size_t smem = (size_t)(M * H * es);
    cudaStream_t s = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(dev);
    SSMTP_DISPATCH_FLOAT(p->weight.dtype, T, OP, {
        switch (M) {
        case 1: return launch_m<T, 1>(a, smem, sms, s, pdl);
        case 2: return launch_m<T, 2>(a, smem, sms, s, pdl);
        case 3: return launch_m<T, 3>(a, smem, sms, s, pdl);
        default: return launch_m<T, 4>(a, smem, sms, s, pdl);
        }
    });
    return SSMTP_OK;
}
