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
// How much goes before the wait was measured in the decode step (mamba-2.8b graph step, one H200, 2026-11-25, runs
// interleaved; benchmarks/results/decode-pdl-order-h200-not-kept.json): out_proj with no packs before its wait made B=1
// 0.03 ms slower, with 2 instead of 4 the same at B=1 and 0.03-0.04 ms slower at B=2; x_proj letting the state update
// launch only after its products (so that the update's preloads did not compete with them) 0.11 ms slower.
// Measured and not kept: this kernel (as the decode step's x_proj) asking the same layer's out_proj weight (26 MB)
// into L2 with cp.async.bulk.prefetch.L2 (4 KiB pieces, a slice per block), for out_proj to read from L2 while HBM
// idles during the state update: mamba-2.8b graph step at B=1 2.300-2.305 ms issued after the PDL wait, 2.152-2.163
// before it, against 2.053-2.057 ms without (H200, 2026-11-24, interleaved runs; benchmarks/results/
// l2-prefetch-h200-ab.json); B = 2..64 slower by the same margins. The loaded memory system lengthens the latency-bound
// chain (x_proj -> state update) by more than out_proj gains.
// Also measured and not kept (2026-11-24, H200, benchmarks/results/linear-stream-h200-3108276.json; the code is in
// 3108276): a tensor-core kernel for the wide products (in_proj, out_proj) at 9..256 rows, weights and x streamed
// through cp.async shared-memory stages, ldmatrix fragments, mma.sync: within a few percent of cuBLAS at 16 rows and
// 1.2-2.2x slower at 32-64 rows (the MMA instruction stream, not memory, was the limit); cuBLAS (wgmma) stays for them.
#include "common.cuh"

#include <cooperative_groups.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include <nvtx3/nvToolsExt.h>

#define OP "linear_small"
#define LIN_THREADS 256
#define LIN_WARPS (LIN_THREADS / 32)
#define LIN_UNROLL 4

namespace {

// out[i] = s rounded to T, stored as T, or widened to fp32 when out_f32 (ssmtp.h: the logits of a decode step)
template <typename T> __device__ __forceinline__ void store_out(void *out, int64_t i, float s, int out_f32) {
    const T v = from_f32<T>(s);
    if (out_f32) ((float *)out)[i] = to_f32<T>(v);
    else ((T *)out)[i] = v;
}

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

// The last packs of a lane's row (fewer than LIN_UNROLL: k + (LIN_UNROLL - 1) step >= npk). At one row of x they are
// loaded together into wv (free by then) and then used: one memory round trip. As a loop of single packs each load
// waited for the previous pack's products (in-order issue): at batch 1, out_proj's two-pack tail (mamba-2.8b, 10
// packs per lane) took two round trips after the main loop's last one. At more rows the loop stays: holding wv there
// took 48 -> 60 registers, a resident block per SM less, which changes the launcher's one-wave choice.
template <typename T, int M>
__device__ __forceinline__ void tail_packs(const uint4 *wr, int64_t k, int64_t npk, int64_t step,
                                           uint4 (&wv)[LIN_UNROLL], const T *x, int64_t sx, float (&acc)[M]) {
    if constexpr (M == 1) {
#pragma unroll
        for (int u = 0; u < LIN_UNROLL - 1; u++)
            if (k + u * step < npk) wv[u] = ld_stream(wr + k + u * step);
#pragma unroll
        for (int u = 0; u < LIN_UNROLL - 1; u++)
            if (k + u * step < npk) fma_pack<T, M>(wv[u], x, sx, k + u * step, acc);
    } else {
        for (; k < npk; k += step) fma_pack<T, M>(ld_stream(wr + k), x, sx, k, acc);
    }
}

template <typename T, int M, int KS>
__global__ void __launch_bounds__(LIN_THREADS)
    linear_small_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                        void *__restrict__ out, int64_t so, int out_f32, int64_t N, int64_t K) {
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
            uint4 wv[LIN_UNROLL];
            for (; k + (LIN_UNROLL - 1) * step < npk; k += LIN_UNROLL * step) {
#pragma unroll
                for (int u = 0; u < LIN_UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
#pragma unroll
                for (int u = 0; u < LIN_UNROLL; u++) fma_pack<T, M>(wv[u], x, sx, k + u * step, acc);
            }
            tail_packs<T, M>(wr, k, npk, step, wv, x, sx, acc);
        }
    } else {
        // The first LIN_UNROLL weight packs are in flight before the wait (no earlier kernel writes weights); each
        // iteration then consumes its packs and issues the next ones. At M = 1 a lane with fewer packs than that in
        // all (short rows split over many warps: x_proj, 2-3 packs per lane) loads the ones it has before the wait
        // too, and uses them in the order the tail loop would (the same sums). Measured (mamba-2.8b decode graph
        // step, same runs): x_proj 2.4 -> 1.6 us at M = 1 (H200); at M = 2 the step was 1% slower with it (H200 and
        // H100), so M >= 2 loads after the wait as before.
        const uint4 *wr = row < N ? reinterpret_cast<const uint4 *>(w + row * K) : nullptr;
        int64_t k = kw * 32 + lane;
        bool more = row < N && k + (LIN_UNROLL - 1) * step < npk;
        uint4 wv[LIN_UNROLL];
        if (more) {
#pragma unroll
            for (int u = 0; u < LIN_UNROLL; u++) wv[u] = ld_stream(wr + k + u * step);
        } else if (M == 1 && row < N) {
#pragma unroll
            for (int u = 0; u < LIN_UNROLL - 1; u++)
                if (k + u * step < npk) wv[u] = ld_stream(wr + k + u * step);
        }
        ssm_pdl_wait();
        if (M == 1 && row < N && !more) {
#pragma unroll
            for (int u = 0; u < LIN_UNROLL - 1; u++)
                if (k + u * step < npk) fma_pack<T, M>(wv[u], x, sx, k + u * step, acc);
            k += (LIN_UNROLL - 1) * step; // past the packs just used (at most LIN_UNROLL - 1 of them exist)
        }
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
            tail_packs<T, M>(wr, k, npk, step, wv, x, sx, acc);
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
        store_out<T>(out, lane * so + row, s, out_f32);
    }
}

