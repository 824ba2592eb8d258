// decode_out.cu - the output half of a Mamba-1 block's decode step in one kernel: x_proj, Falcon-Mamba's dt/B/C
// norms, dt_proj, the selective state update and out_proj. Semantics: ssmtp_mamba_decode_out in csrc/ssmtp.h; CPU
// reference: csrc/decode.c (the chain of linear_small and step_fwd).
//
// Why: at batch 1-4 this half of a block is three kernels (x_proj GEMV, the state update with dt_proj, out_proj
// GEMV) whose bytes are mostly out_proj's weight (26 of 30 MB per mamba-2.8b layer), while the first two are almost
// all launch, ramp and drain: each output needs every input channel, so each stage waits for the whole previous one.
// Here the stages are phases of one kernel separated by grid barriers, and the weight stream does not wait for them.
//
// Layout: one block of NT = 512 threads per SM (grid = SM count; the block's shared memory allows no second one, and
// the launcher checks that every block fits at once, which the barriers need). Before the PDL wait (weights only),
// block b copies its contiguous out_proj rows [b rpb, (b + 1) rpb) into shared memory with cp.async (as many as
// fit: all of them for mamba-2.8b, 20 rows of 10 KB), loads its x_proj rows (b, b + G, ...) and the dt_proj rows and
// A of its channels into registers. Then:
//   phase 1: x_proj row j = one block-wide dot product per input row, rounded to T, to the scratch `xdbl`;
//   barrier;
//   phase 2: every block copies xdbl (M x (R + 2N) floats) to shared memory (and applies the norms); one warp per
//            channel of the block's range: dt_proj dot (lanes over 16-byte packs, xor shuffles), + dt_bias,
//            softplus, then lane s < N updates state s (ex2 form of step.cu) and the warp sums y; D, SiLU(z) gate,
//            rounded to T, to the scratch `y`;
//   barrier;
//   phase 3: out_proj rows from shared memory (rows that did not fit: streamed from global memory) against y.
// The barrier is a sense-reversing counter pair in `sync` (arrivals, generation), reset by its last arrival, so it
// serves every launch that does not run concurrently with another on the same pair. A block that waits ~10 s traps
// (a launch error, not a hang).

#include "common.cuh"
#include "ssm_math.cuh"

#include <stdlib.h>

#define OP "mamba_decode_out"

namespace {

constexpr int NT = 512, NW = NT / 32; // threads, warps
constexpr int LPC = 8;                          // phase 2: lanes per channel (NT / LPC channels per pass)
constexpr int WP = 4, SP = 4;                   // phase 2: dt_proj packs and states per lane held in registers

struct DecOutArgs {
    const void *xc, *z, *wx, *wdt, *dt_bias, *D, *wout;
    const float *A;
    float *state;
    const int32_t *state_idx;
    void *out;
    float *xdbl; // (M, X) scratch
    void *y;     // (M, dl) T scratch
    unsigned long long *sync;
    int dl, R, N, X, H, nslots;
    int64_t sxc, sz, sA0, ss0, ss1, sidx, sout, sD, sbias;
    int D_dtype, bias_dtype, norm;
    float norm_eps;
    int rpb, smem_rows, cpb;
    int dbg, pf;
};

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

__device__ __forceinline__ unsigned long long ld_acquire64(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long add_release64(unsigned long long *p, unsigned long long v) {
    unsigned long long old;
    asm volatile("atom.add.release.gpu.global.u64 %0, [%1], %2;" : "=l"(old) : "l"(p), "l"(v) : "memory");
    return old;
}

// Every block of the grid arrives before any leaves; writes before it are visible to reads after it (those read the
// scratch with ld.cg, past L1). `sync` is a 64-bit arrival count that only grows: the launch's blocks take tickets,
// and the barrier opens when the count reaches the end of the ticket's round of gridDim.x (so every launch on the
// same sync words must use the same grid: the SM count). One atomic per block and polling, no reset.
__device__ __forceinline__ void grid_sync(unsigned long long *sync, int dbg = 0) {
    if (dbg & 1) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned long long G = gridDim.x, ticket = add_release64(sync, 1ull);
        const unsigned long long target = (ticket / G + 1) * G;
        const long long t0 = clock64();
        while (ld_acquire64(sync) < target)
            if (clock64() - t0 > (1LL << 35)) __trap(); // ~17 s at 2 GHz: a block never came
    }
    __syncthreads();
}

// The block's out_proj rows into shared memory without holding up the threads: on sm_90 one thread issues bulk
// copies (TMA) that complete on an mbarrier; before sm_90, cp.async by every thread (which does hold them up).
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

constexpr int MAXR = 64; // out_proj rows per block held in shared memory at most (one mbarrier each)

__device__ __forceinline__ void rows_to_smem(uint4 *dst, const uint4 *src, int rows, int npk, uint64_t *mbar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        const uint32_t row_bytes = (uint32_t)npk * 16;
        for (int r = 0; r < rows; r++) {
            const uint32_t bar = smem_u32(mbar + r);
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        for (int r = 0; r < rows; r++) {
            const uint32_t bar = smem_u32(mbar + r);
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(row_bytes) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                             smem_u32(dst + (size_t)r * npk)),
                         "l"(__cvta_generic_to_global(src + (size_t)r * npk)), "r"(row_bytes), "r"(bar)
                         : "memory");
        }
    }
