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
// Measured and not kept: this kernel (as the decode step's x_proj) asking the same layer's out_proj weight (26 MB)
// into L2 with cp.async.bulk.prefetch.L2 (4 KiB pieces, a slice per block), for out_proj to read from L2 while HBM
// idles during the state update: mamba-2.8b graph step at B=1 2.300-2.305 ms issued after the PDL wait, 2.152-2.163
// before it, against 2.053-2.057 ms without (H200, 2026-11-24, interleaved runs; benchmarks/results/
// l2-prefetch-h200-ab.json); B = 2..64 slower by the same margins. The loaded memory system lengthens the latency-bound
// chain (x_proj -> state update) by more than out_proj gains.
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
#define LIN_STREAM_MIN_KN (1LL << 21) // weights above which auto takes the streaming tensor-core kernel (M > 8)

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

// One 32-k step of a warp's RT x NT fragment tile: the MMAs of the step's first 16 k (into lo) for every fragment,
// then those of its second 16 k (into hi). The MMAs are asm volatile, so they issue in source order: this order puts
// RT x NT independent MMAs between two that accumulate into the same registers (pairs written back to back waited
// out the MMA latency each time). lo and hi may be the same array; kernels with few fragments pass two (twice the
// independent chains) and add hi into lo at the end.
template <typename T, int RT, int NT>
__device__ __forceinline__ void tc_step(float (&lo)[RT][NT][4], float (&hi)[RT][NT][4], const uint4 (&a)[RT],
                                        const uint4 (&b)[RT], const uint4 (&xv)[NT]) {
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++) tc_mma<T>(lo[t][n], a[t].x, b[t].x, a[t].y, b[t].y, xv[n].x, xv[n].y);
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++) tc_mma<T>(hi[t][n], a[t].z, b[t].z, a[t].w, b[t].w, xv[n].z, xv[n].w);
}

// ldmatrix .x4: four 8x8 b16 matrices from shared memory (lane l gives the address of row l % 8 of matrix l / 8),
// each lane receiving its MMA fragment registers in order.
__device__ __forceinline__ uint4 ldsm_x4(const void *p) {
    uint4 v;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"((uint32_t)__cvta_generic_to_shared(p)));
    return v;
}

// tc_step for fragments as ldmatrix gives them: a[t][h] = the A registers of 16-row tile t at the step's k half h,
// xb[n] = the B registers of x tile n: (b0, b1) of the first half, then of the second.
template <typename T, int RT, int NT>
__device__ __forceinline__ void tc_step_lm(float (&lo)[RT][NT][4], float (&hi)[RT][NT][4], const uint4 (&a)[RT][2],
                                           const uint4 (&xb)[NT]) {
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++) tc_mma<T>(lo[t][n], a[t][0].x, a[t][0].y, a[t][0].z, a[t][0].w, xb[n].x, xb[n].y);
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++) tc_mma<T>(hi[t][n], a[t][1].x, a[t][1].y, a[t][1].z, a[t][1].w, xb[n].z, xb[n].w);
}

// lo += hi, element by element (the two halves of tc_step's chains, in a fixed order).
template <int RT, int NT> __device__ __forceinline__ void tc_fold(float (&lo)[RT][NT][4], const float (&hi)[RT][NT][4]) {
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) lo[t][n][e] += hi[t][n][e];
}

