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
// Work layout: a block of NT = 32 * ceil(npk / PPT / 32) <= 512 threads (npk = H / (16 / elem) 16-byte packs per
// in_proj row, PPT = 1, or 2 when npk > 512; rows of at most 16 KiB) gives thread t the packs t, t + NT of EVERY
// row. So each thread needs the normalised input at its own packs only, and keeps it in registers as floats: the
// RMSNorm prologue is a block reduction over the thread's own elements (no shared copy of the input, no conversion
// per use). Rows go in groups of RPB (8 at one row of x, 4 at more: see the launcher); the grid is persistent (blocks
// per SM x SMs, from the occupancy calculator) and walks the groups with a stride, so the prologue is paid once per
// block and the tail is one group, not a wave. The next group's weight packs are loaded before the current group is
// multiplied (2 x RPB x PPT packs in flight per thread); the first group's before the PDL wait. Per group the RPB x M
// sums are reduced by warp shuffles and a double-buffered shared array (one barrier per group), and threads t < RPB M
// finish one (row, m) each: the bias and one rounding to T, then the conv step of channel `row` (ssm_conv_step, the
// arithmetic of conv1d.cu's decode kernel) for x rows, or the store for z rows.
// (Measured and not kept, H200, 2026-11-25, benchmarks/results/decode-pdl-order-h200-not-kept.json: the second group
// copied into shared memory before the wait too, B=1 step 0.04 ms slower; the per-group barrier split into named
// producer/consumer barriers, warp 0 waiting and the others only arriving, 0.01 ms slower at B=1, 0.05 at B=2.)
// Bytes: the in_proj weight once (2 dl x H x elem: 52 MB of mamba-2.8b's 87 MB per layer) + the residual (a few KB
// per block, from L2).
// Latency at one row of x (batch 1, where this kernel is on the critical path of every layer): norm_w is read before
// the PDL wait, the residual's loads go out together (see the prologue), and the conv inputs of each group's
// epilogue (the threads t < RPB: conv weights and bias, the slot's state columns) are prefetched into L1 a group
// ahead (warm), so the epilogue after the barrier does not wait on memory. Together with x_proj's weights loaded
// before its wait (linear.cu) and dt_proj's whole row before the state update's (step.cu): mamba-2.8b decode graph
// step at B=1 2.00 -> 1.86 ms on one H200 (same runs, benchmarks/results/decode-b1-h200-0019c13.json).
// Not built: x_proj in this kernel's tail (per-block partial sums of its 192 outputs, reduced across blocks at the
// end). A bound, the batch-1 graph with x_proj's output frozen, was only 60-75 us per step faster (H200, 2026-11-25,
// benchmarks/results/decode-norm-h200-ad59e97.json): about 1 us per layer, what that cross-block reduction would cost.

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
    int64_t H, n, lo, nc, nslots, W, S; // in_proj rows n, conv rows [lo, lo + nc)
    int64_t sres, sadd, sro, sxc, sz, scw0, scw1, scb, ss0, ss1, ss2, sidx;
    int res_f32, out_f32;
    float eps;
};

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

// The conv step of channel c for one row, xz its in_proj output (W, S from the launcher: a switch here keeps one
// kernel per (T, M, PPT) instead of one per conv shape; it runs on M lanes per row).
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

// L1 prefetch of the line holding p (no register holds the data: the epilogue's loads then hit L1).
__device__ __forceinline__ void l1_prefetch(const void *p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(__cvta_generic_to_global(p)));
}

// Thread t < RM, a group ahead (before the loop for the first group, then after each group's epilogue for the next):
// prefetch what its (row, m)'s epilogue will read (in_proj bias, and for a conv row the channel's conv weights, conv
// bias and the slot's state columns), so that the epilogue after the group's barrier does not wait a memory round
// trip on the critical path. slot: row m's slot, read once per block.
template <typename T> __device__ __forceinline__ void warm(const DecInArgs &a, int64_t row, int slot) {
    if (a.bias) l1_prefetch((const T *)a.bias + row);
    if (row < a.lo || row >= a.lo + a.nc || slot < 0 || slot >= a.nslots) return;
    const int64_t c = row - a.lo;
    l1_prefetch((const T *)a.conv_w + c * a.scw0);
    if (a.conv_b) l1_prefetch((const T *)a.conv_b + c * a.scb);
    l1_prefetch((const T *)a.conv_state + slot * a.ss0 + c * a.ss1);
}