template <typename T, int M, int KS>
static ssmtp_status_t launch_ks(const ssmtp_linear_params_t *p, bool pdl, cudaStream_t s) {
    const int64_t N = p->weight.shape[0], K = p->x.shape[1];
    const unsigned grid = (unsigned)((N + LIN_WARPS / KS - 1) / (LIN_WARPS / KS));
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    void *o = p->out.data;
    const int64_t sx = p->x.stride[0], so = p->out.stride[0];
    const int of32 = p->out.dtype != p->x.dtype;
    return ssmtp_launch(OP, linear_small_kernel<T, M, KS>, grid, LIN_THREADS, 0, s, pdl, x, sx, w, b, o, so, of32, N,
                        K);
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

// ============================================================================================================
// Tensor-core path for 8 < M <= SSMTP_LINEAR_TC_MAX_M rows (16-bit types, sm_90): the decode step's projections at
// batch 9..256, where cuBLAS ran split-K GEMMs at 50-57% of the weight-read floor for out_proj (5120 -> 2560) and
// ~7% for x_proj (5120 -> 192) plus a reduction kernel each (H200, 2026-11-24, benchmarks/results/gemm-*-h200-*).
// mma.sync m16n8k16 with the weight rows as the MMA's M side and the rows of x as its N side: a warp owns 16 weight
// rows x 8 NT rows of x; each lane loads 16 bytes (8 consecutive k) of its two weight rows and of each x row straight
// into registers, and the MMA's k order is permuted the same way for both operands (lane t4's k pairs 2 t4, 2 t4 + 8
// hold k 8 t4 + {0, 1} and 8 t4 + {2, 3} in the first MMA, + {4, 5} and + {6, 7} in the second), so a 32-k step is
// two MMAs, no shared memory and no shuffles. Weights stream 16-byte loads PD steps ahead (bypassing L1); x rows come
// from L1 (every warp of a block reads the same rows).
// Work split: block = 8 warps = WR row groups x WK = 8 / WR k groups; grid (x-row blocks, weight-row blocks, S
// splits of K); the S blocks of one output tile form a thread-block cluster and sum their partials through
// distributed shared memory in a fixed order (deterministic, no workspace, graph-capturable), after the WK warps of
// each block summed theirs in shared memory.
namespace {

constexpr int TC_PD = 4; // 32-k steps of weights in flight per warp
// (x is loaded per step, next to its MMAs. Loading it 2-4 steps ahead instead, 236 registers at 64 rows per block:
// x_proj 4.71 vs 5.02 us at 16 rows, 5.85 vs 5.66 at 32, 6.58 vs 6.14 at 64, the B=64 decode step 0.025 ms slower;
// H200, 2026-11-25, benchmarks/results/gemm-decode-batch-h200-not-kept.json.)

// c += a b, one m16n8k16 MMA of T (bf16 or f16) with fp32 accumulation.
#define TC_MMA(TY)                                                                                                  \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "  \
                 "{%0,%1,%2,%3};"                                                                                   \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                                   \
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
template <typename T>
__device__ __forceinline__ void tc_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) TC_MMA("bf16");
    else TC_MMA("f16");
}
#undef TC_MMA