#else
    (void)mbar;
    (void)smem_u32;
    for (int i = threadIdx.x; i < rows * npk; i += blockDim.x) ssm_cp16(dst + i, src + i);
    ssm_cp_commit();
#endif
}

// Wait for row r of rows_to_smem (any thread; after a __syncthreads that follows the issuing thread's init). Before
// sm_90 rows_wait_all (every thread, before) did it.
__device__ __forceinline__ void row_wait(uint64_t *mbar, int r) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(smem_u32(mbar + r))
                     : "memory");
#else
    (void)mbar;
    (void)r;
#endif
}
__device__ __forceinline__ void rows_wait_all() {
#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
    ssm_cp_wait<0>();
#endif
}

template <typename T, int M, int PPT>
__global__ void __launch_bounds__(NT, 1) decode_out_kernel(const DecOutArgs a) {
    constexpr int P = Pack16<T>::N;
    // dynamic shared memory: [smem_rows][npk] out_proj packs | y (M, npk packs) | xd (M, XP) | xs, zs (M, cpb)
    extern __shared__ uint4 wsm[];
    __shared__ float red[NW][M];
    __shared__ uint64_t mbar[MAXR];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int G = gridDim.x, b = blockIdx.x;
    const int npk = a.dl / P, npr = a.R / P, X = a.X, XP = (a.X + 3) & ~3, N = a.N;
    uint4 *ysm = wsm + (size_t)a.smem_rows * npk;
    float *xd = reinterpret_cast<float *>(ysm + (size_t)M * npk); // rows 16-byte aligned
    float *xs = xd + M * XP, *zs = xs + M * a.cpb;
    ssm_pdl_trigger();

    // ---- before the wait: weights and parameters only
    const int r0 = b * a.rpb, r1 = min(a.H, r0 + a.rpb), nrows = max(0, r1 - r0), ks = min(nrows, a.smem_rows);
    const uint4 *wout = reinterpret_cast<const uint4 *>(a.wout) + (size_t)r0 * npk;
    const uint4 *wx = reinterpret_cast<const uint4 *>(a.wx);
    uint4 wxr[2][PPT];
#pragma unroll
    for (int k = 0; k < 2; k++)
#pragma unroll
        for (int j = 0; j < PPT; j++) {
            const int row = b + k * G, pk = tid + j * NT;
            wxr[k][j] = row < X && pk < npk ? ld_stream(wx + (size_t)row * npk + pk) : make_uint4(0, 0, 0, 0);
        }
    // phase 2 layout: LPC lanes per channel, channel slot q = tid / LPC of NT / LPC per pass; lane `sub` of a channel
    // takes dt_proj packs sub + LPC j and states sub + LPC j
    const int c_lo = b * a.cpb, c_hi = min(a.dl, c_lo + a.cpb), nch = max(0, c_hi - c_lo);
    const int sub = tid % LPC, q0 = tid / LPC;
    const uint4 *wdt = reinterpret_cast<const uint4 *>(a.wdt);
    uint4 wdr[WP];
    float A2[SP];
    float bias0 = 0.f, D0 = 0.f;
    {
        const int c = c_lo + q0;
        const bool in = c < c_hi;
#pragma unroll
        for (int j = 0; j < WP; j++) {
            const int k = sub + LPC * j;
            wdr[j] = in && k < npr ? ld_stream(wdt + (size_t)c * npr + k) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < SP; j++) {
            const int st = sub + LPC * j;
            A2[j] = in && st < N ? a.A[c * a.sA0 + st] * SSM_LOG2E : 0.f;
        }
        if (in && a.dt_bias) bias0 = ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias);
        if (in && a.D) D0 = ssm_load_param(a.D, a.D_dtype, c * a.sD);
    }
    if (a.pf == 0) rows_to_smem(wsm, wout, ks, npk, mbar);
    ssm_pdl_wait();

    // ---- inputs written by earlier kernels, all loads issued at once: xc (phase 1), the first pass's state
    // entries, the block's channels' x and z (phase 2, staged in shared memory)
    int slot[M];
