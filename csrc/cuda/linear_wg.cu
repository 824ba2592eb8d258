// linear_wg.cu - the decode step's projections at a few rows (in_proj, out_proj, dt_proj at 3..32, x_proj at 8..64;
// ssmtp/ops.py wg_wins) on Hopper's warpgroup MMA:
// out (M, N) = x (M, K) W (N, K)^T (+ bias), 16-bit x and W, fp32 accumulation, one rounding to x's dtype (or that
// value widened to fp32). Compiled for sm_90a only (wgmma is an sm_90a instruction; setup.py builds this file with
// its own -gencode); elsewhere the kernels trap and the launcher reports the product unsupported.
//
// Why: at 4..128 rows a decode step's in_proj and out_proj are weight streams (mamba-2.8b: 52 and 26 MB per layer
// against < 2.6 MB of x and out), but cuBLAS reads them at 50-80% of the copy rate (H200, 2026-11-24: out_proj
// 5120 -> 2560 11.5-12.5 us for a 6.15 us floor at 4-64 rows, in_proj 15.4-16.8 us for 12.3; bench_ops.py linear),
// and the mma.sync kernels tried before ran out of MMA issue slots from 32 rows on (linear.cu).
//
// Layout of the work: a block is one warpgroup (128 threads) and owns 64 x MT weight rows (the MMA's M side) and
// BN rows of x (the MMA's N side, 8..128), over one of S splits of K. K goes through a ring of ST shared-memory
// stages of 64 x KA k each: KA weight atoms (64 MT rows x 128 bytes) and KA x atoms (BN rows x 128 bytes) in the
// 128-byte swizzled K-major layout wgmma reads (16-byte chunk c of row r at r x 128 + (c ^ r % 8) x 16, 1024-byte
// aligned atoms), filled by cp.async (zero bytes past N, M or K) ST - 2 stages ahead. Per stage: wait for its copies,
// fence them into the async proxy, one barrier (after which the stage the MMAs two stages back read is free: each
// thread waited for all but its last wgmma group), refill that stage, then 4 x KA x MT wgmma m64nBNk16 reading both
// operands from shared memory, left running while the next stage is waited for. The first stages' weights are
// requested before the programmatic-dependent-launch wait (no earlier kernel writes weights), x after it.
// Splits of K: the S blocks of one output tile form a thread-block cluster; each leaves its fp32 partial tile in its
// shared memory and block s sums slice s of the tile over the cluster in rank order (deterministic, no workspace,
// graph-capturable; the same scheme as linear.cu's tensor-core kernel). Up to 16 splits (a non-portable cluster size;
// 8 where the device cannot place a cluster of 16): measured on H200 (2026-11-25, benchmarks/results/
// xproj-splits-h200-7d09732.json) against at most 8, x_proj alone 5120 -> 192 at 8 / 32 / 64 rows 3.03 / 3.61 / 4.47
// us against 3.98 / 4.82 / 6.26, falcon-mamba-7b 8192 -> 288 at 8 rows 3.93 against 5.56; the decode step mamba-2.8b
// B = 8 / 16 / 32 / 64 2.382-2.394 / 2.815-2.825 / 3.444-3.451 / 4.303-4.310 ms against 2.472-2.476 / 2.890-2.906 /
// 3.518-3.524 / 4.384-4.397 (the wide products have enough tiles to take 2-4 splits either way).
// Measured on H200 (2026-11-25, benchmarks/results/linear-wg-sweeps-h200-2026-11-25.json): waiting for each
// stage's MMAs before the next stage (no MMA left running) cost up to 1.5x at 64-128 rows; 256 or 512 k per stage
// (KA 4: ptxas then serializes the MMAs) and 128 weight rows per block were no faster than 64 k and 64 rows at up to
// 32 rows of x; nor were the weights in a ring of their own 4-16 stages ahead of the MMAs with x 2-4 stages ahead
// (more weight bytes in flight per block: 8 stages made out_proj at 8 rows 11.3 vs 8.0 us). The shapes (MT, KA, ST)
// stay selectable for sweeps (SSMTP_LINEAR_WG_CFG).
#include "common.cuh"

#include <cooperative_groups.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#define OP "linear_small"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SSMTP_WG_ARCH 1
#else
#define SSMTP_WG_ARCH 0
#endif