// grid: (ceil(M / (8 NT)), ceil(N / (16 WR)), S), cluster (1, 1, S); block 256.
template <typename T, int NT, int WR>
__global__ void __launch_bounds__(256, NT <= 4 ? 2 : 1)
    linear_tc_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                     void *__restrict__ out, int64_t so, int out_f32, int M, int N, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int WK = 8 / WR, COLS = 8 * NT;
    extern __shared__ __align__(16) float tc_sm[]; // [8 warps][16 rows][COLS]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t4 = lane & 3;
    const int wr = warp % WR, wk = warp / WR;
    const int r0 = (blockIdx.y * WR + wr) * 16, m0 = blockIdx.x * COLS;
    const int S = gridDim.z, s = blockIdx.z;
    const int steps = K / 32, beg = (int)((int64_t)steps * s / S), end = (int)((int64_t)steps * (s + 1) / S);
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
    const uint4 *wlo = r0 + g < N ? reinterpret_cast<const uint4 *>(w + (int64_t)(r0 + g) * K) + t4 : nullptr;
    const uint4 *whi = r0 + g + 8 < N ? reinterpret_cast<const uint4 *>(w + (int64_t)(r0 + g + 8) * K) + t4 : nullptr;
    const uint4 *xr[NT];
#pragma unroll
    for (int j = 0; j < NT; j++)
        xr[j] = m0 + 8 * j + g < M ? reinterpret_cast<const uint4 *>(x + (int64_t)(m0 + 8 * j + g) * sx) + t4 : nullptr;
    ssm_pdl_trigger();
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    // this warp's steps: beg + wk, beg + wk + WK, ...; weights PD steps ahead (loaded before the PDL wait: no
    // earlier kernel writes them)
    uint4 alo[TC_PD], ahi[TC_PD];
    auto wload = [&](int q, int u) {
        const int j = beg + wk + q * WK;
        const bool ok = j < end;
        alo[u] = (ok && wlo) ? ld_stream(wlo + 4 * j) : zero4;
        ahi[u] = (ok && whi) ? ld_stream(whi + 4 * j) : zero4;
    };