#pragma unroll
    for (int m = 0; m < M; m++) slot[m] = a.state_idx ? a.state_idx[m * a.sidx] : m;
    uint4 xv[M][PPT];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int j = 0; j < PPT; j++) {
            const int pk = tid + j * NT;
            xv[m][j] = pk < npk ? *(reinterpret_cast<const uint4 *>((const T *)a.xc + m * a.sxc) + pk)
                                : make_uint4(0, 0, 0, 0);
        }
    float hpre[SP][M];
#pragma unroll
    for (int j = 0; j < SP; j++) {
        const int c = c_lo + q0, st = sub + LPC * j;
#pragma unroll
        for (int m = 0; m < M; m++)
            hpre[j][m] = c < c_hi && st < N && slot[m] >= 0 && slot[m] < a.nslots
                             ? a.state[slot[m] * a.ss0 + c * a.ss1 + st]
                             : 0.f;
    }
    for (int i = tid; i < M * nch; i += NT) {
        const int m = i / nch, c = c_lo + i % nch;
        xs[i] = to_f32<T>(((const T *)a.xc)[m * a.sxc + c]);
        zs[i] = a.z ? to_f32<T>(((const T *)a.z)[m * a.sz + c]) : 0.f;
    }

    // ---- phase 1: x_proj, rows b, b + G, ...: one block-wide dot product per row of x
    for (int row = b, k = 0; row < X && !(a.dbg & 4); row += G, k++) {
        uint4 w[PPT];
#pragma unroll
        for (int j = 0; j < PPT; j++) {
            const int pk = tid + j * NT;
            w[j] = k == 0 ? wxr[0][j] : k == 1 ? wxr[1][j]
                 : pk < npk ? ld_stream(wx + (size_t)row * npk + pk) : make_uint4(0, 0, 0, 0);
        }
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
#pragma unroll
        for (int j = 0; j < PPT; j++) {
            float wf[P];
            Pack16<T>::to_f32(w[j], wf);
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xf[P];
                Pack16<T>::to_f32(xv[m][j], xf);
#pragma unroll
                for (int e = 0; e < P; e++) acc[m] = fmaf(wf[e], xf[e], acc[m]);
            }
        }
        if (k) __syncthreads(); // red is read by the previous row's finishing threads
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red[warp][m] = v;
        }
        __syncthreads();
        if (tid < M) {
            float s = 0.f;
            for (int i = 0; i < NW; i++) s += red[i][tid];
            a.xdbl[tid * X + row] = round_t<T>(s);
        }
    }
    if (a.pf == 1) rows_to_smem(wsm, wout, ks, npk, mbar);
    grid_sync(a.sync, a.dbg);
    if (a.pf == 2) rows_to_smem(wsm, wout, ks, npk, mbar);

    // ---- phase 2: norms, dt_proj, state update
    for (int i = tid; i < M * X; i += NT) xd[i / X * XP + i % X] = __ldcg(a.xdbl + i);
    __syncthreads();
    if (a.norm) {
        if (warp < 3 * M) {
            const int m = warp / 3, part = warp % 3;
            const int o = m * XP + (part == 0 ? 0 : part == 1 ? a.R : a.R + N), n = part == 0 ? a.R : N;
            float ss = 0.f;
            for (int k = lane; k < n; k += 32) ss = fmaf(xd[o + k], xd[o + k], ss);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
            const float sc = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)n), a.norm_eps)));
            __syncwarp();
            for (int k = lane; k < n; k += 32) xd[o + k] = round_t<T>(__fmul_rn(xd[o + k], sc));
        }
        __syncthreads();
    }
    T *yw = (T *)a.y;
    for (int q = q0, pass = 0; q < nch && !(a.dbg & 2); q += NT / LPC, pass++) { // uniform per LPC-lane group
        const int c = c_lo + q;
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
        for (int j = 0, k = sub; k < npr; j++, k += LPC) { // npr <= 64 (the launcher)
            uint4 wv = make_uint4(0, 0, 0, 0);
            if (pass == 0 && j < WP) {
#pragma unroll
                for (int jj = 0; jj < WP; jj++)
                    if (jj == j) wv = wdr[jj];
            } else {
                wv = ld_stream(wdt + (size_t)c * npr + k);
            }
            float wf[P];
            Pack16<T>::to_f32(wv, wf);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const float4 *xp = reinterpret_cast<const float4 *>(xd + m * XP + k * P);
#pragma unroll
                for (int e4 = 0; e4 < P / 4; e4++) {
                    const float4 v = xp[e4];
                    acc[m] = fmaf(wf[4 * e4], v.x, acc[m]);
                    acc[m] = fmaf(wf[4 * e4 + 1], v.y, acc[m]);
                    acc[m] = fmaf(wf[4 * e4 + 2], v.z, acc[m]);
                    acc[m] = fmaf(wf[4 * e4 + 3], v.w, acc[m]);
                }
            }
        }
        const float bc = pass == 0 ? bias0 : a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias) : 0.f;
        const float dc = pass == 0 ? D0 : a.D ? ssm_load_param(a.D, a.D_dtype, c * a.sD) : 0.f;
        const uint32_t gmask = (LPC == 32 ? 0xffffffffu : ((1u << LPC) - 1)) << (lane & ~(LPC - 1));
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[m];
#pragma unroll
            for (int o = LPC / 2; o > 0; o >>= 1) v += __shfl_xor_sync(gmask, v, o);
            const float delta = ssm_softplus_exact(__fadd_rn(round_t<T>(v), bc));
            const float xt = xs[m * nch + q];
            const bool ok = slot[m] >= 0 && slot[m] < a.nslots;
            float part = 0.f;
            for (int j = 0, st = sub; st < N; j++, st += LPC) { // N <= 32: j < SP
                float h = 0.f, a2 = 0.f;
                if (pass == 0) {
#pragma unroll
                    for (int jj = 0; jj < SP; jj++)
                        if (jj == j) { h = hpre[jj][m]; a2 = A2[jj]; }
                } else {
                    h = ok ? a.state[slot[m] * a.ss0 + c * a.ss1 + st] : 0.f;
                    a2 = a.A[c * a.sA0 + st] * SSM_LOG2E;
                }
                h = fmaf(ssm_ex2(delta * a2), h, (delta * xt) * xd[m * XP + a.R + st]);
                part = fmaf(h, xd[m * XP + a.R + N + st], part);
                if (ok) a.state[slot[m] * a.ss0 + c * a.ss1 + st] = h;
            }