namespace {

constexpr int WG_THREADS = 128;

// Shared-memory matrix descriptor of a 128-byte-swizzled K-major tile at shared address `addr` (1024-byte aligned,
// or advanced by 32 bytes per 16 k within the swizzle row): start address >> 4, leading-dimension offset 1 (unused
// by this layout), stride between 8-row groups 1024 bytes, layout type 1 (128-byte swizzle).
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

// The accumulator operands of one m64nNk16 wgmma: "%0, ..., %(N/2 - 1)", the matching "+f" constraints, and the
// numbers of the operands after them (A's and B's descriptors, the scale-d flag).
#define WG_R8 "%0, %1, %2, %3"
#define WG_R16 WG_R8 ", %4, %5, %6, %7"
#define WG_R32 WG_R16 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define WG_R64 WG_R32 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_R128                                                                                                     \
    WG_R64 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, " \
           "%52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_T8 "%4", "%5", "%6"
#define WG_T16 "%8", "%9", "%10"
#define WG_T32 "%16", "%17", "%18"
#define WG_T64 "%32", "%33", "%34"
#define WG_T128 "%64", "%65", "%66"
#define WG_F4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define WG_F16(i) WG_F4(i), WG_F4(i + 4), WG_F4(i + 8), WG_F4(i + 12)
#define WG_C8 WG_F4(0)
#define WG_C16 WG_F4(0), WG_F4(4)
#define WG_C32 WG_F16(0)
#define WG_C64 WG_F16(0), WG_F16(16)
#define WG_C128 WG_F16(0), WG_F16(16), WG_F16(32), WG_F16(48)
#define WG_ASM3(NS, RS, TY, A_, B_, S_, ...)                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " S_ ", 0;\nwgmma.mma_async.sync.aligned.m64n" NS "k16.f32." TY  \
                 "." TY " {" RS "}, " A_ ", " B_ ", p, 1, 1, 0, 0;\n}\n"                                              \
                 : __VA_ARGS__                                                                                      \
                 : "l"(a), "l"(b), "r"(scale_d))
#define WG_ASM(NS, RS, TY, T3, ...) WG_ASM3(NS, RS, TY, T3, __VA_ARGS__)

// d (+)= A B^T for one 64 x BN x 16 step: A = 64 weight rows, B = BN rows of x, both by descriptor, K-major;
// scale_d 0 overwrites d.
template <int BN> struct WgMma;
#define WG_SPECIAL(N_)                                                                                              \
    template <> struct WgMma<N_> {                                                                                  \
        template <bool BF>                                                                                          \
        static __device__ __forceinline__ void run(float (&d)[N_ / 2], uint64_t a, uint64_t b, int scale_d) {       \
            if constexpr (BF) WG_ASM(#N_, WG_R##N_, "bf16", WG_T##N_, WG_C##N_);                                    \
            else WG_ASM(#N_, WG_R##N_, "f16", WG_T##N_, WG_C##N_);                                                  \
        }                                                                                                           \
    };
WG_SPECIAL(8)
WG_SPECIAL(16)
WG_SPECIAL(32)
WG_SPECIAL(64)
WG_SPECIAL(128)
#undef WG_SPECIAL

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Wait for every committed wgmma group; the accumulators are pinned so that nothing reads them before.
template <int R> __device__ __forceinline__ void wg_wait_all(float (&d)[R]) {
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}
// Wait until at most one committed wgmma group is in flight (the accumulators stay with the MMAs).
__device__ __forceinline__ void wg_wait_one() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }
// cp.async writes are generic-proxy writes; wgmma reads shared memory through the async proxy.
__device__ __forceinline__ void wg_fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// 16 bytes global -> shared, zero-filled when !ok (src is then any valid address).
__device__ __forceinline__ void wg_cp16(uint32_t dst, const void *src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(__cvta_generic_to_global(src)),
                 "r"(ok ? 16 : 0)
                 : "memory");
}

// grid (ceil(N / (64 MT)), ceil(M / BN), S), cluster (1, 1, S), 128 threads, dynamic shared memory
// wg_smem<BN, MT, ST>().
template <int BN, int MT, int KA> constexpr int wg_stage_bytes() { return KA * (MT * 64 * 128 + BN * 128); }
template <int BN, int MT, int KA, int ST> constexpr int wg_smem() {
    // the stages, or the fp32 partial tile when that is larger, + 1024 for aligning the base
    return (ST * wg_stage_bytes<BN, MT, KA>() > MT * 64 * BN * 4 ? ST * wg_stage_bytes<BN, MT, KA>()
                                                                 : MT * 64 * BN * 4) + 1024;
}