#pragma unroll
    for (int u = 0; u < TC_PD; u++) wload(u, u);
    ssm_pdl_wait();
    const int nq = end - beg - wk > 0 ? (end - beg - wk + WK - 1) / WK : 0; // this warp's step count
    for (int q0 = 0; q0 < nq; q0 += TC_PD) {
#pragma unroll
        for (int u = 0; u < TC_PD; u++) {
            const int q = q0 + u;
            if (q < nq) {
                const int j = beg + wk + q * WK;
                const uint4 a = alo[u], b = ahi[u];
                wload(q + TC_PD, u);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const uint4 xv = xr[n] ? __ldg(xr[n] + 4 * j) : zero4;
                    tc_mma<T>(acc[n], a.x, b.x, a.y, b.y, xv.x, xv.y);
                    tc_mma<T>(acc[n], a.z, b.z, a.w, b.w, xv.z, xv.w);
                }
            }
        }
    }
    // acc[n]: (weight row r0 + g, x rows m0 + 8 n + 2 t4 + {0, 1}) in [0], [1]; weight row r0 + g + 8 in [2], [3]
    float *mine = tc_sm + warp * 16 * COLS;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int c = 8 * n + 2 * t4;
        mine[g * COLS + c] = acc[n][0];
        mine[g * COLS + c + 1] = acc[n][1];
        mine[(g + 8) * COLS + c] = acc[n][2];
        mine[(g + 8) * COLS + c + 1] = acc[n][3];
    }
    __syncthreads();
    // the WK warps of each row group, in order, into the first (wk = 0) warp's slot
    constexpr int TILE = WR * 16 * COLS;
    for (int i = threadIdx.x; i < TILE; i += 256) {
        const int grp = i / (16 * COLS), off = i % (16 * COLS);
        float v = tc_sm[grp * 16 * COLS + off];
#pragma unroll
        for (int k = 1; k < WK; k++) v += tc_sm[(k * WR + grp) * 16 * COLS + off];
        tc_sm[grp * 16 * COLS + off] = v;
    }
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); // every block's tile sum is in its shared memory
    for (int i = s * 256 + threadIdx.x; i < TILE; i += S * 256) {
        const int rr = i / COLS, c = i % COLS; // tile row (weight row r), column (x row m)
        const int r = blockIdx.y * WR * 16 + rr, m = m0 + c;
        float v = 0.f;
        for (int q = 0; q < S; q++) v += cl.map_shared_rank(tc_sm, q)[i];
        if (r < N && m < M) {
            if (bias) v += to_f32<T>(bias[r]);
            store_out<T>(out, (int64_t)m * so + r, v, out_f32);
        }
    }
    cl.sync(); // no block leaves while another reads its shared memory
#else
    __trap();
#endif
}

template <typename T, int NT, int WR>
ssmtp_status_t launch_tc(const ssmtp_linear_params_t *p, int S, bool pdl, cudaStream_t s) {
    const int M = (int)p->x.shape[0], N = (int)p->weight.shape[0], K = (int)p->x.shape[1];
    const auto kern = linear_tc_kernel<T, NT, WR>;
    const int smem = 8 * 16 * 8 * NT * 4;
    const dim3 grid((unsigned)((M + 8 * NT - 1) / (8 * NT)), (unsigned)((N + 16 * WR - 1) / (16 * WR)), (unsigned)S);
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    return ssmtp_launch_cluster(OP " (tensor-core kernel)", kern, grid, dim3(256), smem, s, pdl, (unsigned)S, x,
                                (int64_t)p->x.stride[0], w, b, p->out.data, (int64_t)p->out.stride[0],
                                (int)(p->out.dtype != p->x.dtype), M, N, K);
}