#pragma unroll
            for (int o = LPC / 2; o > 0; o >>= 1) part += __shfl_xor_sync(gmask, part, o);
            if (sub == 0) {
                float y;
                if (slot[m] < 0) y = 0.f;
                else if (!ok) y = __int_as_float(0x7fc00000);
                else {
                    y = part;
                    if (a.D) y = __fadd_rn(y, __fmul_rn(dc, xt));
                    if (a.z) y = __fmul_rn(y, ssm_silu_exact(zs[m * nch + q]));
                }
                yw[m * a.dl + c] = from_f32<T>(y);
            }
        }
    }
    grid_sync(a.sync, a.dbg);

    // ---- phase 3: out_proj, one warp per row, y staged in shared memory
    for (int i = tid; i < M * npk; i += NT) ysm[i] = __ldcg(reinterpret_cast<const uint4 *>(yw) + i);
    rows_wait_all();
    __syncthreads();
    for (int row = warp; row < nrows && !(a.dbg & 8); row += NW) {
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
        const uint4 *wr = row < ks ? wsm + (size_t)row * npk : nullptr;
        if (wr) row_wait(mbar, row);
#pragma unroll 4
        for (int k = lane; k < npk; k += 32) {
            const uint4 wv = wr ? wr[k] : ld_stream(wout + (size_t)row * npk + k);
            float wf[P];
            Pack16<T>::to_f32(wv, wf);
#pragma unroll
            for (int m = 0; m < M; m++) {
                float yf[P];
                Pack16<T>::to_f32(ysm[m * npk + k], yf);
#pragma unroll
                for (int e = 0; e < P; e++) acc[m] = fmaf(wf[e], yf[e], acc[m]);
            }
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = acc[m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == m) ((T *)a.out)[m * a.sout + r0 + row] = from_f32<T>(v);
        }
    }
}