template <typename T, int BN, int MT, int KA, int ST>
__global__ void __launch_bounds__(WG_THREADS, 1)
    linear_wg_kernel(const T *__restrict__ x, int64_t sx, const T *__restrict__ w, const T *__restrict__ bias,
                     void *__restrict__ out, int64_t so, int out_f32, int M, int N, int K) {
#if SSMTP_WG_ARCH
    // stage layout: KA weight atoms (BM rows x 128 bytes each), then KA x atoms (BN rows x 128 bytes each)
    constexpr int BM = 64 * MT, BK = 64 * KA, WA = BM * 128, XA = BN * 128, SB = wg_stage_bytes<BN, MT, KA>();
    constexpr int R = BN / 2, CPR = 8 * KA; // accumulators per m64 tile; 16-byte chunks per row and stage
    extern __shared__ uint8_t wg_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(wg_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const int tid = threadIdx.x;
    const int r0 = blockIdx.x * BM, m0 = blockIdx.y * BN;
    const int S = gridDim.z, s = blockIdx.z;
    const int nk = (K + BK - 1) / BK;
    const int beg = (int)((int64_t)nk * s / S), n = (int)((int64_t)nk * (s + 1) / S) - beg;
    ssm_pdl_trigger();

    // chunk q of a row (8 k each) goes to atom q / 8, swizzled position q % 8 ^ row % 8; a warp's 32 chunks are
    // consecutive in memory (one row's 512 bytes at KA = 4)
    auto load_rows = [&](uint32_t dst, int atom_bytes, const T *src, int64_t ld, int rows, int nrow, int row0,
                         int k0) {
#pragma unroll
        for (int i = 0; i < (rows * CPR + WG_THREADS - 1) / WG_THREADS; i++) {
            const int id = tid + i * WG_THREADS, row = id / CPR, q = id % CPR, k = k0 + q * 8;
            if ((rows * CPR) % WG_THREADS == 0 || id < rows * CPR) {
                const bool ok = row0 + row < nrow && k < K;
                wg_cp16(dst + (q / 8) * atom_bytes + row * 128 + (((q % 8) ^ (row & 7)) << 4),
                        ok ? src + (int64_t)(row0 + row) * ld + k : src, ok);
            }
        }
    };
    auto load_w = [&](int j, int slot) { load_rows(base + slot * SB, WA, w, K, BM, N, r0, (beg + j) * BK); };
    auto load_x = [&](int j, int slot) { load_rows(base + slot * SB + KA * WA, XA, x, sx, BN, M, m0, (beg + j) * BK); };

    // Stages ahead: ST - 2 (the MMAs of one stage run while the next one's copies are waited for and issued; the
    // stage they read is refilled one iteration later).
#pragma unroll
    for (int i = 0; i < ST - 2; i++)
        if (i < n) load_w(i, i);
    ssm_pdl_wait();
#pragma unroll
    for (int i = 0; i < ST - 2; i++) {
        if (i < n) load_x(i, i);
        ssm_cp_commit();
    }
    float acc[MT][R];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int i = 0; i < R; i++) acc[t][i] = 0.f;
    for (int j = 0; j < n; j++) {
        ssm_cp_wait<ST - 3>(); // this thread's copies of stage j landed
        wg_fence_async_smem();
        // everyone's copies of stage j landed, and everyone's MMAs of stage j - 2 completed (each thread waited for
        // all but its last group in the iteration before): stage j - 2's buffer takes stage j + ST - 2
        __syncthreads();
        if (j + ST - 2 < n) {
            load_w(j + ST - 2, (j + ST - 2) % ST);
            load_x(j + ST - 2, (j + ST - 2) % ST);
        }
        ssm_cp_commit();
        const uint32_t sw = base + (j % ST) * SB, sxb = sw + KA * WA;
        wg_fence();
#pragma unroll
        for (int a = 0; a < KA; a++)
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
#pragma unroll
                for (int t = 0; t < MT; t++)
                    WgMma<BN>::template run<std::is_same<T, __nv_bfloat16>::value>(
                        acc[t], wg_desc(sw + a * WA + t * 8192 + kk * 32), wg_desc(sxb + a * XA + kk * 32), 1);
        wg_commit();
        wg_wait_one();
    }
#pragma unroll
    for (int t = 0; t < MT; t++) wg_wait_all(acc[t]);
    ssm_cp_wait<0>();
    __syncthreads(); // the stages are free: the partial tile goes there

    // acc[t][4 i + e]: weight row 64 t + 16 warp + lane / 4 (+ 8 for e >= 2), x row 8 i + 2 (lane % 4) + (e & 1).
    // The tile is stored x-row-major (P[m][r]) so that the output's rows are written contiguously below.
    float *P = reinterpret_cast<float *>(wg_raw + (base - raw));
    const int warp = tid / 32, lane = tid % 32;
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int i = 0; i < BN / 8; i++) {
            const int r = 64 * t + 16 * warp + lane / 4, c = 8 * i + 2 * (lane % 4);
            P[c * BM + r] = acc[t][4 * i];
            P[(c + 1) * BM + r] = acc[t][4 * i + 1];
            P[c * BM + r + 8] = acc[t][4 * i + 2];
            P[(c + 1) * BM + r + 8] = acc[t][4 * i + 3];
        }
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); // every block's partial tile is in its shared memory (S = 1: a block barrier)
#pragma unroll 4
    for (int i = s * WG_THREADS + tid; i < BM * BN; i += S * WG_THREADS) {
        const int c = i / BM, rr = i % BM, r = r0 + rr, m = m0 + c;
        float v = P[i];
        if (S > 1) {
            v = 0.f;
            for (int q = 0; q < S; q++) v += cl.map_shared_rank(P, q)[i];
        }
        if (r < N && m < M) {
            if (bias) v += to_f32<T>(bias[r]);
            const T o = from_f32<T>(v);
            if (out_f32) ((float *)out)[(int64_t)m * so + r] = to_f32<T>(o);
            else ((T *)out)[(int64_t)m * so + r] = o;
        }
    }
    cl.sync(); // no block leaves while another reads its shared memory