// Shape of the launch. NT: x rows per block / 8 (2, 4 or 8). WR: weight-row groups of 16 per block, 8 for wide
// outputs, fewer for narrow ones (whose k is then split over the block's warps). S: K splits (the cluster size, <= 8)
// for about two blocks per SM. SSMTP_LINEAR_TC_SPLITS fixes S (tests). (Choosing WR and S to fill the resident block
// slots exactly instead measured slower on out_proj-like shapes and no different on x_proj-like ones.)
template <typename T> ssmtp_status_t dispatch_tc(const ssmtp_linear_params_t *p, int sms, bool pdl, cudaStream_t s) {
    const int64_t M = p->x.shape[0], N = p->weight.shape[0], K = p->x.shape[1];
    const int nt = M <= 16 ? 2 : M <= 32 ? 4 : 8;
    const int64_t rt = (N + 15) / 16; // 16-row groups
    const int wr = rt >= 64 ? 8 : rt >= 32 ? 4 : rt >= 16 ? 2 : 1;
    const int64_t tiles = ((M + 8 * nt - 1) / (8 * nt)) * ((rt + wr - 1) / wr);
    int S = (int)((2 * sms + tiles - 1) / tiles);
    if (S > 8) S = 8;
    if (S > K / 32) S = (int)(K / 32);
    if (S < 1) S = 1;
    const char *env = getenv("SSMTP_LINEAR_TC_SPLITS");
    if (env && *env) {
        S = atoi(env);
        if (S < 1 || S > 8) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_LINEAR_TC_SPLITS=%s (1..8)", env);
    }
#define TC_WR(NT_)                                                                                                  \
    switch (wr) {                                                                                                   \
    case 1: return launch_tc<T, NT_, 1>(p, S, pdl, s);                                                              \
    case 2: return launch_tc<T, NT_, 2>(p, S, pdl, s);                                                              \
    case 4: return launch_tc<T, NT_, 4>(p, S, pdl, s);                                                              \
    default: return launch_tc<T, NT_, 8>(p, S, pdl, s);                                                             \
    }
    if (nt == 2) TC_WR(2)
    if (nt == 4) TC_WR(4)
    TC_WR(8)
#undef TC_WR
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_linear_small(const ssmtp_linear_params_t *p, void *stream) {
    const char *op = OP;
    const int64_t M = p->x.shape[0], K = p->x.shape[1], N = p->weight.shape[0];
    const int64_t es = (int64_t)ssmtp_dtype_size(p->x.dtype);
    // Kernel (SSMTP_LINEAR_KERNEL): auto (below); gemv / tc / wg force one (tests, benchmarks); anything else is an
    // error.
    const char *kenv = getenv("SSMTP_LINEAR_KERNEL");
    int kind = 0; // 0 auto, 1 gemv, 2 tc, 3 wg
    if (kenv && *kenv && strcmp(kenv, "auto") != 0) {
        if (strcmp(kenv, "gemv") == 0) kind = 1;
        else if (strcmp(kenv, "tc") == 0) kind = 2;
        else if (strcmp(kenv, "wg") == 0) kind = 3;
        else return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: SSMTP_LINEAR_KERNEL=%s (auto, gemv, tc or wg)", op, kenv);
    }
    // auto: 16-bit products of the shapes the warpgroup-MMA kernel measured faster on (ssmtp.h) there where it is
    // built (linear_wg.cu), else the GEMV up to SSMTP_LINEAR_SMALL_MAX_M rows and the tensor-core kernel above
    const bool wg_auto = N <= SSMTP_LINEAR_WG_MIN_N
                             ? M >= SSMTP_LINEAR_WG_NARROW_MIN_M && M <= SSMTP_LINEAR_WG_NARROW_MAX_M
                             : N <= SSMTP_LINEAR_WG_MAX_N && M >= SSMTP_LINEAR_WG_MIN_M &&
                                   M <= (N <= K ? SSMTP_LINEAR_WG_AUTO_M : SSMTP_LINEAR_WG_AUTO_WIDE_M);
    const bool wg = kind == 3 || (kind == 0 && ssmtp_linear_wg_built() && es == 2 && wg_auto);
    const bool tc = !wg && (kind == 2 || (kind == 0 && M > SSMTP_LINEAR_SMALL_MAX_M));
    if (wg) {
        if (M < 1 || M > SSMTP_LINEAR_WG_MAX_M || es != 2)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: M=%lld rows of %s x on CUDA: the warpgroup-MMA kernel takes "
                              "1..%d rows of 16-bit x", op, (long long)M, ssmtp_dtype_name(p->x.dtype),
                              SSMTP_LINEAR_WG_MAX_M);
    } else if (tc) {
        if (M < 1 || M > SSMTP_LINEAR_TC_MAX_M || es != 2 || K % 32 || N > 0x7fffffff || K > 0x7fffffff)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: M=%lld rows of x, K=%lld on CUDA: the tensor-core kernel takes "
                              "1..%d rows of 16-bit x with K a multiple of 32", op, (long long)M, (long long)K,
                              SSMTP_LINEAR_TC_MAX_M);
    } else if (M < 1 || M > SSMTP_LINEAR_SMALL_MAX_M) {
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: M=%lld rows of x on CUDA, supported 1..%d", op, (long long)M,
                          SSMTP_LINEAR_SMALL_MAX_M);
    }
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
    if (tc) {
        int major = 0;
        SSMTP_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        if (major < 9)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: the tensor-core kernel needs compute capability 9.0", op);
    }
    nvtxRangePushA("ssmtp::linear_small");
    if (wg) {
        err = ssmtp_cuda_linear_wg(p, sms, pdl, s);
        nvtxRangePop();
        return err;
    }
    if (tc) {
        if (p->x.dtype == SSMTP_DTYPE_BF16)
            err = dispatch_tc<__nv_bfloat16>(p, sms, pdl, s);
        else
            err = dispatch_tc<__half>(p, sms, pdl, s);
        nvtxRangePop();
        return err;
    }
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