template <typename T, int M, int PPT>
ssmtp_status_t launch(DecOutArgs &a, int device, int sms, cudaStream_t s) {
    auto kernel = decode_out_kernel<T, M, PPT>;
    const int64_t npk = a.dl / Pack16<T>::N, row_bytes = npk * 16;
    a.cpb = (a.dl + sms - 1) / sms;
    // y, xd, xs, zs
    const size_t xd_bytes = (size_t)M * row_bytes + (size_t)M * (((a.X + 3) & ~3) + 2 * ((a.cpb + 3) & ~3)) * 4;
    int optin = 0;
    SSMTP_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaFuncAttributes fa;
    SSMTP_CUDA_TRY(cudaFuncGetAttributes(&fa, kernel));
    const int64_t room = (int64_t)optin - (int64_t)fa.sharedSizeBytes - (int64_t)xd_bytes - 1024;
    a.rpb = (a.H + sms - 1) / sms;
    a.smem_rows = room > 0 ? (int)(room / row_bytes < a.rpb ? room / row_bytes : a.rpb) : 0;
    if (a.smem_rows > MAXR) a.smem_rows = MAXR;
    const char *penv = getenv("SSMTP_DECODE_OUT_PREFETCH");
    a.pf = penv && *penv ? atoi(penv) : 0;
    const char *denv = getenv("SSMTP_DECODE_OUT_DEBUG");
    a.dbg = denv && *denv ? atoi(denv) : 0;
    const char *env = getenv("SSMTP_DECODE_OUT_SMEM_ROWS"); // a lower cap (benchmarks: rows streamed in phase 3)
    if (env && *env && atoi(env) >= 0 && atoi(env) < a.smem_rows) a.smem_rows = atoi(env);
    const size_t smem = (size_t)a.smem_rows * row_bytes + xd_bytes;
    SSMTP_TRY(ssm_allow_smem((const void *)kernel, smem, device));
    // the barriers need every block resident at once: one per SM must fit (the occupancy calculator's answer is per
    // SM of an idle device)
    if (ssm_blocks_per_sm((const void *)kernel, NT, smem) < 1)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": a block of %d threads and %zu bytes of shared memory does not "
                          "fit an SM", NT, smem);
    return ssmtp_launch(OP, kernel, dim3((unsigned)sms), dim3(NT), smem, s, ssmtp_pdl_enabled(device), a);
}