#else
    __trap();
#endif
}

// The most K splits the launcher picks by itself (SSMTP_LINEAR_WG_MAX_SPLITS: 8 or 16, default 16): a cluster of 16
// blocks (a non-portable size) gives the narrow products (x_proj: 192-288 outputs, 3-5 tiles of 64 rows) twice the SMs.
static int wg_max_splits() {
    const char *env = getenv("SSMTP_LINEAR_WG_MAX_SPLITS");
    return env && strcmp(env, "8") == 0 ? 8 : 16;
}

template <typename T, int BN, int MT, int KA, int ST>
ssmtp_status_t launch_wg(const ssmtp_linear_params_t *p, int S, int sms, bool pdl, int device, cudaStream_t s) {
    const int M = (int)p->x.shape[0], N = (int)p->weight.shape[0], K = (int)p->x.shape[1];
    const auto kern = linear_wg_kernel<T, BN, MT, KA, ST>;
    constexpr int smem = wg_smem<BN, MT, KA, ST>();
    int optin = 0;
    SSMTP_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (smem > optin)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %d stages of %d x %d tiles, %d k each, need %d bytes of shared "
                          "memory, the device has %d per block", ST, 64 * MT, BN, 64 * KA, smem, optin);
    SSMTP_TRY(ssm_allow_smem((const void *)kern, smem, device));
    const int64_t tiles = (int64_t)((N + 64 * MT - 1) / (64 * MT)) * ((M + BN - 1) / BN);
    if (S == 0) { // the most splits (a power of two, <= wg_max_splits()) whose blocks are all resident at once with
                  // >= 4 stages each
        const int64_t cap = (int64_t)ssm_blocks_per_sm((const void *)kern, WG_THREADS, smem) * sms;
        const int nk = (K + 64 * KA - 1) / (64 * KA);
        const int smax = wg_max_splits();
        S = 1;
        while (S < smax && tiles * 2 * S <= cap && nk >= 4 * S) S *= 2;
    }
    const dim3 grid((unsigned)((N + 64 * MT - 1) / (64 * MT)), (unsigned)((M + BN - 1) / BN), (unsigned)S);
    static int c16[64]; // per device: 0 not asked yet, 1 clusters of 16 placeable, -1 not (then 8)
    const int di = device >= 0 && device < 64 ? device : 0;
    if (S > 8 && c16[di] < 0) return launch_wg<T, BN, MT, KA, ST>(p, 8, sms, pdl, device, s);
    if (S > 8 && c16[di] == 0) { // a non-portable cluster size, allowed per kernel
        SSMTP_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        cudaLaunchAttribute at[2];
        const cudaLaunchConfig_t cfg = ssmtp_launch_config(grid, dim3(WG_THREADS), smem, s, false, (unsigned)S, at);
        int nc = 0;
        const bool ok = cudaOccupancyMaxActiveClusters(&nc, kern, &cfg) == cudaSuccess && nc >= 1;
        (void)cudaGetLastError();
        c16[di] = ok ? 1 : -1;
        if (!ok) return launch_wg<T, BN, MT, KA, ST>(p, 8, sms, pdl, device, s);
    }
    const T *x = (const T *)p->x.data, *w = (const T *)p->weight.data;
    const T *b = p->bias.data ? (const T *)p->bias.data : nullptr;
    return ssmtp_launch_cluster(OP " (warpgroup-MMA kernel)", kern, grid, dim3(WG_THREADS), smem, s, pdl,
                                (unsigned)S, x, (int64_t)p->x.stride[0], w, b, p->out.data,
                                (int64_t)p->out.stride[0], (int)(p->out.dtype != p->x.dtype), M, N, K);
}