// RPB: in_proj rows per group (2, 4 or 8; more: fewer barriers per row, more registers; chosen by the launcher)
template <typename T, int M, int PPT, int RPB>
__global__ void __launch_bounds__(512) decode_in_kernel(const DecInArgs a) {
    constexpr int P = Pack16<T>::N, RM = RPB * M;
    __shared__ float red[2][16][RM]; // per-warp partial sums (<= 16 warps), double-buffered across groups
    __shared__ float ssr[16][M];
    const int nt = blockDim.x, nw = nt / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t H = a.H, N = a.n, npk = H / P, ngroups = (N + RPB - 1) / RPB;
    const uint4 *w = reinterpret_cast<const uint4 *>(a.w);
    bool own[PPT];
#pragma unroll
    for (int j = 0; j < PPT; j++) own[j] = threadIdx.x + j * nt < npk;
    ssm_pdl_trigger();

    // weights of group g (rows past N read as zero packs)
    auto load = [&](int64_t g, uint4 (&wv)[RPB][PPT]) {
#pragma unroll
        for (int r = 0; r < RPB; r++) {
            const int64_t row = g * RPB + r;
#pragma unroll
            for (int j = 0; j < PPT; j++)
                wv[r][j] = own[j] && row < N ? ld_stream(w + row * npk + threadIdx.x + j * nt) : make_uint4(0, 0, 0, 0);
        }
    };
    int64_t g = blockIdx.x;
    uint4 cur[RPB][PPT], nxt[RPB][PPT];
    if (g < ngroups) load(g, cur);
    // norm_w at this thread's elements: a weight, so at one row of x it is read before the wait too (at more rows the
    // registers it holds through the prologue would cost a resident block per SM; it is read after the barrier there)
    constexpr bool NW_EARLY = M == 1 && PPT == 1;
    auto norm_w_at = [&](int j, int i) -> float { // zero past the row
        return own[j] ? to_f32<T>(((const T *)a.norm_w)[(threadIdx.x + j * (int64_t)nt) * P + i]) : 0.f;
    };
    float nwv[PPT][P];
#pragma unroll
    for (int j = 0; j < PPT; j++)
#pragma unroll
        for (int i = 0; i < P; i++) nwv[j][i] = NW_EARLY ? norm_w_at(j, i) : 0.f;
    ssm_pdl_wait();

    // Prologue: r = res + add (fp32), v = (T) r, s = 1 / sqrt(mean(v^2) + eps) (IEEE, as the CPU reference),
    // h = (T)(norm_w * (T)(v s)), for this thread's elements only; x holds r or v (rounded again below: the same).
    float x[M][PPT][P];
    float ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) ss[m] = 0.f;
    if constexpr (M == 1) {
        // At one row of x every load of res and add is issued before any value is used, branch-free (a thread past
        // the row reads the row's first pack and zeroes it), and block 0's copy of r to res_out comes after them.
        // Written as below for M >= 2, the store between one element's loads and the next's kept the compiler from
        // hoisting them: one L2 round trip per element. Measured (H200, mamba-2.8b graph step, same run): B=1 faster
        // this way, B=2 2-3% slower, so M >= 2 keeps the loop below.
        int64_t e0[PPT];
#pragma unroll
        for (int j = 0; j < PPT; j++) e0[j] = own[j] ? (threadIdx.x + j * (int64_t)nt) * P : 0;
#pragma unroll
        for (int j = 0; j < PPT; j++)
#pragma unroll
            for (int i = 0; i < P; i++)
                x[0][j][i] = a.res_f32 ? ((const float *)a.res)[e0[j] + i] : to_f32<T>(((const T *)a.res)[e0[j] + i]);
        if (a.add) {
#pragma unroll
            for (int j = 0; j < PPT; j++)
#pragma unroll
                for (int i = 0; i < P; i++)
                    x[0][j][i] = __fadd_rn(x[0][j][i], to_f32<T>(((const T *)a.add)[e0[j] + i]));
        }
#pragma unroll
        for (int j = 0; j < PPT; j++)
#pragma unroll
            for (int i = 0; i < P; i++) {
                x[0][j][i] = own[j] ? x[0][j][i] : 0.f;
                const float v = round_t<T>(x[0][j][i]);
                ss[0] = fmaf(v, v, ss[0]);
            }
        if (blockIdx.x == 0) {
#pragma unroll
            for (int j = 0; j < PPT; j++) {
                if (!own[j]) continue;
#pragma unroll
                for (int i = 0; i < P; i++) {
                    if (a.out_f32) ((float *)a.res_out)[e0[j] + i] = x[0][j][i];
                    else ((T *)a.res_out)[e0[j] + i] = from_f32<T>(x[0][j][i]);
                }
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < PPT; j++) {
            const int64_t e0 = (threadIdx.x + j * (int64_t)nt) * P;
#pragma unroll
            for (int m = 0; m < M; m++) {
#pragma unroll
                for (int i = 0; i < P; i++) {
                    x[m][j][i] = 0.f; // a pack past the row (the last threads) multiplies zero weights
                    if (!own[j]) continue;
                    const int64_t e = e0 + i;
                    float r = a.res_f32 ? ((const float *)a.res)[m * a.sres + e]
                                        : to_f32<T>(((const T *)a.res)[m * a.sres + e]);
                    if (a.add) r = __fadd_rn(r, to_f32<T>(((const T *)a.add)[m * a.sadd + e]));
                    if (blockIdx.x == 0) {
                        if (a.out_f32) ((float *)a.res_out)[m * a.sro + e] = r;
                        else ((T *)a.res_out)[m * a.sro + e] = from_f32<T>(r);
                    }
                    const float v = round_t<T>(r);
                    x[m][j][i] = v;
                    ss[m] = fmaf(v, v, ss[m]);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
        if (lane == 0) ssr[warp][m] = ss[m];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; m++) {
        float t = 0.f;
        for (int i = 0; i < nw; i++) t += ssr[i][m];
        const float sc = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(t, (float)H), a.eps)));
#pragma unroll
        for (int j = 0; j < PPT; j++)
#pragma unroll
            for (int i = 0; i < P; i++)
                x[m][j][i] = round_t<T>(__fmul_rn(NW_EARLY ? nwv[j][i] : norm_w_at(j, i),
                                                  round_t<T>(__fmul_rn(round_t<T>(x[m][j][i]), sc))));
    }

    // Epilogue inputs prefetched a group ahead at one row of x only: at M >= 2 the registers it costs would take a
    // resident block per SM.
    constexpr bool WARM = M == 1;
    const int wslot = !WARM || threadIdx.x >= RM ? -1 : a.state_idx ? a.state_idx[threadIdx.x % M * a.sidx] : 0;
    if (WARM && threadIdx.x < RM && g * RPB + threadIdx.x / M < N) warm<T>(a, g * RPB + threadIdx.x / M, wslot);
    for (int buf = 0; g < ngroups; g += gridDim.x, buf ^= 1) {
        if (g + gridDim.x < ngroups) load(g + gridDim.x, nxt); // in flight while this group is multiplied
        float acc[RPB][M];
#pragma unroll
        for (int r = 0; r < RPB; r++)
#pragma unroll
            for (int m = 0; m < M; m++) acc[r][m] = 0.f;
#pragma unroll
        for (int r = 0; r < RPB; r++)
#pragma unroll
            for (int j = 0; j < PPT; j++) {
                float wf[P];
                Pack16<T>::to_f32(cur[r][j], wf);
#pragma unroll
                for (int m = 0; m < M; m++)
#pragma unroll
                    for (int i = 0; i < P; i++) acc[r][m] = fmaf(wf[i], x[m][j][i], acc[r][m]);
            }
#pragma unroll
        for (int r = 0; r < RPB; r++)
#pragma unroll
            for (int m = 0; m < M; m++) {
                float v = acc[r][m];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == 0) red[buf][warp][r * M + m] = v;
            }
        __syncthreads(); // red[buf] complete; red[buf ^ 1] was last read before this barrier
        if (threadIdx.x < RM) {
            const int r = threadIdx.x / M, m = threadIdx.x % M;
            const int64_t row = g * RPB + r;
            if (row < N) {
                float s = 0.f;
                for (int i = 0; i < nw; i++) s += red[buf][i][threadIdx.x];
                if (a.bias) s = __fadd_rn(s, to_f32<T>(((const T *)a.bias)[row]));
                const T xz = from_f32<T>(s);
                if (row < a.lo || row >= a.lo + a.nc) { // not a conv row: the next column of z
                    ((T *)a.z)[m * a.sz + (row < a.lo ? row : row - a.nc)] = xz;
                } else {
                    const int64_t c = row - a.lo;
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
            const int64_t nrow = (g + gridDim.x) * RPB + r; // the next group's row: its inputs in flight meanwhile
            if (WARM && nrow < N) warm<T>(a, nrow, wslot);
        }
#pragma unroll
        for (int r = 0; r < RPB; r++)
#pragma unroll
            for (int j = 0; j < PPT; j++) cur[r][j] = nxt[r][j];
    }
}

template <typename T, int M, int PPT, int RPB>
ssmtp_status_t launch_p(const DecInArgs &a, int nt, int sms, cudaStream_t s, bool pdl) {
    auto kernel = decode_in_kernel<T, M, PPT, RPB>;
    const int64_t ngroups = (a.n + RPB - 1) / RPB;
    int64_t grid = (int64_t)ssm_blocks_per_sm((const void *)kernel, nt, 0) * sms;
    const char *env = getenv("SSMTP_DECODE_IN_BLOCKS"); // override (benchmarks)
    if (env && *env && atoi(env) > 0) grid = atoi(env);
    if (grid > ngroups) grid = ngroups;
    return ssmtp_launch(OP, kernel, dim3((unsigned)grid), dim3(nt), 0, s, pdl, a);
}

template <typename T, int M, int PPT>
ssmtp_status_t launch_r(const DecInArgs &a, int rpb, int nt, int sms, cudaStream_t s, bool pdl) {
    if (rpb == 8) return launch_p<T, M, PPT, 8>(a, nt, sms, s, pdl);
    if (rpb == 4) return launch_p<T, M, PPT, 4>(a, nt, sms, s, pdl);
    return launch_p<T, M, PPT, 2>(a, nt, sms, s, pdl);
}

template <typename T, int M>
ssmtp_status_t launch_m(const DecInArgs &a, int ppt, int rpb, int nt, int sms, cudaStream_t s, bool pdl) {
    if (ppt == 1) return launch_r<T, M, 1>(a, rpb, nt, sms, s, pdl);
    return launch_r<T, M, 2>(a, rpb, nt, sms, s, pdl);
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream) {
    const int64_t M = p->res.shape[0], H = p->res.shape[1], n = p->weight.shape[0];
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
    if (H * es > 1024 * 16)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": H=%lld (%lld-byte rows) on CUDA: at most 16 KiB rows",
                          (long long)H, (long long)(H * es));
    if (n == 0) return SSMTP_OK;
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
    a.n = n;
    a.lo = p->conv_lo;
    a.nc = p->conv_w.shape[0];
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

    const int64_t npk = H * es / 16;
    const int ppt = npk <= 512 ? 1 : 2;
    // Rows per group: 8 at one row of x, 4 at more. Measured on one H200 (mamba-2.8b CUDA-graph decode step, same run,
    // engine-h200-tp1-6e168e7-*.json): B=1 2.198 / 2.038 / 2.011 ms at 2 / 4 / 8 rows per group, B=2 2.437 / 2.292 /
    // 2.369 ms. Nsight Compute had shown the 2-row kernel at ~51% of the DRAM peak, stalled mostly on the per-group
    // barrier (benchmarks/results/ncu-h200-1f9f31c.json). SSMTP_DECODE_IN_RPB=2|4|8 overrides.
    const char *renv = getenv("SSMTP_DECODE_IN_RPB");
    const int rpb = renv && *renv ? atoi(renv) : (M == 1 ? 8 : 4);
    if (rpb != 2 && rpb != 4 && rpb != 8)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_DECODE_IN_RPB=%s (2, 4 or 8)", renv);
    const int nt = (int)(((npk + ppt - 1) / ppt + 31) / 32 * 32);
    cudaStream_t s = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(dev);
    SSMTP_DISPATCH_FLOAT(p->weight.dtype, T, OP, {
        switch (M) {
        case 1: return launch_m<T, 1>(a, ppt, rpb, nt, sms, s, pdl);
        case 2: return launch_m<T, 2>(a, ppt, rpb, nt, sms, s, pdl);
        case 3: return launch_m<T, 3>(a, ppt, rpb, nt, sms, s, pdl);
        default: return launch_m<T, 4>(a, ppt, rpb, nt, sms, s, pdl);
        }
    });
    return SSMTP_OK;
}