// The end of a tensor-core tile: each warp's accumulators (acc[t][n]: weight row r0 + 16 t + g, x rows m0 + 8 n +
// 2 t4 + {0, 1} in [0], [1]; weight row r0 + 16 t + g + 8 in [2], [3]; r0 = the warp's first row) into its slot of
// `sm` (8 warps x 16 RT rows x COLS floats, column-major per warp so that the output loop below reads and writes
// along weight rows), the WK warps of each row group summed in order, then the S blocks of the cluster (the K splits)
// summed in rank order through distributed shared memory; bias added, T written. Every sum has a fixed order.
template <typename T, int NT, int WR, int RT>
__device__ __forceinline__ void tc_finish(const float (&acc)[RT][NT][4], float *sm, const T *__restrict__ bias,
                                          T *__restrict__ out, int64_t so, int M, int N) {
    constexpr int WK = 8 / WR, COLS = 8 * NT, H = 16 * RT, SLOT = H * COLS, TILE = WR * SLOT;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t4 = lane & 3;
    float *mine = sm + warp * SLOT;
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int c = 8 * n + 2 * t4, r = 16 * t + g;
            mine[c * H + r] = acc[t][n][0];
            mine[(c + 1) * H + r] = acc[t][n][1];
            mine[c * H + r + 8] = acc[t][n][2];
            mine[(c + 1) * H + r + 8] = acc[t][n][3];
        }
    __syncthreads();
    if constexpr (WK > 1) { // the WK warps of each row group, in order, into the first (wk = 0) warp's slot
        for (int i = threadIdx.x; i < TILE; i += 256) {
            const int grp = i / SLOT, off = i % SLOT;
            float v = sm[grp * SLOT + off];
#pragma unroll
            for (int k = 1; k < WK; k++) v += sm[(k * WR + grp) * SLOT + off];
            sm[grp * SLOT + off] = v;
        }
    }
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); // every block's tile sum is in its shared memory
    // Four consecutive weight rows per thread and step (one float4 from each block: H is a multiple of 16), the S
    // blocks' loads issued together: the remote reads' latency is paid once per step, not once per value.
    const int S = gridDim.z, s = blockIdx.z, m0 = blockIdx.x * COLS;
    for (int i = (s * 256 + threadIdx.x) * 4; i < TILE; i += S * 256 * 4) {
        const int rr = i % (WR * H), c = i / (WR * H); // tile row (weight row r, fastest), column (x row m)
        const int r = blockIdx.y * WR * H + rr, m = m0 + c, at = (rr / H) * SLOT + c * H + rr % H;
        float4 part[8];
#pragma unroll
        for (int q = 0; q < 8; q++)
            if (q < S) part[q] = *reinterpret_cast<const float4 *>(cl.map_shared_rank(sm, q) + at);
        float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int q = 0; q < 8; q++)
            if (q < S) v[0] += part[q].x, v[1] += part[q].y, v[2] += part[q].z, v[3] += part[q].w;
        if (m < M) {
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (r + j < N) out[(int64_t)m * so + r + j] = from_f32<T>(bias ? v[j] + to_f32<T>(bias[r + j]) : v[j]);
        }
    }
    cl.sync(); // no block leaves while another reads its shared memory
}

// grid: (ceil(M / (8 NT)), ceil(N / (16 WR)), S), cluster (1, 1, S); block 256.
template <typename T, int NT, int WR>
__global__ void __launch_bounds__(256, NT <= 4 ? 2 : 1)
    linear_tc_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                     T *__restrict__ out, int64_t so, int M, int N, int K) {
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
    float acc[1][NT][4], acc2[1][NT][4]; // acc2: the second 16 k of each step (tc_step)
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[0][j][e] = acc2[0][j][e] = 0.f;
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
                const uint4 a[1] = {alo[u]}, b[1] = {ahi[u]};
                wload(q + TC_PD, u);
                uint4 xv[NT];
#pragma unroll
                for (int n = 0; n < NT; n++) xv[n] = xr[n] ? __ldg(xr[n] + 4 * j) : zero4;
                tc_step<T, 1, NT>(acc, acc2, a, b, xv);
            }
        }
    }
    tc_fold(acc, acc2);
    tc_finish<T, NT, WR, 1>(acc, tc_sm, bias, out, so, M, N);
#else
    __trap();
#endif
}

// Launch `kern` (256 threads per block, clusters of the grid's z extent, PDL when asked) with `args`.
template <typename... P, typename... A>
ssmtp_status_t launch_cluster(void (*kern)(P...), dim3 grid, int smem, bool pdl, cudaStream_t s, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(256);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = grid.z;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 2 : 1;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kern, args...);
    (void)cudaGetLastError();
    if (e != cudaSuccess) return ssmtp_fail(SSMTP_ERR_CUDA, OP ": tensor-core kernel launch: %s", cudaGetErrorString(e));
    return SSMTP_OK;
}

template <typename T, int NT, int WR>
ssmtp_status_t launch_tc(const ssmtp_linear_params_t *p, int S, bool pdl, cudaStream_t s) {
    const int M = (int)p->x.shape[0], N = (int)p->weight.shape[0], K = (int)p->x.shape[1];
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    return launch_cluster(linear_tc_kernel<T, NT, WR>,
                          dim3((unsigned)((M + 8 * NT - 1) / (8 * NT)), (unsigned)((N + 16 * WR - 1) / (16 * WR)),
                               (unsigned)S),
                          8 * 16 * 8 * NT * 4, pdl, s, x, (int64_t)p->x.stride[0], w, b, (T *)p->out.data,
                          (int64_t)p->out.stride[0], M, N, K);
}