// Block shapes: MT (weight rows / 64), KA (k per stage / 64), ST (stages), named "m<MT>k<KA>s<ST>".
#define WG_CONFIGS(X) X(1, 1, 8) X(1, 1, 6) X(1, 2, 6) X(1, 2, 4) X(2, 1, 6) X(2, 1, 4) X(2, 2, 4) X(2, 2, 3)

template <typename T, int BN>
ssmtp_status_t launch_cfg(const ssmtp_linear_params_t *p, const char *cfg, int S, int sms, bool pdl, int device,
                          cudaStream_t s) {
#define WG_TRY(MT_, KA_, ST_)                                                                                       \
    if (strcmp(cfg, "m" #MT_ "k" #KA_ "s" #ST_) == 0) return launch_wg<T, BN, MT_, KA_, ST_>(p, S, sms, pdl, device, s);
    WG_CONFIGS(WG_TRY)
#undef WG_TRY
    return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_LINEAR_WG_CFG=%s (m1k1s8, m1k1s6, m1k2s6, m1k2s4, m2k1s6, "
                      "m2k1s4, m2k2s4 or m2k2s3)", cfg);
}

// BN = M rounded up to 8, 16, 32, 64 or 128; the block shape m1k1s8 at BN 8, m1k1s6 above (the best or within a few
// percent of it on the decode projections in the sweeps); S (K splits) from the launcher unless SSMTP_LINEAR_WG_SPLITS
// fixes it, SSMTP_LINEAR_WG_CFG the block shape (benchmarks, tests).
template <typename T> ssmtp_status_t dispatch_wg(const ssmtp_linear_params_t *p, int sms, bool pdl, int device,
                                                 cudaStream_t s) {
    const int64_t M = p->x.shape[0];
    const int bn = M <= 8 ? 8 : M <= 16 ? 16 : M <= 32 ? 32 : M <= 64 ? 64 : 128;
    int S = 0;
    const char *env = getenv("SSMTP_LINEAR_WG_SPLITS");
    if (env && *env) {
        S = atoi(env);
        if (S != 1 && S != 2 && S != 4 && S != 8 && S != 16)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_LINEAR_WG_SPLITS=%s (1, 2, 4, 8 or 16)", env);
    }
    const char *cfg = getenv("SSMTP_LINEAR_WG_CFG");
    if (!cfg || !*cfg) cfg = bn == 8 ? "m1k1s8" : "m1k1s6";
    switch (bn) {
    case 8: return launch_cfg<T, 8>(p, cfg, S, sms, pdl, device, s);
    case 16: return launch_cfg<T, 16>(p, cfg, S, sms, pdl, device, s);
    case 32: return launch_cfg<T, 32>(p, cfg, S, sms, pdl, device, s);
    case 64: return launch_cfg<T, 64>(p, cfg, S, sms, pdl, device, s);
    default: return launch_cfg<T, 128>(p, cfg, S, sms, pdl, device, s);
    }
}

} // namespace

// The warpgroup-MMA path of ssmtp_linear_small (linear.cu checks the shapes it sends here: 16-bit x, 1..128 rows,
// 16-byte aligned rows of x and W).
extern "C" int ssmtp_linear_wg_built(void) {
#ifdef SSMTP_WG_BUILT
    return 1;
#else
    return 0;
#endif
}

extern "C" ssmtp_status_t ssmtp_cuda_linear_wg(const ssmtp_linear_params_t *p, int sms, int pdl, void *stream) {
    if (!ssmtp_linear_wg_built())
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": the warpgroup-MMA kernel is not in this build (SSMTP_CUDA_ARCHS "
                          "without 90)");
    const int dev = p->x.device;
    int major = 0, minor = 0;
    SSMTP_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    SSMTP_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major != 9 || minor != 0)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": the warpgroup-MMA kernel needs compute capability 9.0, device "
                          "has %d.%d", major, minor);
    cudaStream_t s = (cudaStream_t)stream;
    if (p->x.dtype == SSMTP_DTYPE_BF16) return dispatch_wg<__nv_bfloat16>(p, sms, pdl != 0, dev, s);
    return dispatch_wg<__half>(p, sms, pdl != 0, dev, s);
}