template <typename T, int M> ssmtp_status_t launch_m(DecOutArgs &a, int ppt, int device, int sms, cudaStream_t s) {
    if (ppt == 1) return launch<T, M, 1>(a, device, sms, s);
    if (ppt == 2) return launch<T, M, 2>(a, device, sms, s);
    return launch<T, M, 4>(a, device, sms, s);
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_mamba_decode_out(const ssmtp_decode_out_params_t *p, void *stream) {
    const int64_t M = p->xc.shape[0], dl = p->xc.shape[1], R = p->dt_proj.shape[1], N = p->A.shape[1];
    const int64_t H = p->out_proj.shape[0], X = R + 2 * N;
    const int64_t es = (int64_t)ssmtp_dtype_size(p->xc.dtype), npk = dl * es / 16;
    if (npk > 4 * NT || R * es / 16 > 64 || H > 0x7fffffffLL || p->state.shape[0] > 0x7fffffffLL ||
        p->state.stride[0] > 0x7fffffffLL / 2)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": d_inner=%lld, R=%lld, H=%lld on CUDA (d_inner at most %d "
                          "16-byte packs, R at most 64, 32-bit state offsets)", (long long)dl, (long long)R,
                          (long long)H, 4 * NT);
    if (dl == 0 || H == 0) return SSMTP_OK;
    SSMTP_TRY(ssmtp_cuda_set_device(p->xc.device));
    const int dev = p->xc.device;
    int sms = 132;
    SSMTP_TRY(ssm_sm_count(dev, &sms));

    DecOutArgs a = {};
    a.xc = p->xc.data;
    a.z = p->z.data;
    a.wx = p->x_proj.data;
    a.wdt = p->dt_proj.data;
    a.dt_bias = p->dt_bias.data;
    a.D = p->D.data;
    a.wout = p->out_proj.data;
    a.A = (const float *)p->A.data;
    a.state = (float *)p->state.data;
    a.state_idx = (const int32_t *)p->state_idx.data;
    a.out = p->out.data;
    a.xdbl = (float *)p->work.data;
    a.y = (float *)p->work.data + (M * X + 3) / 4 * 4;
    a.sync = (unsigned long long *)p->sync.data;
    a.dl = (int)dl;
    a.R = (int)R;
    a.N = (int)N;
    a.X = (int)X;
    a.H = (int)H;
    a.nslots = (int)p->state.shape[0];
    a.sxc = p->xc.stride[0];
    a.sz = p->z.stride[0];
    a.sA0 = p->A.stride[0];
    a.ss0 = p->state.stride[0];
    a.ss1 = p->state.stride[1];
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    a.sout = p->out.stride[0];
    if (a.D) { a.sD = p->D.stride[0]; a.D_dtype = p->D.dtype; }
    if (a.dt_bias) { a.sbias = p->dt_bias.stride[0]; a.bias_dtype = p->dt_bias.dtype; }
    a.norm = p->norm_eps >= 0.f;
    a.norm_eps = a.norm ? p->norm_eps : 0.f;

    const int ppt = npk <= NT ? 1 : npk <= 2 * NT ? 2 : 4;
    cudaStream_t s = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->xc.dtype, T, OP, {
        switch (M) {
        case 1: return launch_m<T, 1>(a, ppt, dev, sms, s);
        case 2: return launch_m<T, 2>(a, ppt, dev, sms, s);
        case 3: return launch_m<T, 3>(a, ppt, dev, sms, s);
        default: return launch_m<T, 4>(a, ppt, dev, sms, s);
        }
    });
    return SSMTP_OK;
}