// ------------------------------------------------------------------------------------------------------------
// Weight-streaming tensor-core kernel for wide products (in_proj, out_proj) at 9..256 rows of x. Same MMA fragments
// as linear_tc_kernel, but both operands reach the warps through a ring of ST shared-memory stages filled by cp.async
// (per stage: BN = 16 RT WR weight rows and the COLS = 8 NT rows of x, BK k each, 16-byte chunks), so (ST - 1)
// stages per block are in flight without holding registers, and x is read from L2 once per block instead of once
// per warp (the register-fed kernel re-read it per 16 weight rows: 4x the weight bytes at 64 rows). A warp owns RT
// 16-row tiles, so each x fragment it loads feeds RT MMAs. A stage row's 16-byte chunks are XOR-swizzled by the
// row's parity (chunk c of row r at c ^ 4 (r & 1)): the 8 lanes of a shared-memory phase (two rows, four chunks)
// hit distinct banks. Grid (ceil(M / COLS), ceil(N / BN), S), clusters of the S K-splits of a tile, summed in rank
// order (tc_finish). The weight part of the first ST - 1 stages is issued before the PDL wait, x after it.
template <typename T, int NT, int WR, int RT, int BK, int ST>
__global__ void __launch_bounds__(256, RT * NT <= 4 ? 2 : 1)
    linear_stream_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                         T *__restrict__ out, int64_t so, int M, int N, int K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int WK = 8 / WR, BN = 16 * RT * WR, COLS = 8 * NT, CH = BK / 8, QS = BK / 32;
    constexpr int SW = BN * BK, STAGE = (BN + COLS) * BK; // elements: weights, then x
    static_assert(QS % WK == 0, "stage shape");
    extern __shared__ __align__(16) unsigned char st_raw[];
    T *ring = reinterpret_cast<T *>(st_raw);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = warp % WR, wk = warp / WR;
    const int tr0 = blockIdx.y * BN, m0 = blockIdx.x * COLS;
    const int nkb = K / BK, S = gridDim.z, s = blockIdx.z;
    const int beg = (int)((int64_t)nkb * s / S), cnt = (int)((int64_t)nkb * (s + 1) / S) - beg;
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
    // rows [0, rows) of a (rows x K) matrix at p (row stride ld), from row r0, k block kb, into dst (BK per row)
    auto load = [&](T *dst, const T *p, int64_t ld, int r0, int rows, int lim, int kb) {
        for (int c = threadIdx.x; c < rows * CH; c += 256) {
            const int row = c / CH, ch = c % CH;
            T *d = dst + row * BK + ((ch ^ (row & 7)) * 8);
            if (r0 + row < lim) ssm_cp16(d, p + (int64_t)(r0 + row) * ld + (int64_t)kb * BK + ch * 8);
            else *reinterpret_cast<uint4 *>(d) = zero4;
        }
    };
    ssm_pdl_trigger();
    // Prologue: every slot's stage (weights before the PDL wait, x after it, as one more group).
#pragma unroll
    for (int i = 0; i < ST; i++) {
        if (i < cnt) load(ring + i * STAGE, w, K, tr0, BN, N, beg + i);
        ssm_cp_commit();
    }
    ssm_pdl_wait();
#pragma unroll
    for (int i = 0; i < ST; i++)
        if (i < cnt) load(ring + i * STAGE + SW, x, sx, m0, COLS, M, beg + i);
    ssm_cp_commit();
    constexpr bool DUAL = RT * NT <= 4; // few fragments: a second accumulator set for the steps' second halves
    float acc[RT][NT][4], acc2[DUAL ? RT : 1][NT][4];
#pragma unroll
    for (int t = 0; t < RT; t++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[t][j][e] = 0.f, acc2[DUAL ? t : 0][j][e] = 0.f;
    // A warp's 32-k steps, flat: step j is its (j % SPS)-th of stage j / SPS. Each step's fragments are loaded one
    // step ahead (registers double-buffered), so their shared-memory latency hides behind the previous step's MMAs.
    // Entering stage c (c >= 1): its data landed (wait + barrier); every warp has issued all its reads of stage c - 1
    // (the last ones one step ahead, before this barrier), so stage c - 1's slot takes stage c - 1 + ST.
    constexpr int SPS = QS / WK;
    auto frags = [&](int j, uint4 (&a)[RT][2], uint4 (&xb)[NT]) {
        const T *st = ring + ((j / SPS) % ST) * STAGE;
        const int c0 = ((j % SPS) * WK + wk) * 4; // the step's first 16-byte chunk within the stage's rows
#pragma unroll
        for (int t = 0; t < RT; t++) {
            const int r = (wr * RT + t) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int h = 0; h < 2; h++) a[t][h] = ldsm_x4(st + r * BK + (((c0 + 2 * h + (lane >> 4)) ^ (r & 7)) * 8));
        }
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int r = 8 * n + (lane & 7);
            xb[n] = ldsm_x4(st + SW + r * BK + (((c0 + (lane >> 3)) ^ (r & 7)) * 8));
        }
    };
    const int steps = cnt * SPS;
    uint4 a0[RT][2], x0[NT], a1[RT][2], x1[NT];
    auto boundary = [&](int c) { // before the first read of stage c
        if (c > 0) {
            ssm_cp_wait<ST - 2>(); // stage c's group (stages below ST came with the prologue, waited for at c = 0)
            __syncthreads();
            if (c - 1 + ST < cnt) {
                T *d = ring + ((c - 1) % ST) * STAGE;
                load(d, w, K, tr0, BN, N, beg + c - 1 + ST);
                load(d + SW, x, sx, m0, COLS, M, beg + c - 1 + ST);
            }
            ssm_cp_commit();
        } else {
            ssm_cp_wait<0>();
            __syncthreads();
        }
    };
    auto mma = [&](const uint4 (&a)[RT][2], const uint4 (&xb)[NT]) {
        if constexpr (DUAL) tc_step_lm<T, RT, NT>(acc, reinterpret_cast<float(&)[RT][NT][4]>(acc2), a, xb);
        else tc_step_lm<T, RT, NT>(acc, acc, a, xb);
    };
    if (steps > 0) {
        boundary(0);
        frags(0, a0, x0);
    }
    for (int j = 0; j < steps; j += 2) { // two steps per trip: the fragment buffers swap roles without copies
        if (j + 1 < steps) {
            if ((j + 1) % SPS == 0) boundary((j + 1) / SPS);
            frags(j + 1, a1, x1);
        }
        mma(a0, x0);
        if (j + 1 >= steps) break;
        if (j + 2 < steps) {
            if ((j + 2) % SPS == 0) boundary((j + 2) / SPS);
            frags(j + 2, a0, x0);
        }
        mma(a1, x1);
    }
    ssm_cp_wait<0>();
    __syncthreads(); // the ring is free: tc_finish reuses it
    if constexpr (DUAL) tc_fold(acc, reinterpret_cast<float(&)[RT][NT][4]>(acc2));
    tc_finish<T, NT, WR, RT>(acc, reinterpret_cast<float *>(st_raw), bias, out, so, M, N);
#else
    __trap();
#endif
}

template <typename T, int NT, int WR, int RT, int BK>
ssmtp_status_t launch_stream(const ssmtp_linear_params_t *p, int S, int dev, bool pdl, cudaStream_t s) {
    // ring: ~96 KB where two blocks fit an SM (launch bounds), ~180 KB otherwise
    constexpr int STAGE_BYTES = (16 * RT * WR + 8 * NT) * BK * (int)sizeof(T), RING = (RT * NT <= 4 ? 96 : 180) * 1024;
    constexpr int ST0 = RING / STAGE_BYTES < 8 ? RING / STAGE_BYTES : 8, ST = ST0 < 3 ? 3 : ST0;
    const int M = (int)p->x.shape[0], N = (int)p->weight.shape[0], K = (int)p->x.shape[1];
    const auto kern = linear_stream_kernel<T, NT, WR, RT, BK, ST>;
    const int tile = 8 * 16 * RT * 8 * NT * 4, ring = ST * STAGE_BYTES;
    const int smem = ring > tile ? ring : tile;
    SSMTP_TRY(ssm_allow_smem((const void *)kern, (size_t)smem, dev));
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    return launch_cluster(kern,
                          dim3((unsigned)((M + 8 * NT - 1) / (8 * NT)), (unsigned)((N + 16 * RT * WR - 1) / (16 * RT * WR)),
                               (unsigned)S),
                          smem, pdl, s, x, (int64_t)p->x.stride[0], w, b, (T *)p->out.data, (int64_t)p->out.stride[0],
                          M, N, K);
}

// The streaming kernel's shape: WR = 8 warps along the weight rows, RT = 1 (16 rows each), BK = 64, and S = the K
// splits that bring the grid closest to one block per SM without exceeding it (<= 8, the portable cluster size).
// SSMTP_LINEAR_STREAM="WR,RT,BK,S" fixes them (WR 4 or 8, RT 1 or 2, BK 64 or 128, S 1..8; benchmarks and tests).
template <typename T>
ssmtp_status_t dispatch_stream(const ssmtp_linear_params_t *p, int sms, int dev, bool pdl, cudaStream_t s) {
    const int64_t M = p->x.shape[0], N = p->weight.shape[0], K = p->x.shape[1];
    const int nt = M <= 16 ? 2 : M <= 32 ? 4 : 8;
    int wr = 8, rt = 1, bk = 64, S = 0;
    const char *env = getenv("SSMTP_LINEAR_STREAM");
    if (env && *env) {
        if (sscanf(env, "%d,%d,%d,%d", &wr, &rt, &bk, &S) != 4 || (wr != 4 && wr != 8) || (rt != 1 && rt != 2) ||
            (bk != 64 && bk != 128) || (wr * rt == 16 && bk != 64) || S < 1 || S > 8)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_LINEAR_STREAM=%s (WR,RT,BK,S: WR 4 or 8, RT 1 or 2, BK "
                              "64 or 128 (64 at WR x RT = 16), S 1..8)", env);
    }
    if (K % bk)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": the streaming kernel takes K a multiple of %d, got %lld", bk,
                          (long long)K);
    if (!S) {
        const int64_t tiles = ((M + 8 * nt - 1) / (8 * nt)) * ((N + 16 * rt * wr - 1) / (16 * rt * wr));
        S = (int)(sms / tiles);
        if (S > 8) S = 8;
        if (S < 1) S = 1;
    }
    if (S > K / bk) S = (int)(K / bk);
#define ST_BK(NT_, WR_, RT_)                                                                                        \
    return bk == 64 ? launch_stream<T, NT_, WR_, RT_, 64>(p, S, dev, pdl, s)                                        \
                    : launch_stream<T, NT_, WR_, RT_, 128>(p, S, dev, pdl, s);
#define ST_WR(NT_)                                                                                                  \
    {                                                                                                               \
        if (wr == 4 && rt == 1) ST_BK(NT_, 4, 1)                                                                    \
        if (wr == 4) ST_BK(NT_, 4, 2)                                                                               \
        if (rt == 1) ST_BK(NT_, 8, 1)                                                                               \
        return launch_stream<T, NT_, 8, 2, 64>(p, S, dev, pdl, s);                                                  \
    }
    if (nt == 2) ST_WR(2)
    if (nt == 4) ST_WR(4)
    ST_WR(8)
#undef ST_WR
#undef ST_BK
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
    // Kernel (SSMTP_LINEAR_KERNEL): auto = the GEMV up to SSMTP_LINEAR_SMALL_MAX_M rows, a tensor-core kernel above
    // (the weight-streaming one for products of more than LIN_STREAM_MIN_KN weights with K a multiple of 64, the
    // register-fed one otherwise); gemv / tc / stream force one (tests, benchmarks); anything else is an error.
    const char *kenv = getenv("SSMTP_LINEAR_KERNEL");
    int kind = 0; // 0 auto, 1 gemv, 2 tc, 3 stream
    if (kenv && *kenv && strcmp(kenv, "auto") != 0) {
        if (strcmp(kenv, "gemv") == 0) kind = 1;
        else if (strcmp(kenv, "tc") == 0) kind = 2;
        else if (strcmp(kenv, "stream") == 0) kind = 3;
        else return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: SSMTP_LINEAR_KERNEL=%s (auto, gemv, tc or stream)", op, kenv);
    }
    const bool tc = kind >= 2 || (kind == 0 && M > SSMTP_LINEAR_SMALL_MAX_M);
    const bool wide = kind == 3 || (kind == 0 && tc && N * K > LIN_STREAM_MIN_KN && K % 64 == 0);
    if (tc) {
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
    if (wide) {
        if (p->x.dtype == SSMTP_DTYPE_BF16)
            err = dispatch_stream<__nv_bfloat16>(p, sms, dev, pdl, s);
        else
            err = dispatch_stream<__half>(p, sms, dev, pdl, s);
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
