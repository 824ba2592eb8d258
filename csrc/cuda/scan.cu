// scan.cu - selective scan (prefill) on the GPU: fp32 state in registers, fp32 accumulation, d_state up to 256,
// ngroups, D, z gating, dt_bias + softplus, initial/final state in slot-indexed rows, right-padded seq_lens.
// Semantics: ssmtp_scan_fwd in csrc/ssmtp.h; CPU reference: csrc/scan.c.
//
// Two kernels, chosen per call by SSMTP_SCAN_KERNEL: "loop" (the default; below) and "chunked" (further down: blocks
// walk chunks of steps that P lanes per channel scan in parallel). Both take the same ScanArgs and have the same
// semantics; tests/test_cuda_ops.py runs every case through both and benchmarks/bench_ops.py times them side by side.
// Calls with intermediate-state saves (save_pos / save_idx) always take the loop kernel: its final pass writes h to
// the save slot right after the step that completes a save position (a uniform branch per step: one sequence per
// block), in whichever time chunk that step falls.
//
// Loop kernel. Work mapping. A thread owns one channel and NS <= 16 of its states (TPC = ceil(N/16) threads per
// channel when d_state > 16, adjacent lanes, y summed with xor shuffles) and walks time. Consecutive threads are
// consecutive channels, so with the model's layout (x, dt, z, out channel-contiguous: stride[1] == 1) each per-step
// load and store of a warp is one contiguous run; other strides are correct, uncoalesced. B and C (shared by the channels
// of a group) are staged per tile of TT steps in shared memory as fp32; a block never straddles two groups.
//
// Time parallelism (few sequences x channels, e.g. B=1): the sequence is cut into K chunks, in three launches:
//   1. local:   per chunk k < K-1, from h = 0: h_loc_k (N floats) and sum_k = sum of delta over the chunk;
//   2. combine: per (seq, channel, state), sequential over chunks: H_0 = initial state,
//               H_{k+1} = exp(A * sum_k) * H_k + h_loc_k   (A is constant per channel, so the decay over a chunk is
//               exp(A * sum(delta)));
//   3. final:   per chunk, the scan again from H_k, writing y and (chunk holding position n-1) the final state.
// This costs ~2x the arithmetic of one pass, so it is used only when one pass would fill less than a third of the
// GPU. The chunk states need N+1 floats per (seq, channel, chunk) of scratch and the op has no workspace argument
// (the caller owns memory; no allocation on this path): they live in the first N+1 floats' worth of each chunk's
// own out row (bit-split into two 16-bit elements for f16/bf16 outputs), which pass 3 reads back into registers
// before it overwrites them with y. Chunks are >= that long. All three launches are stream-ordered and
// graph-capturable.
//
// Cost model (N = 16, bf16, z given): 8 bytes of HBM traffic per (channel, step) against 16 ex2 on the MUFU
// (16/clk/SM on sm_90) plus ~6 issue slots per state element: the MUFU ceiling is ~1 (channel, step) per clk per
// SM = ~2.1 TB/s (49% of the 4.26 TB/s copy rate), so for 16-bit inputs this kernel is bound by arithmetic and,
// in practice, by latency; f32 inputs (16 B per step) are near the memory floor. The work per step outside the
// state loop is two MUFU ops (softplus as one ex2 + a polynomial, branch-free; SiLU as one tanh for 16-bit out).
//
// Measured on one H200 (bf16, mamba-2.8b shapes, benchmarks/bench_ops.py; see benchmarks/results/):
//   - this loop, branchy softplus: B=8 L=2048 1040 us = 31% of the MUFU bound; B=1 L=32768 (17 chunks) 2935 us.
//   - a rewrite that grouped 4 steps branch-free, loaded x/dt/z one group ahead and double-buffered B/C in registers
//     needed 168 registers (3 blocks/SM instead of 5) and ran 1.4-2x SLOWER (B=8 L=2048 1463 us): a thread is
//     latency-bound at ~1200 cycles per step on its own (one warp per SM sub-partition: B=1, one pass), so the
//     kernel lives on warps per SM, not on instruction-level parallelism. Reverted; kept: the branch-free softplus
//     and two partial sums for y.
//   - threads per channel 2 or 4 (SSMTP_SCAN_TPC) were slower than 1 at every shape swept (B=1..8, L=512..8192;
//     unstaged: staged, two now win where one leaves SMs idle, see scan_auto_tpc),
//     and chunking pays below ~1/3 occupancy (B=1 L=2048: 888 us one pass, 177 us at 16 chunks).
//   - this loop again (commit 9332f75, benchmarks/results/ops-h200.json): B=8 L=2048 1065 us (30% of the MUFU bound),
//     B=1 L=32768 2889 us. Its sweep then set two defaults: 8 steps per load group (B=8 L=512 275 -> 254 us, B=1
//     L=8192 755 -> 708 us) and the chunk count rounded down to one wave (B=1 L=2048 218 -> 174 us with both).
//   - one A per channel (stride-0 A, Zamba2's Mamba-2 layers; 2026-11-23, zamba2-2.7b shapes d_inner 5120 d_state
//     64): B=8 L=2048 5149 us with A stored per state, 4529 us with one exp per channel and step at 4 threads of 16
//     states per channel, 1691 us with all 64 states in one thread (B=1 L=2048: 843 / 707 / 340 us).
//   - the combine pass capped at 48 registers (was 214, one block per SM): 751 -> 425 us summed over the 64 layers of
//     the mamba-2.8b 8192-token prefix hit (819 tokens, 16 chunks).
//   - staged tiles (below; the default where the layout allows, 16-bit d_state 16: the models'). Nsight Compute
//     (2026-11-23, B=8 L=2048, benchmarks/results/ncu-h200-*-scan*): a third of the unstaged kernel's warp time was
//     the wait for each load group's x/dt/z (long scoreboard), and every step was its own basic block (softplus,
//     gate, store and save check branches), so the scheduler could not overlap steps. Staged, with branch-free
//     groups (commit bf9f54f against eaa857a, same run): B=8 L=2048 1004 -> 636 us (mamba-2.8b TP=1), 900 -> 452 us
//     (falcon-mamba-7b TP=2 shard); B=8 L=512 259 -> 167 us; B=1 1.13-1.38x at every length (chunked passes staged
//     too). 16-step tiles were 2-8% slower than 32 on most shapes. The same branch-free groups in the unstaged loop
//     were slower there (the load wait dominates), so the unstaged loop keeps its per-step checks. Staged, Nsight
//     Compute (3ad7b60) shows 142 instructions per warp and step (was 177) and no memory stalls: the kernel is now
//     issue-limited (mamba-2.8b B=8 at 50% of the MUFU bound, falcon-mamba-7b 62%); two time chunks at B=8 were
//     1.25-1.5x slower (more blocks than the 4 per SM the 56 KB tiles allow).
//   - a third kernel, "states" (2026-11-24, 8a89850; benchmarks/results/scan-states-h200-8a89850.json): 4-16 lanes
//     per channel split its states and walk the whole sequence in one pass (no chunks, no second evaluation), the
//     per-(channel, step) work done once per tile in a shared-memory prologue. Validated (GPU tests against the CPU
//     op, states bit-equal to this loop's), and slower everywhere: mamba-2.8b B=1 L=512 60 vs 57 us, L=2048 227 vs
//     141, L=8192 902 vs 485, B=8 L=512 695 vs 167. Nsight Compute (B=1 L=2048): up to ~24 issued instructions per
//     state element and step against this loop's ~9 (each lane still takes its share of the per-step work, and the
//     sum of the lanes' partial y comes on top), so skipping the second pass does not pay; removed.
//   - the three launches of a chunked call as one cooperative launch (pass 1, grid barrier, the combine spread over
//     the grid, grid barrier, pass 3; 2026-11-24, benchmarks/results/scan-fused-h200-not-kept.json): bit-identical,
//     and 9-18% slower at every B=1 length (mamba-2.8b L=8192 563 vs 485 us): the passes fit in 96 registers apart,
//     not together (ptxas spills at that cap; at 128 the merged kernel barely spills but runs each step slower).
//
// Staged tiles (SSMTP_SCAN_STAGE, the launcher's stage_tile): per block (128 channels, or 64 with two threads per
// channel) and tile of TS = 32 steps, x, dt, z and the raw B/C rows are copied to shared memory by cp.async, one tile
// ahead (two buffers, 56 KB per 128-channel block in the final pass: 4 blocks per SM; 32 KB per 64-channel block),
// B/C widened to fp32 once per tile; y is written over the step's dt slot, and the tile leaves as 16-byte rows. A
// load group whose steps need no save check (and softplus on, the models' case) runs as one branch-free block of 8
// steps.
#include "common.cuh"
#include "ssm_math.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#define OP "scan_fwd"

namespace {

struct ScanArgs {
    const void *x, *dt, *B, *C, *z, *D, *dt_bias;
    const float *A;
    float *state;
    const int32_t *state_idx, *seq_lens;
    void *out;
    int64_t batch, dim, len, N, per_group, nslots;
    int64_t sx0, sx1, sx2, sdt0, sdt1, sdt2, sz0, sz1, sz2, so0, so1, so2;
    int64_t sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3;
    int64_t sA0, sA1, sD, sbias, ss0, ss1, ss2, sidx, slens;
    int64_t chunk; // Tc: steps per chunk; the last chunk also takes the remainder (length in [Tc, 2Tc))
    int nchunks;   // K
    int cb_per_group;
    int D_dtype, bias_dtype, softplus, load_state;
    SaveArgs sv; // optional intermediate states, see ssmtp.h
};

// The first save of sequence b at or after entry j whose position is > after (and whose slot is a valid other row):
// *pos = its position (-1 when none), *slot = its slot; returns its entry index.
__device__ __forceinline__ int64_t next_save(const ScanArgs &a, int64_t b, int64_t j, int64_t after, int64_t own,
                                             int64_t *pos, int64_t *slot) {
    for (; j < a.sv.n; j++) {
        const int64_t sv = a.sv.slot_at(b, j), p = a.sv.pos_at(b, j);
        if (sv >= 0 && sv < a.nslots && sv != own && p > after) {
            *pos = p;
            *slot = sv;
            return j;
        }
    }
    *pos = -1;
    *slot = -1;
    return j;
}

constexpr int THREADS = 128;

// Per-chunk scratch floats in out elements of type T: a float is 1 f32 element or 2 16-bit elements.
template <typename T> __device__ __forceinline__ void scr_put(T *row, int64_t st, int64_t j, float v) {
    if (sizeof(T) == 4) {
        ((float *)row)[j * st] = v;
    } else {
        const uint32_t u = __float_as_uint(v);
        ((uint16_t *)row)[(2 * j) * st] = (uint16_t)(u & 0xffffu);
        ((uint16_t *)row)[(2 * j + 1) * st] = (uint16_t)(u >> 16);
    }
}
template <typename T> __device__ __forceinline__ float scr_get(const T *row, int64_t st, int64_t j) {
    if (sizeof(T) == 4) return ((const float *)row)[j * st];
    const uint32_t lo = ((const uint16_t *)row)[(2 * j) * st], hi = ((const uint16_t *)row)[(2 * j + 1) * st];
    return __uint_as_float(lo | (hi << 16));
}

__device__ __forceinline__ void seq_info(const ScanArgs &a, int64_t b, int64_t *slot, int64_t *n) {
    *slot = a.state_idx ? (int64_t)a.state_idx[b * a.sidx] : b;
    int64_t len = a.len;
    if (a.seq_lens) {
        len = a.seq_lens[b * a.slens];
        len = len < 0 ? 0 : (len > a.len ? a.len : len); // clamped: no host-side check on the GPU path
    }
    *n = len;
}

// Shared-memory tile geometry for B/C (fp32): row of one time step. TPC == 1: NS floats (all lanes of a warp read
// the same address: broadcast). TPC > 1: part p's NS states at p * PART (NS = 16: 4 floats of padding, so the 8 lanes
// of a 16-byte access phase hit 8 distinct 4-bank groups; NS < 16: packed, the parts of one channel read adjacent
// 16-byte words).
template <int NS, int TPC> struct Tile {
    static constexpr int NSP = NS * TPC;                             // padded states per channel
    static constexpr int PART = TPC == 1 ? 0 : (NS == 16 ? 20 : NS); // offset of part p: p * PART
    static constexpr int RS = TPC == 1 ? NS : TPC * PART;            // floats per time step
    static constexpr int TT = NSP >= 128 ? 16 : 64;                  // steps per tile (smem <= 40 KB per block)
    static __device__ __forceinline__ int at(int t, int s) {
        return t * RS + (TPC == 1 ? s : (s / NS) * PART + s % NS);
    }
};

// Dynamic shared memory of the staged kernels (TS > 0): two buffers, each the x, dt (, z) rows of TS steps of the
// block's CPB channels and the raw B (, C) rows (16 states) of those steps; then B (, C) widened to fp32.
template <typename T, bool FINAL, int TS, int CPB = THREADS> struct Stage {
    static constexpr int ROWB = CPB * (int)sizeof(T);          // bytes of one step of one tensor
    static constexpr int PIECES = ROWB / 16;                   // 16-byte copies per row (TS > 0)
    static constexpr int NX = FINAL ? 3 : 2;                   // x, dt (, z)
    static constexpr int NBC = FINAL ? 2 : 1;                  // B (, C)
    static constexpr int XB = NX * TS * ROWB;                  // x/dt/z bytes per buffer
    static constexpr int BUF = XB + NBC * TS * 16 * (int)sizeof(T);
    static constexpr int FOFF = 2 * BUF;                       // offset of the fp32 B (, C) tile
    static constexpr int SMEM = FOFF + NBC * TS * 16 * 4;
};

// Passes 1 (FINAL = false: local chunk states) and 3 (FINAL = true: outputs, final state).
// grid: (ngroups * cb_per_group, chunks, batch); block: THREADS = (THREADS/TPC channels) x TPC parts.
// U: steps whose x/dt/z loads are issued together (8 for d_state 9..16, the models'; 4 otherwise).
// SA: A is the same for every state of a channel (a.sA1 == 0, Mamba-2 layers run through this op): exp(delta A) is
// evaluated once per (channel, step) instead of once per state element (the same value, so the same results).
// TS: staged tiles of TS steps (0: direct loads; see the header and stage_tile).
// Resident blocks per SM the registers are capped for (launch bound): 5 for one thread per channel and for the
// staged two (8 states per thread, 64 channels per block, 32 KB of shared memory; ptxas spilled at 6).
template <int NS, int TPC, int TS> constexpr int scan_min_blocks() {
    return NS > 16 ? 3 : (TPC == 1 || (TPC == 2 && TS)) ? 5 : 4;
}

template <typename T, int NS, int TPC, bool FINAL, int U = 4, bool SA = false, int TS = 0>
__global__ void __launch_bounds__(THREADS, scan_min_blocks<NS, TPC, TS>()) scan_kernel(const ScanArgs a) {
    using G = Tile<NS, TPC>;
    constexpr int CPB = THREADS / TPC;
    using SG = Stage<T, FINAL, TS, CPB>;
    __shared__ __align__(16) float smB_[TS ? 4 : G::TT * G::RS];
    __shared__ __align__(16) float smC_[(FINAL && !TS) ? G::TT * G::RS : 4];
    extern __shared__ __align__(16) unsigned char scan_dyn[];
    float *const smB = TS ? (float *)(scan_dyn + SG::FOFF) : smB_;
    float *const smC = TS ? smB + TS * 16 : smC_;

    const int tid = threadIdx.x, part = tid % TPC;
    const int64_t grp = blockIdx.x / a.cb_per_group, cb = blockIdx.x % a.cb_per_group;
    const int64_t cig = cb * CPB + tid / TPC;
    const bool active = cig < a.per_group;
    const int64_t c = grp * a.per_group + (active ? cig : a.per_group - 1);
    const int k = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t t_beg = (int64_t)k * a.chunk;
    const int64_t t_end = (k == a.nchunks - 1) ? a.len : t_beg + a.chunk;

    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    T *outp = (T *)a.out + b * a.so0 + c * a.so1;
    const bool has_state = a.state != nullptr;
    if (has_state && (slot < 0 || slot >= a.nslots)) { // padding row: zeros; bad slot: NaN; state untouched
        if (FINAL && active && part == 0) {
            const T fill = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
            for (int64_t t = t_beg; t < t_end; t++) outp[t * a.so2] = fill;
        }
        return;
    }
    const int64_t t_val = max(t_beg, min(t_end, n)); // steps [t_beg, t_val) are computed, [t_val, t_end) zero
    if (!FINAL && t_val == t_beg) return;            // nothing to carry (the combine stops before this chunk)

    float A2[NS], h[NS];
#pragma unroll
    for (int j = 0; j < NS; j++) {
        const int64_t s = (int64_t)part * NS + j;
        A2[j] = s < a.N ? a.A[c * a.sA0 + s * a.sA1] * SSM_LOG2E : 0.f;
        h[j] = 0.f;
    }
    if (FINAL) {
        if (a.nchunks == 1) {
            if (has_state && a.load_state) {
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    const int64_t s = (int64_t)part * NS + j;
                    if (s < a.N) h[j] = a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2];
                }
            }
        } else {
            if (t_val > t_beg) { // H_k, left by the combine in this chunk's own out row
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    const int64_t s = (int64_t)part * NS + j;
                    if (s < a.N) h[j] = scr_get<T>(outp + t_beg * a.so2, a.so2, s);
                }
            }
            __syncthreads(); // every part has read its scratch before any thread writes this row
        }
    }

    const float bias = a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias) : 0.f;
    const float Dv = (FINAL && a.D) ? ssm_load_param(a.D, a.D_dtype, c * a.sD) : 0.f;
    const T *__restrict__ xp = (const T *)a.x + b * a.sx0 + c * a.sx1;
    const T *__restrict__ dtp = (const T *)a.dt + b * a.sdt0 + c * a.sdt1;
    const T *__restrict__ zp = (FINAL && a.z) ? (const T *)a.z + b * a.sz0 + c * a.sz1 : nullptr;
    const T *__restrict__ Bp = (const T *)a.B + b * a.sB0 + grp * a.sB1;
    const T *__restrict__ Cp = (const T *)a.C + b * a.sC0 + grp * a.sC1;
    const bool softplus = a.softplus != 0, has_z = zp != nullptr;
    const bool store = TS ? true : (active && part == 0); // staged: every lane active, one per channel
    float sum_delta = 0.f;
    // intermediate-state saves falling in this chunk's steps (FINAL pass only; positions count steps, 1-based)
    int64_t sv_j = 0, sv_pos = -1, sv_slot = -1;
    if (FINAL && a.sv.pos) sv_j = next_save(a, b, 0, t_beg, slot, &sv_pos, &sv_slot);

    // The state update of one step (tile row tt) for this thread's NS states; returns this thread's part of y
    // (FINAL; 0 otherwise), before the sum over the TPC threads of the channel.
    auto update = [&](float delta, float xv, int tt) -> float {
        const float dx = delta * xv;
        const float dAs = SA ? ssm_ex2(delta * A2[0]) : 0.f;
        const float *Bt = smB + tt * G::RS + part * G::PART;
        const float *Ct = smC + (FINAL ? tt * G::RS + part * G::PART : 0);
        float y = 0.f, y1 = 0.f; // two partial sums: half the serial FMA chain
        if (NS >= 4) {
#pragma unroll
            for (int j = 0; j < NS; j += 4) {
                const float4 b4 = *(const float4 *)(Bt + j);
                const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
                float cc[4] = {0.f, 0.f, 0.f, 0.f};
                if (FINAL) {
                    const float4 c4 = *(const float4 *)(Ct + j);
                    cc[0] = c4.x; cc[1] = c4.y; cc[2] = c4.z; cc[3] = c4.w;
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float dA = SA ? dAs : ssm_ex2(delta * A2[j + e]);
                    h[j + e] = fmaf(dA, h[j + e], dx * bb[e]);
                    if (FINAL) {
                        if (e & 1) y1 = fmaf(h[j + e], cc[e], y1);
                        else y = fmaf(h[j + e], cc[e], y);
                    }
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const float dA = SA ? dAs : ssm_ex2(delta * A2[j]);
                h[j] = fmaf(dA, h[j], dx * Bt[j]);
                if (FINAL) y = fmaf(h[j], Ct[j], y);
            }
        }
        return y + y1;
    };
    // D x and the gate on a channel's y
    auto finish = [&](float y, float xv, float zv) -> float {
        y = fmaf(Dv, xv, y);
        const float gate = ssm_silu_out<T>(zv);
        return has_z ? y * gate : y;
    };
    // One time step at tile row tt (absolute step t); returns y (FINAL: D x and the gate applied). FAST (a
    // std::true_type): softplus on and no save position after this step, both known to the caller, which tests them
    // once per load group; the step is then branch-free (the gate by selection), so the scheduler can overlap the
    // unrolled steps of a group. Otherwise (std::false_type) both are checked here.
    auto step = [&](auto fast, float xv, float dtv, float zv, int tt, int64_t t) -> float {
        constexpr bool F = decltype(fast)::value;
        float delta = dtv + bias;
        if (F || softplus) delta = ssm_softplus_fast(delta);
        float y = update(delta, xv, tt);
        if constexpr (!FINAL) {
            sum_delta += delta;
            return 0.f;
        } else {
            if constexpr (!F) {
                if (t + 1 == sv_pos) { // uniform across the block (one sequence per block)
                    if (active) {
#pragma unroll
                        for (int j = 0; j < NS; j++) {
                            const int64_t s = (int64_t)part * NS + j;
                            if (s < a.N) a.state[sv_slot * a.ss0 + c * a.ss1 + s * a.ss2] = h[j];
                        }
                    }
                    sv_j = next_save(a, b, sv_j + 1, t + 1, slot, &sv_pos, &sv_slot);
                }
            }
#pragma unroll
            for (int o = TPC / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
            return finish(y, xv, zv);
        }
    };
    // Whether the steps [t, t + n) can take the fast path: softplus on, no save position after any of them
    // (uniform: one sequence per block).
    auto fast_group = [&](int64_t t, int n) { return softplus && !(FINAL && sv_pos > t && sv_pos <= t + n); };
    const std::true_type FAST{};
    const std::false_type CHECK{};

    if constexpr (TS == 0) {
    for (int64_t t0 = t_beg; t0 < t_val; t0 += G::TT) {
        const int nt = (int)min((int64_t)G::TT, t_val - t0);
        __syncthreads(); // the previous tile's readers are done
        for (int i = tid; i < nt * G::NSP; i += THREADS) {
            const int tt = i / G::NSP, s = i % G::NSP;
            float bv = 0.f, cv = 0.f;
            if (s < a.N) {
                bv = to_f32<T>(Bp[s * a.sB2 + (t0 + tt) * a.sB3]);
                if (FINAL) cv = to_f32<T>(Cp[s * a.sC2 + (t0 + tt) * a.sC3]);
            }
            smB[G::at(tt, s)] = bv;
            if (FINAL) smC[G::at(tt, s)] = cv;
        }
        __syncthreads();
        // one step at a time, checking for saves (the tail, and load groups holding a save position)
        auto one = [&](int tt) {
            const int64_t t = t0 + tt;
            const float y = step(CHECK, to_f32<T>(xp[t * a.sx2]), to_f32<T>(dtp[t * a.sdt2]),
                                 (zp && store) ? to_f32<T>(zp[t * a.sz2]) : 0.f, tt, t);
            if (FINAL && store) outp[t * a.so2] = from_f32<T>(y);
        };
        // Groups of U steps: loads first, then the steps, each checking softplus and saves itself (a branchier body
        // than the staged path's; measured, the staged path's branch-free groups made this loop ~5-20% slower here:
        // its loads are waited for at the group's first step either way).
        int tt = 0;
        for (; tt + U <= nt; tt += U) {
            float xv[U], dv[U], zv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t t = t0 + tt + u;
                xv[u] = to_f32<T>(xp[t * a.sx2]);
                dv[u] = to_f32<T>(dtp[t * a.sdt2]);
                zv[u] = (zp && store) ? to_f32<T>(zp[t * a.sz2]) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const float y = step(CHECK, xv[u], dv[u], zv[u], tt + u, t0 + tt + u);
                if (FINAL && store) outp[(t0 + tt + u) * a.so2] = from_f32<T>(y);
            }
        }
        for (; tt < nt; tt++) one(tt);
    }
    } else {
        // Staged tiles: the next tile's rows are in flight (cp.async) while this one is computed, so a step reads
        // x/dt/z from shared memory instead of waiting a memory round trip per load group (Nsight Compute, B=8
        // L=2048: a third of the unstaged kernel's warp time was that wait). y goes back into the step's dt slot and
        // leaves as 16-byte rows once the tile is done. Every lane is active (the launcher requires per_group % CPB
        // == 0) and every copy is 16 bytes (its layout checks).
        // TPC = 2 (8 states per thread: twice the threads per channel, for calls with few sequences x channels):
        // in a load group, lane `part` owns the steps of its parity: it reads their dt and z, evaluates their
        // softplus (delta reaches the other lane by a shuffle) and their gate, and writes their y, so the per-step
        // work outside the states is not repeated by both lanes. The same values and sums in the same order as the
        // unstaged TPC = 2 loop (bit-equal).
        static_assert(sizeof(T) == 2 && ((TPC == 1 && NS == 16) || (TPC == 2 && NS == 8)),
                      "staged tiles: 16-bit inputs, 16 states per channel over 1 or 2 threads");
        const int64_t c0 = grp * a.per_group + cb * CPB; // the block's first channel
        const T *xb = (const T *)a.x + b * a.sx0 + c0;
        const T *db = (const T *)a.dt + b * a.sdt0 + c0;
        const T *zb = zp ? (const T *)a.z + b * a.sz0 + c0 : nullptr;
        T *ob = (T *)a.out + b * a.so0 + c0;
        constexpr int PC = SG::PIECES;
        auto issue = [&](int64_t t0, int nt, int bi) { // steps [t0, t0 + nt) into buffer bi
            unsigned char *buf = scan_dyn + bi * SG::BUF;
            for (int i = tid; i < nt * PC; i += THREADS) {
                const int r = i / PC, q = (i % PC) * 8; // step row, first channel of the 16-byte piece
                const int64_t t = t0 + r;
                ssm_cp16(buf + r * SG::ROWB + q * 2, xb + t * a.sx2 + q);
                ssm_cp16(buf + (TS + r) * SG::ROWB + q * 2, db + t * a.sdt2 + q);
                if (zb) ssm_cp16(buf + (2 * TS + r) * SG::ROWB + q * 2, zb + t * a.sz2 + q);
            }
            unsigned char *bc = buf + SG::XB;
            for (int i = tid; i < SG::NBC * nt * 2; i += THREADS) {
                const int m = i / (nt * 2), rem = i - m * nt * 2, r = rem >> 1, q = (rem & 1) * 8;
                const T *src = (m ? Cp + (t0 + r) * a.sC3 : Bp + (t0 + r) * a.sB3) + q;
                ssm_cp16(bc + (m * TS + r) * 32 + q * 2, src);
            }
            ssm_cp_commit();
        };
        if (t_beg < t_val) issue(t_beg, (int)min((int64_t)TS, t_val - t_beg), 0);
        int bi = 0;
        for (int64_t t0 = t_beg; t0 < t_val; t0 += TS, bi ^= 1) {
            const int nt = (int)min((int64_t)TS, t_val - t0);
            ssm_cp_wait<0>();
            __syncthreads(); // this tile landed for every thread; the previous tile (other buffer, fp32 B/C) is done
            if (t0 + TS < t_val) issue(t0 + TS, (int)min((int64_t)TS, t_val - t0 - TS), bi ^ 1);
            unsigned char *buf = scan_dyn + bi * SG::BUF;
            for (int i = tid; i < SG::NBC * nt * 2; i += THREADS) { // B (, C) of this tile to fp32, once
                const int m = i / (nt * 2), rem = i - m * nt * 2, r = rem >> 1, q = (rem & 1) * 8;
                float f[8];
                Pack16<T>::to_f32(*(const uint4 *)(buf + SG::XB + (m * TS + r) * 32 + q * 2), f);
                float *dst = (m ? smC : smB) + r * 16 + q;
                *(float4 *)dst = make_float4(f[0], f[1], f[2], f[3]);
                *(float4 *)(dst + 4) = make_float4(f[4], f[5], f[6], f[7]);
            }
            __syncthreads();
            // this channel's x, dt (y replaces dt step by step) and z rows
            const T *xs = (const T *)buf + tid / TPC;
            T *ds = (T *)buf + TS * CPB + tid / TPC;
            const T *zs = ds + TS * CPB;
            auto one = [&](int tt) { // one step, checking for saves
                // the dt slot is read by the lane that then writes y there (lane 1 of a pair takes dt by a shuffle:
                // no other lane's read to order against the write)
                float dtv = part == 0 ? to_f32<T>(ds[tt * CPB]) : 0.f;
                if constexpr (TPC == 2) dtv = __shfl_sync(0xffffffffu, dtv, (tid & 31) & ~1);
                const float y = step(CHECK, to_f32<T>(xs[tt * CPB]), dtv, zb ? to_f32<T>(zs[tt * CPB]) : 0.f, tt,
                                     t0 + tt);
                if (FINAL && part == 0) ds[tt * CPB] = from_f32<T>(y);
            };
            int tt = 0;
            for (; tt + U <= nt; tt += U) {
                if (!fast_group(t0 + tt, U)) {
#pragma unroll 1
                    for (int u = 0; u < U; u++) one(tt + u);
                    continue;
                }
                float xv[U];
#pragma unroll
                for (int u = 0; u < U; u++) xv[u] = to_f32<T>(xs[(tt + u) * CPB]);
                if constexpr (TPC == 1) {
                    float dv[U], zv[U];
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        dv[u] = to_f32<T>(ds[(tt + u) * CPB]);
                        zv[u] = zb ? to_f32<T>(zs[(tt + u) * CPB]) : 0.f;
                    }
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        const float y = step(FAST, xv[u], dv[u], zv[u], tt + u, t0 + tt + u);
                        if (FINAL) ds[(tt + u) * CPB] = from_f32<T>(y);
                    }
                } else {
                    constexpr int H = U / 2; // steps owned per lane: rows tt + 2k + part
                    const int lane = tid & 31;
                    float dq[H], zq[H], yq[H]; // (x read again for the owned steps' D x: fewer live registers)
#pragma unroll
                    for (int k = 0; k < H; k++) {
                        const int r = tt + 2 * k + part;
                        dq[k] = ssm_softplus_fast(to_f32<T>(ds[r * CPB]) + bias);
                        zq[k] = zb ? to_f32<T>(zs[r * CPB]) : 0.f;
                    }
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        const float delta = __shfl_sync(0xffffffffu, dq[u / 2], (lane & ~1) | (u & 1));
                        float y = update(delta, xv[u], tt + u);
                        if constexpr (!FINAL) {
                            sum_delta += delta;
                        } else {
                            y += __shfl_xor_sync(0xffffffffu, y, 1);
                            if ((u & 1) == part) yq[u / 2] = y;
                        }
                    }
                    if constexpr (FINAL) {
#pragma unroll
                        for (int k = 0; k < H; k++) {
                            const int r = tt + 2 * k + part;
                            ds[r * CPB] = from_f32<T>(finish(yq[k], to_f32<T>(xs[r * CPB]), zq[k]));
                        }
                    }
                }
            }
            for (; tt < nt; tt++) one(tt);
            if (FINAL) {
                __syncthreads(); // the tile's y complete
                for (int i = tid; i < nt * PC; i += THREADS) {
                    const int r = i / PC, q = (i % PC) * 8;
                    *(uint4 *)(ob + (t0 + r) * a.so2 + q) = *(const uint4 *)(buf + (TS + r) * SG::ROWB + q * 2);
                }
            }
        }
    }

    if (!FINAL) { // local chunk state and sum of delta into this chunk's out row (read by the combine)
        if (active) {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const int64_t s = (int64_t)part * NS + j;
                if (s < a.N) scr_put<T>(outp + t_beg * a.so2, a.so2, s, h[j]);
            }
            if (part == 0) scr_put<T>(outp + t_beg * a.so2, a.so2, a.N, sum_delta);
        }
        return;
    }
    if (store)
        for (int64_t t = t_val; t < t_end; t++) outp[t * a.so2] = from_f32<T>(0.f);
    if (has_state && active) {
        const bool last = n > 0 ? (t_beg <= n - 1 && n - 1 < t_end) : (k == 0 && !a.load_state);
        if (last) {
#pragma unroll
            for (int j = 0; j < NS; j++) {
                const int64_t s = (int64_t)part * NS + j;
                if (s < a.N) a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] = n > 0 ? h[j] : 0.f;
            }
        }
    }
}

// Pass 2: one thread per (seq, channel, state), channel fastest; sequential over the chunks holding valid steps.
// Loads of up to CU chunks are issued before their (dependent) updates. Register-capped at 4 blocks of 256 per SM
// (uncapped, ptxas gave it 214 registers: one block per SM, and at B=1 a third of the scan's time).
constexpr int CU = 4;
template <typename T>
__global__ void __launch_bounds__(256, 4) scan_combine_kernel(const ScanArgs a) {
    // 32-bit index arithmetic (the launcher checks batch x dim x N < 2^32): a 64-bit division is a called subroutine
    const uint32_t i = blockIdx.x * 256u + threadIdx.x, dim = (uint32_t)a.dim, N = (uint32_t)a.N;
    if (i >= (uint32_t)(a.batch * a.dim * a.N)) return;
    const int64_t c = i % dim, s = (i / dim) % N, b = i / (dim * N);
    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    const bool has_state = a.state != nullptr;
    if (has_state && (slot < 0 || slot >= a.nslots)) return;
    if (n == 0) return;
    const int kv = (int)min((n - 1) / a.chunk, (int64_t)a.nchunks - 1) + 1; // chunks holding valid steps
    float H = (has_state && a.load_state) ? a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] : 0.f;
    const float As = a.A[c * a.sA0 + s * a.sA1];
    T *row = (T *)a.out + b * a.so0 + c * a.so1;
    const int64_t cs = a.chunk * a.so2; // elements from one chunk's first row to the next's
    for (int k0 = 0; k0 < kv; k0 += CU) {
        float hl[CU], sd[CU];
#pragma unroll
        for (int u = 0; u < CU; u++) {
            hl[u] = 0.f;
            sd[u] = 0.f;
            if (k0 + u < kv - 1) {
                const T *r = row + (k0 + u) * cs;
                hl[u] = scr_get<T>(r, a.so2, s);
                sd[u] = scr_get<T>(r, a.so2, a.N);
            }
        }
#pragma unroll
        for (int u = 0; u < CU; u++) {
            if (k0 + u < kv) {
                scr_put<T>(row + (k0 + u) * cs, a.so2, s, H);
                H = fmaf(expf(As * sd[u]), H, hl[u]);
            }
        }
    }
}

// Staged tiles (SSMTP_SCAN_STAGE): "auto" or unset = 32-step tiles where the call's layout allows them, direct
// loads elsewhere; "0" = direct loads; "16" / "32" = that tile, and an error where the layout does not allow it
// (tests use it to know the staged kernel ran). Staging needs 16-bit x/dt/z/out with channel stride 1 and 16-byte
// aligned rows (every batch and step stride a multiple of 8 elements), d_state 16 with B/C states contiguous and aligned,
// and groups of whole blocks (cpb channels: 128, or 64 with two threads per channel): the models' layouts (x and z
// views of in_proj's output, B and C of x_proj's).
static ssmtp_status_t stage_tile(const ScanArgs &a, int cpb, int *ts) {
    const char *env = getenv("SSMTP_SCAN_STAGE");
    int want = -1; // auto
    if (env && *env && strcmp(env, "auto") != 0) {
        if (strcmp(env, "0") == 0) want = 0;
        else if (strcmp(env, "16") == 0) want = 16;
        else if (strcmp(env, "32") == 0) want = 32;
        else return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_SCAN_STAGE=%s (auto, 0, 16 or 32)", env);
    }
    *ts = 0;
    if (want == 0) return SSMTP_OK;
    auto al = [](const void *p) { return ((uintptr_t)p & 15) == 0; };
    auto m8 = [](int64_t s) { return s % 8 == 0; };
    const bool one = a.batch == 1;
    const bool ok = a.N == 16 && a.per_group % cpb == 0 && a.sx1 == 1 && a.sdt1 == 1 && al(a.x) && al(a.dt) &&
                    (one || (m8(a.sx0) && m8(a.sdt0))) && m8(a.sx2) && m8(a.sdt2) &&
                    (!a.z || (a.sz1 == 1 && al(a.z) && (one || m8(a.sz0)) && m8(a.sz2))) && a.sB2 == 1 &&
                    a.sC2 == 1 && al(a.B) && al(a.C) && (one || (m8(a.sB0) && m8(a.sC0))) && m8(a.sB1) &&
                    m8(a.sC1) && m8(a.sB3) && m8(a.sC3) && a.so1 == 1 && al(a.out) && (one || m8(a.so0)) &&
                    m8(a.so2);
    if (!ok) {
        if (want > 0)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_SCAN_STAGE=%d but this call's layout cannot be staged "
                              "(needs d_state 16, 16-bit channel-contiguous 16-byte aligned rows, groups of %d "
                              "channels)", want, cpb);
        return SSMTP_OK;
    }
    *ts = want > 0 ? want : 32;
    return SSMTP_OK;
}

// Time chunks of a loop-kernel call whose one pass is per_chunk blocks, with slots blocks resident on the GPU at
// once: as many as fill one wave when one pass would fill less than a third of it, each >= 64 steps.
static int64_t scan_chunks(const ScanArgs &a, int64_t per_chunk, int64_t slots, size_t elem) {
    int64_t K = 1;
    // floor, not ceil: K * per_chunk must fit in one wave (measured, B=1 d_inner 5120 L=2048: 16 chunks = 640
    // blocks in 660 slots 177 us; 17 chunks = 680 blocks, a second wave, 218 us).
    if (per_chunk * 3 < slots) K = slots / per_chunk;
    const char *env = getenv("SSMTP_SCAN_CHUNKS"); // tuning override (benchmarks): exact chunk count
    if (env && *env) K = atoll(env);
    // Chunks hold their scratch (N+1 floats in out elements) and amortise the second pass: >= 64 steps by
    // default; SSMTP_SCAN_MIN_CHUNK overrides (benchmarks; never below the scratch).
    const int64_t scratch = (a.N + 1) * (int64_t)(4 / elem);
    int64_t min_chunk = 64;
    const char *envm = getenv("SSMTP_SCAN_MIN_CHUNK");
    if (envm && *envm && atoll(envm) > 0) min_chunk = atoll(envm);
    const int64_t min_len = scratch > min_chunk ? scratch : min_chunk;
    if (K > a.len / min_len) K = a.len / min_len;
    if (K < 1) K = 1;
    if (K > 65535) K = 65535;
    return K;
}

template <typename T, int NS, int TPC, int U = 4, bool SA = false> struct Launch {
    static constexpr bool STAGEABLE = ((TPC == 1 && NS == 16) || (TPC == 2 && NS == 8)) && !SA && sizeof(T) == 2 &&
                                      U == 8;

    // ts: the staged tile stage_tile gave for this kernel's channels per block, when the caller has it (-1: ask)
    static ssmtp_status_t run(ScanArgs &a, int device, cudaStream_t st, int ts = -1) {
        if constexpr (STAGEABLE) {
            if (ts < 0) SSMTP_TRY(stage_tile(a, THREADS / TPC, &ts));
            if (ts == 32) return go<32>(a, device, st);
            if (ts == 16) return go<16>(a, device, st);
        }
        // unstaged, two threads per channel load 4 steps at a time (8 spilled)
        if constexpr (TPC == 2 && U == 8) return Launch<T, NS, TPC, 4, SA>::run(a, device, st);
        else return go<0>(a, device, st);
    }

    template <int TS> static ssmtp_status_t go(ScanArgs &a, int device, cudaStream_t st) {
        constexpr int CPB = THREADS / TPC;
        using G = Tile<NS, TPC>;
        a.cb_per_group = (int)((a.per_group + CPB - 1) / CPB);
        const int64_t ngroups = a.dim / a.per_group;
        const int64_t nblk = ngroups * a.cb_per_group; // blocks per (sequence, chunk)
        if (nblk > 0x7fffffff || a.batch > 65535)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": grid too large (batch=%lld dim=%lld)", (long long)a.batch,
                              (long long)a.dim);
        const auto kfin = scan_kernel<T, NS, TPC, true, U, SA, TS>;
        const auto kloc = scan_kernel<T, NS, TPC, false, U, SA, TS>;
        const int sfin = Stage<T, true, TS, CPB>::SMEM, sloc = Stage<T, false, TS, CPB>::SMEM;
        SSMTP_TRY(ssm_allow_smem((const void *)kfin, sfin, device));
        SSMTP_TRY(ssm_allow_smem((const void *)kloc, sloc, device));

        // Chunk count: slots = blocks resident on the whole GPU at full occupancy.
        int sms = 132;
        SSMTP_TRY(ssm_sm_count(device, &sms));
        const int64_t K = scan_chunks(a, a.batch * nblk, (int64_t)sms * ssm_blocks_per_sm((const void *)kfin, THREADS,
                                                                                            sfin), sizeof(T));
        a.nchunks = (int)K;
        a.chunk = K == 1 ? a.len : a.len / K; // the last chunk takes the remainder
        (void)G::TT;

        const dim3 block(THREADS);
        if (K > 1) {
            kloc<<<dim3((unsigned)nblk, (unsigned)(K - 1), (unsigned)a.batch), block, sloc, st>>>(a);
            SSMTP_CUDA_CHECK_LAUNCH(OP);
            const int64_t nc = a.batch * a.dim * a.N;
            if (nc > 0xffffffffLL)
                return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch x dim x d_state = %lld >= 2^32", (long long)nc);
            scan_combine_kernel<T><<<(unsigned)((nc + 255) / 256), 256, 0, st>>>(a);
            SSMTP_CUDA_CHECK_LAUNCH(OP);
        }
        kfin<<<dim3((unsigned)nblk, (unsigned)K, (unsigned)a.batch), block, sfin, st>>>(a);
        SSMTP_CUDA_CHECK_LAUNCH(OP);
        return SSMTP_OK;
    }
};

// Threads per channel at d_state 9..16 when SSMTP_SCAN_TPC does not say, for calls both staged kernels can take: the
// one with the lower estimate of the busiest SM's work, blocks per SM (ceil(grid / SMs), time chunks as the
// launcher would pick them for that kernel's occupancy) x channels per block x steps per block, x 1.1 for two
// threads per channel (per channel and step they issue more) and x 1.5 for a chunked call (the local pass and the
// combine on top of the final pass), plus 8000 for one thread per channel (a fixed cost per call in the same units,
// the channel-steps of one SM: one thread's longer per-step chain shows as a constant that favours two on short
// calls). The constants are fitted to the measurements below, not derived. Two win where one leaves SMs with few or
// unevenly many blocks, or needs time chunks to fill them.
// Measured on H200 (2026-11-25, bench_ops.py, bf16, us, one thread -> two per channel wherever the 64-channel grid
// fit one wave, the first rule; benchmarks/results/scan-tpc2-h200-06c1b21-{tpc1,rule1}.json): mamba-2.8b
// TP=1 B=8 L=512 / 2048 170.4 -> 162.7 / 651.5 -> 629.0, B=1 L=512 56.9 -> 48.8, L=2048 143.3 -> 150.2; its TP=2
// shard (2560 channels) B=8 140.4 -> 103.8 / 481.6 -> 398.4, B=1 43.4 -> 34.1 / 87.1 -> 82.0; falcon-mamba-7b /
// zamba-7b TP=2 shards B=8 L=2048 469.0 -> 511.0 / 468.1 -> 513.7, B=1 L=2048 falcon-mamba-7b TP=1 214.0 -> 216.7,
// zamba-7b 195.5 -> 216.4. The second rule (x 1.15 for two, x 1.7 chunked, no constant; bd42ac3,
// scan-tpc2-h200-bd42ac3-{tpc1,auto}.json): two threads at mamba-2.8b TP=1 B=1 L=512 56.8 -> 47.9, B=8 170.6 ->
// 162.8 / 650.9 -> 626.6, TP=2 B=1 L=512 43.3 -> 34.1, B=8 140.3 -> 103.9 / 480.3 -> 397.2. A sweep of both counts
// over 78 shapes (three models, TP=1 and 2 shards, B = 1..8, L = 256..4096; scan-tpc-sweep-h200-882a143.json) found
// that rule choosing one thread on 28 of them where two were 3-33% faster, nearly all short chunked calls (B = 1-2, L
// <= 1024; mamba-2.8b TP=1 B=1 L=819, the 8192-token prompt's 10% suffix behind a prefix-cache hit: 75.3 vs 70.2 us),
// 8484 us summed against 8319 for the faster count of every shape. These constants, measured after the change
// (4b3dca9, scan-tpc-rule-h200-4b3dca9.json): 8330 us over the same shapes, one of them more than 2% slower than its
// faster count (falcon-mamba-7b TP=2 B=1 L=1536, 2.2%); B=1 L=8192, B=8 L=2048 and B=16 L=512 of all three models
// also take the faster count. The engine's prefix-hit TTFT (mamba-2.8b, 8192 tokens, 90% cached) did not move
// (hit 14.9-15.3 ms either way, ttft-scan-rule-h200-4b3dca9.json): its suffix call is not the sweep's shape.
// *ts: the staged tile of the chosen count's kernel where that was worked out here (-1 otherwise), so that the
// launcher does not ask stage_tile again.
template <typename T> static int scan_auto_tpc(const ScanArgs &a, int device, int *ts) {
    *ts = -1;
    if constexpr (sizeof(T) != 2) {
        return 1;
    } else {
        int ts1 = 0, ts2 = 0, sms = 0;
        if (stage_tile(a, THREADS / 2, &ts2) != SSMTP_OK || ts2 == 0 || ssm_sm_count(device, &sms) != SSMTP_OK) {
            ssmtp_clear_error();
            return 1;
        }
        if (stage_tile(a, THREADS, &ts1) != SSMTP_OK || ts1 == 0) { // only two threads per channel stage
            ssmtp_clear_error();
            *ts = ts2;
            return 2;
        }
        const int64_t ngroups = a.dim / a.per_group;
        auto work = [&](const void *k, int smem, int tpc) -> double {
            const int64_t cpb = THREADS / tpc, per_chunk = a.batch * ngroups * ((a.per_group + cpb - 1) / cpb);
            if (ssm_allow_smem(k, smem, device) != SSMTP_OK) return 1e300;
            const int64_t K = scan_chunks(a, per_chunk, (int64_t)sms * ssm_blocks_per_sm(k, THREADS, smem), 2);
            const double per_sm = (double)((per_chunk * K + sms - 1) / sms);
            const double steps = (double)a.len / (double)K * (K > 1 ? 1.5 : 1.0);
            return per_sm * (double)cpb * (tpc == 2 ? 1.1 : 1.0) * steps + (tpc == 1 ? 8000.0 : 0.0);
        };
        const double w1 = ts1 == 16 ? work((const void *)scan_kernel<T, 16, 1, true, 8, false, 16>,
                                           Stage<T, true, 16>::SMEM, 1)
                                    : work((const void *)scan_kernel<T, 16, 1, true, 8, false, 32>,
                                           Stage<T, true, 32>::SMEM, 1);
        const double w2 = ts2 == 16 ? work((const void *)scan_kernel<T, 8, 2, true, 8, false, 16>,
                                           Stage<T, true, 16, THREADS / 2>::SMEM, 2)
                                    : work((const void *)scan_kernel<T, 8, 2, true, 8, false, 32>,
                                           Stage<T, true, 32, THREADS / 2>::SMEM, 2);
        ssmtp_clear_error();
        *ts = w2 < w1 ? ts2 : ts1;
        return w2 < w1 ? 2 : 1;
    }
}

template <typename T> ssmtp_status_t dispatch_n(ScanArgs &a, int device, cudaStream_t st) {
    const int64_t N = a.N;
    // One A per channel (state stride 0) with d_state > 8: the SA kernels (one exp per channel and step). At d_state
    // 33..64 (Mamba-2: 64) one thread holds all states of its channel (no per-state A to keep, so they fit in registers
    // unspilled at 3 blocks per SM): B/C tiles are shared by 128 channels per block instead of 32, and y needs no
    // shuffles.
    const bool sa = a.sA1 == 0 && N > 8;
    if (N <= 1) return Launch<T, 1, 1>::run(a, device, st);
    if (N <= 2) return Launch<T, 2, 1>::run(a, device, st);
    if (N <= 4) return Launch<T, 4, 1>::run(a, device, st);
    if (N <= 8) return Launch<T, 8, 1>::run(a, device, st);
    if (N <= 16) {
        // d_state 9..16 (the models'): 1 or 2 threads per channel (scan_auto_tpc); 2 or 4 (8 or 4 states each)
        // multiply the threads when there are few sequences x channels, at the cost of splitting or repeating the
        // per-step softplus/SiLU work. SSMTP_SCAN_TPC = auto (default), 1, 2 or 4 (benchmarks, tests).
        // x/dt/z loads 8 steps at a time by default (measured 5-13% faster than 4 on every swept shape, same
        // occupancy); SSMTP_SCAN_U=4 selects 4 (benchmarks, tests; one thread per channel unless SSMTP_SCAN_TPC
        // says otherwise).
        const char *env = getenv("SSMTP_SCAN_TPC"), *envu = getenv("SSMTP_SCAN_U");
        const bool u4 = envu && atoi(envu) == 4;
        int tpc = 0, ts = -1;
        if (env && *env && strcmp(env, "auto") != 0) {
            tpc = atoi(env);
            if (tpc != 1 && tpc != 2 && tpc != 4)
                return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_SCAN_TPC=%s (auto, 1, 2 or 4)", env);
        } else {
            tpc = sa || u4 ? 1 : scan_auto_tpc<T>(a, device, &ts);
        }
        if (tpc == 2) return u4 ? Launch<T, 8, 2>::run(a, device, st) : Launch<T, 8, 2, 8>::run(a, device, st, ts);
        if (tpc == 4) return Launch<T, 4, 4>::run(a, device, st);
        if (u4) return Launch<T, 16, 1, 4>::run(a, device, st);
        if (sa) return Launch<T, 16, 1, 8, true>::run(a, device, st);
        return Launch<T, 16, 1, 8>::run(a, device, st, ts);
    }
    if (N <= 32) return sa ? Launch<T, 16, 2, 4, true>::run(a, device, st) : Launch<T, 16, 2>::run(a, device, st);
    if (N <= 64) return sa ? Launch<T, 64, 1, 4, true>::run(a, device, st) : Launch<T, 16, 4>::run(a, device, st);
    if (N <= 128) return sa ? Launch<T, 16, 8, 4, true>::run(a, device, st) : Launch<T, 16, 8>::run(a, device, st);
    if (N <= 256) return sa ? Launch<T, 16, 16, 4, true>::run(a, device, st) : Launch<T, 16, 16>::run(a, device, st);
    return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": d_state=%lld > 256", (long long)N);
}


// ============================================================================================================
// Chunked kernel (SSMTP_SCAN_KERNEL=chunked): the sequence walked in chunks of T = P * I steps by one block per
// (sequence, channel block); inside a chunk, P lanes per channel each own I = 8 consecutive steps and the chunk is
// scanned in parallel over the lanes.
//
// Per chunk: the block stages x, dt, z (T steps x CB channels, fp32) and B, C (NP states x T steps, fp32, states of
// the channel's group) in shared memory with coalesced loads (16-byte vectors where the layout allows: channel-
// contiguous x/dt/z rows, state-contiguous B/C rows; element loads otherwise), and asks L2 for the next chunk's
// rows (bulk prefetch, sm_90) so that those loads wait for L2 rather than DRAM. Then per state n, with
// a_t = exp(delta_t A_n), b_t = delta_t B_t,n x_t (h_t = a_t h_{t-1} + b_t):
//   1. each lane runs its I steps from h = 0: local end state hl, and its decay prod(a_t) = exp(A_n sum(delta));
//   2. an inclusive scan of the pairs (prod a, hl) over the P lanes (warp shuffles, log2 P levels; lane 0's hl
//      continued from the state carried in from the previous chunk) gives each lane its end state, and so the
//      next lane its incoming state;
//   3. each lane runs its I steps again from that state (a_t, b_t kept in registers, no second exp), adding
//      h_t C_t,n to y_t; the last lane's end state is the carry into the next chunk (every lane of the channel
//      holds it).
// y is then reduced over the state groups (d_state > 16: SG groups of 16 states per channel, adjacent lanes), D x
// and silu(z) applied, and written once. Steps past the sequence's length run with delta = 0 (a = 1, b = 0: the
// state passes through) and are written as zeros.
//
// Lane layout in a warp: lane = channel * (SG * P) + group * P + part; chunk = P * I steps; CB = 256 / (SG * P)
// channels per block. P is the launcher's choice for d_state <= 16 (4, 8 or 16, from an estimate of waves x cost per
// step: the scan over lanes costs ~(4 log2 P + 4) / I instructions per state element on top of the ~7 of the
// recurrence), fixed per SG for larger d_state.
//
// Bytes per (channel, step), bf16 with z: x, dt, z read + out written = 8 B, as for the loop kernel; B/C per (group,
// step) come from L2 after the first block (they are re-read by every channel block: 2 N x 2 B per block-step).
// Expected limiter (d_state 16, bf16, P = 8): instruction issue and the MUFU, not HBM. Per state element and step:
// 2 FMUL + ex2 + 3 FFMA (pass 1: a, b, local state; pass 2: state, y) + 0.5 shared loads + the scan's share
// (~17 instructions and one ex2 per state per lane per 8 steps) = ~9 issue slots; per (channel, step) another ~30
// (softplus, SiLU, D, staging, conversions, store). At 128 issue slots/clk/SM: (16 x 9 + 30) / 128 = ~1.35 clk per
// (channel, step) per SM, i.e. 132 SMs x 1.98 GHz / 1.35 x 8 B = ~1.55 TB/s (~36% of the 4.26 TB/s copy rate). The
// MUFU (16/clk/SM) needs 16 + 2 (scan) + 2 (softplus, SiLU) = 20 ops: 1.25 clk, ~40%. So for 16-bit inputs at
// d_state 16 no kernel that evaluates exp(delta A) per state element on the MUFU reaches 50% of the copy rate
// (even at zero overhead: 18 MUFU ops = 1.125 clk = 44%); f32 inputs (16 B per (channel, step)) double the bytes
// for the same arithmetic. What this kernel removes is the loop kernel's latency bound (few warps, each waiting a
// memory round trip per load group): all loads are block-cooperative and coalesced, and the block count is
// batch x dim x P / 256 with no combine passes.
// Resources (ptxas, sm_90, CUDA 13.0): 128 registers at the 2-blocks-per-SM bound (12-24 B spilled for d_state <= 16,
// 24-52 B for the larger-state layouts); static shared memory 33.9 / 36.2 / 44.1 KB for P = 4 / 8 / 16, 30-43 KB for
// d_state 17..256.
constexpr int CK_THREADS = 256;
constexpr int CK_I = 8;   // steps per lane per chunk
constexpr int CK_NS = 16; // states per lane (one state group)

template <typename T, int P, int SG> struct CkGeo {
    static constexpr int LPC = P * SG;             // lanes per channel
    static constexpr int CB = CK_THREADS / LPC;    // channels per block
    static constexpr int TC = P * CK_I;            // steps per chunk
    static constexpr int NP = SG * CK_NS;          // states staged per chunk (padded with zeros past N)
    static constexpr int XS = CB + 1;              // x/dt/z tile row stride (floats): one row per step
    static constexpr int BS = TC + 4;              // B/C tile row stride (floats): one row per state, 16-byte rows
    static constexpr int VE = 16 / (int)sizeof(T); // elements per 16-byte vector
    static constexpr int SMEM = (3 * TC * XS + 2 * NP * BS) * 4;
    static_assert(SMEM <= 48 * 1024, "static shared memory");
    static_assert(LPC <= 32 && 32 % LPC == 0, "a channel's lanes in one warp");
};

// 16 bytes (VE elements of T) to floats.
template <typename T> __device__ __forceinline__ void ck_unpack(const uint4 &v, float *f) {
    if constexpr (sizeof(T) == 4) {
        f[0] = __uint_as_float(v.x);
        f[1] = __uint_as_float(v.y);
        f[2] = __uint_as_float(v.z);
        f[3] = __uint_as_float(v.w);
    } else {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            f[2 * e] = ssm_bits16_to_f32<T>(w[e] & 0xffffu);
            f[2 * e + 1] = ssm_bits16_to_f32<T>(w[e] >> 16);
        }
    }
}

// A (steps x channels) tile of x, dt or z: rows t < nt, channels [cb0, cb0 + ncv) of the block (zeros elsewhere).
// vec: channel stride 1, 16-byte aligned rows and block start (checked by the launcher and per block).
template <typename T, int P, int SG>
__device__ __forceinline__ void ck_load_rows(float *tile, const T *__restrict__ base, int64_t s_c, int64_t s_t,
                                             int nt, int ncv, bool vec) {
    using G = CkGeo<T, P, SG>;
    if (vec) {
        constexpr int VPR = G::CB / G::VE > 0 ? G::CB / G::VE : 1; // vectors per row
        if constexpr (G::CB % G::VE == 0) {
            for (int i = threadIdx.x; i < G::TC * VPR; i += CK_THREADS) {
                const int t = i / VPR, v = i % VPR;
                float f[G::VE];
                if (t < nt && (v + 1) * G::VE <= ncv) {
                    const uint4 q = __ldg((const uint4 *)(base + t * s_t + v * G::VE));
                    ck_unpack<T>(q, f);
                } else {
#pragma unroll
                    for (int e = 0; e < G::VE; e++)
                        f[e] = (t < nt && v * G::VE + e < ncv) ? to_f32<T>(base[t * s_t + v * G::VE + e]) : 0.f;
                }
#pragma unroll
                for (int e = 0; e < G::VE; e++) tile[t * G::XS + v * G::VE + e] = f[e];
            }
            return;
        }
    }
    for (int i = threadIdx.x; i < G::TC * G::CB; i += CK_THREADS) {
        const int t = i / G::CB, cl = i % G::CB;
        tile[t * G::XS + cl] = (t < nt && cl < ncv) ? to_f32<T>(base[t * s_t + cl * s_c]) : 0.f;
    }
}

// The B or C tile: states [0, NP) x steps [0, TC), transposed to one row per state (zeros past N and nt).
// vec: state stride 1, N % VE == 0, 16-byte aligned (checked by the launcher).
template <typename T, int P, int SG>
__device__ __forceinline__ void ck_load_bc(float *tile, const T *__restrict__ base, int64_t s_n, int64_t s_t, int nt,
                                           int N, bool vec) {
    using G = CkGeo<T, P, SG>;
    if (vec) {
        const int vpr = N / G::VE; // vectors per step
        for (int i = threadIdx.x; i < G::TC * vpr; i += CK_THREADS) {
            const int t = i / vpr, v = i % vpr;
            float f[G::VE];
            if (t < nt) {
                ck_unpack<T>(__ldg((const uint4 *)(base + t * s_t + v * G::VE)), f);
            } else {
#pragma unroll
                for (int e = 0; e < G::VE; e++) f[e] = 0.f;
            }
#pragma unroll
            for (int e = 0; e < G::VE; e++) tile[(v * G::VE + e) * G::BS + t] = f[e];
        }
        for (int i = threadIdx.x; i < (G::NP - N) * G::TC; i += CK_THREADS) // the padding states
            tile[(N + i / G::TC) * G::BS + i % G::TC] = 0.f;
        return;
    }
    for (int i = threadIdx.x; i < G::TC * G::NP; i += CK_THREADS) {
        const int t = i / G::NP, n = i % G::NP;
        tile[n * G::BS + t] = (t < nt && n < N) ? to_f32<T>(base[n * s_n + t * s_t]) : 0.f;
    }
}

// L2 prefetch of `bytes` (a multiple of 16, 16-byte aligned) at p: one bulk prefetch on sm_90, nothing elsewhere.
__device__ __forceinline__ void ck_prefetch_l2(const void *p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(__cvta_generic_to_global(p)), "r"(bytes)
                 : "memory");
#else
    (void)p;
    (void)bytes;
#endif
}

// grid: (ngroups * cb_per_group, batch); block: CK_THREADS. vec bit 0: x/dt/z rows; bit 1: B/C rows.
template <typename T, int P, int SG>
__global__ void __launch_bounds__(CK_THREADS, 2) scan_chunked_kernel(const ScanArgs a, const int vec) {
    using G = CkGeo<T, P, SG>;
    __shared__ __align__(16) float sx[G::TC * G::XS];
    __shared__ __align__(16) float sdt[G::TC * G::XS];
    __shared__ __align__(16) float sz[G::TC * G::XS];
    __shared__ __align__(16) float sB[G::NP * G::BS];
    __shared__ __align__(16) float sC[G::NP * G::BS];
    // d_state <= 16: log2-scaled A in shared memory (row of 17 floats per channel: distinct banks for the channels
    // of a warp) rather than 16 registers per lane; the larger-state layouts have no room for it and keep registers.
    constexpr bool A_SMEM = SG == 1;
    __shared__ float sA[A_SMEM ? G::CB * (CK_NS + 1) : 1];

    const int tid = threadIdx.x;
    const int part = tid % P, sg = (tid / P) % SG, cl = tid / G::LPC; // lane's step block, state group, channel
    const int64_t grp = blockIdx.x / a.cb_per_group, cb = blockIdx.x % a.cb_per_group;
    const int64_t cig0 = cb * G::CB;                        // first channel of the block within its group
    const int ncv = (int)min((int64_t)G::CB, a.per_group - cig0); // valid channels of the block
    const bool active = cl < ncv;
    const int64_t c0 = grp * a.per_group + cig0;
    const int64_t c = c0 + (active ? cl : ncv - 1);          // inactive lanes compute a duplicate, store nothing
    const int64_t b = blockIdx.y;

    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    const bool has_state = a.state != nullptr;
    if (has_state && (slot < 0 || slot >= a.nslots)) { // padding row: zeros; bad slot: NaN; state untouched
        const T fill = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        for (int64_t i = tid; i < (int64_t)ncv * a.len; i += CK_THREADS)
            ((T *)a.out)[b * a.so0 + (c0 + i % ncv) * a.so1 + (i / ncv) * a.so2] = fill;
        return;
    }

    float A2[CK_NS], h[CK_NS]; // log2-scaled A (A_SMEM: in sA) and the carried state of this lane's 16 states
#pragma unroll
    for (int j = 0; j < CK_NS; j++) {
        const int64_t s = (int64_t)sg * CK_NS + j;
        const float av = s < a.N ? a.A[c * a.sA0 + s * a.sA1] * SSM_LOG2E : 0.f;
        if constexpr (A_SMEM) {
            if (part == 0) sA[cl * (CK_NS + 1) + j] = av; // read after the first chunk's barrier
            A2[j] = 0.f;
        } else {
            A2[j] = av;
        }
        h[j] = (has_state && a.load_state && s < a.N) ? a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] : 0.f;
    }
    const float bias = a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias) : 0.f;
    const float Dv = a.D ? ssm_load_param(a.D, a.D_dtype, c * a.sD) : 0.f;
    const bool softplus = a.softplus != 0, has_z = a.z != nullptr;
    const int N = (int)a.N;
    const T *xb = (const T *)a.x + b * a.sx0 + c0 * a.sx1;
    const T *dtb = (const T *)a.dt + b * a.sdt0 + c0 * a.sdt1;
    const T *zb = has_z ? (const T *)a.z + b * a.sz0 + c0 * a.sz1 : nullptr;
    const T *Bb = (const T *)a.B + b * a.sB0 + grp * a.sB1;
    const T *Cb = (const T *)a.C + b * a.sC0 + grp * a.sC1;
    T *ob = (T *)a.out + b * a.so0 + c * a.so1;
    // 16-byte vectors of x/dt/z: the launcher checked strides and base alignment; the block's first channel too.
    const bool vrow = (vec & 1) && ((c0 * a.sx1) % G::VE == 0) && ((c0 * a.sdt1) % G::VE == 0) &&
                      (!has_z || (c0 * a.sz1) % G::VE == 0);
    const bool vbc = (vec & 2) != 0;
    const bool store = active && sg == 0;

    for (int64_t t0 = 0; t0 < a.len; t0 += G::TC) {
        const int rows = (int)min((int64_t)G::TC, a.len - t0);                  // steps of this chunk
        const int nt = (int)max((int64_t)0, min((int64_t)G::TC, n - t0));       // of which valid (< seq_len)
        if (nt == 0) { // past the sequence: zeros only
            if (store)
                for (int i = 0; i < CK_I; i++) {
                    const int tl = part * CK_I + i;
                    if (tl < rows) ob[(t0 + tl) * a.so2] = from_f32<T>(0.f);
                }
            continue;
        }
        __syncthreads(); // the previous chunk's readers are done
        ck_load_rows<T, P, SG>(sx, xb + t0 * a.sx2, a.sx1, a.sx2, nt, ncv, vrow);
        ck_load_rows<T, P, SG>(sdt, dtb + t0 * a.sdt2, a.sdt1, a.sdt2, nt, ncv, vrow);
        if (has_z) ck_load_rows<T, P, SG>(sz, zb + t0 * a.sz2, a.sz1, a.sz2, nt, ncv, vrow);
        ck_load_bc<T, P, SG>(sB, Bb + t0 * a.sB3, a.sB2, a.sB3, nt, N, vbc);
        ck_load_bc<T, P, SG>(sC, Cb + t0 * a.sC3, a.sC2, a.sC3, nt, N, vbc);
        __syncthreads();

        // The next chunk's rows (16-byte vector layouts only) into L2 while this one computes: its cooperative
        // loads after the next barrier then wait for L2, not DRAM. Whole 16-byte units inside the rows only.
        if (t0 + G::TC < n) {
            const int64_t tn = t0 + G::TC;
            const int nn = (int)min((int64_t)G::TC, n - tn);
            const uint32_t rb = (uint32_t)(ncv * (int)sizeof(T)) & ~15u, bcb = (uint32_t)(N * (int)sizeof(T));
            for (int i = tid; i < 5 * G::TC; i += CK_THREADS) {
                const int r = i % G::TC, which = i / G::TC;
                if (r >= nn) continue;
                const int64_t t = tn + r;
                if (which < 3 && vrow && rb > 0) {
                    if (which == 0) ck_prefetch_l2(xb + t * a.sx2, rb);
                    else if (which == 1) ck_prefetch_l2(dtb + t * a.sdt2, rb);
                    else if (has_z) ck_prefetch_l2(zb + t * a.sz2, rb);
                } else if (which >= 3 && vbc) {
                    ck_prefetch_l2(which == 3 ? (const void *)(Bb + t * a.sB3) : (const void *)(Cb + t * a.sC3), bcb);
                }
            }
        }

        const int tb = part * CK_I; // this lane's first step in the chunk
        float delta[CK_I], dx[CK_I], y[CK_I];
        float sumd = 0.f;
#pragma unroll
        for (int i = 0; i < CK_I; i++) {
            float d = sdt[(tb + i) * G::XS + cl] + bias;
            if (softplus) d = ssm_softplus_fast(d);
            d = (tb + i < nt) ? d : 0.f; // past the length: a = 1, b = 0
            delta[i] = d;
            dx[i] = d * sx[(tb + i) * G::XS + cl];
            sumd += d;
            y[i] = 0.f;
        }
#pragma unroll
        for (int j = 0; j < CK_NS; j++) {
            const float a2 = A_SMEM ? sA[cl * (CK_NS + 1) + j] : A2[j];
            const float *Bn = sB + (sg * CK_NS + j) * G::BS + tb;
            const float *Cn = sC + (sg * CK_NS + j) * G::BS + tb;
            float da[CK_I], db[CK_I];
            float hl = 0.f;
#pragma unroll
            for (int i = 0; i < CK_I; i += 4) {
                const float4 b4 = *(const float4 *)(Bn + i);
                const float bb[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    da[i + e] = ssm_ex2(delta[i + e] * a2);
                    db[i + e] = dx[i + e] * bb[e];
                    hl = fmaf(da[i + e], hl, db[i + e]);
                }
            }
            // Inclusive scan of (decay, state) over the P lanes: (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2). Lane 0
            // starts from the carried state (its b is its end state), so every lane's inclusive b is its end state
            // and the lane below's is the state entering this lane's first step.
            float pa = ssm_ex2(a2 * sumd), pb = hl;
            if (part == 0) pb = fmaf(pa, h[j], pb);
#pragma unroll
            for (int o = 1; o < P; o <<= 1) {
                const float ua = __shfl_up_sync(0xffffffffu, pa, o, P);
                const float ub = __shfl_up_sync(0xffffffffu, pb, o, P);
                if (part >= o) {
                    pb = fmaf(pa, ub, pb);
                    pa *= ua;
                }
            }
            float hv = __shfl_up_sync(0xffffffffu, pb, 1, P); // state entering this lane's first step
            if (part == 0) hv = h[j];
#pragma unroll
            for (int i = 0; i < CK_I; i += 4) {
                const float4 c4 = *(const float4 *)(Cn + i);
                const float cc[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    hv = fmaf(da[i + e], hv, db[i + e]);
                    y[i + e] = fmaf(hv, cc[e], y[i + e]);
                }
            }
            h[j] = __shfl_sync(0xffffffffu, hv, P - 1, P); // carry: the last lane's end state
        }
#pragma unroll
        for (int i = 0; i < CK_I; i++) {
#pragma unroll
            for (int o = P; o < G::LPC; o <<= 1) y[i] += __shfl_xor_sync(0xffffffffu, y[i], o);
        }
        if (store) {
#pragma unroll
            for (int i = 0; i < CK_I; i++) {
                const int tl = tb + i;
                if (tl < rows) {
                    float yv = 0.f;
                    if (tl < nt) {
                        yv = fmaf(Dv, sx[tl * G::XS + cl], y[i]);
                        if (has_z) yv *= ssm_silu_out<T>(sz[tl * G::XS + cl]);
                    }
                    ob[(t0 + tl) * a.so2] = from_f32<T>(yv);
                }
            }
        }
    }
    if (has_state && active && part == 0) {
#pragma unroll
        for (int j = 0; j < CK_NS; j++) {
            const int64_t s = (int64_t)sg * CK_NS + j;
            if (s < a.N) a.state[slot * a.ss0 + c * a.ss1 + s * a.ss2] = h[j];
        }
    }
}

template <typename T, int P, int SG> ssmtp_status_t launch_chunked(ScanArgs &a, int vec, cudaStream_t st) {
    using G = CkGeo<T, P, SG>;
    a.cb_per_group = (int)((a.per_group + G::CB - 1) / G::CB);
    const int64_t nblk = (a.dim / a.per_group) * a.cb_per_group;
    if (nblk > 0x7fffffff || a.batch > 65535)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": grid too large (batch=%lld dim=%lld)", (long long)a.batch,
                          (long long)a.dim);
    scan_chunked_kernel<T, P, SG><<<dim3((unsigned)nblk, (unsigned)a.batch), CK_THREADS, 0, st>>>(a, vec);
    SSMTP_CUDA_CHECK_LAUNCH(OP);
    return SSMTP_OK;
}

template <typename T> ssmtp_status_t dispatch_chunked(ScanArgs &a, int device, cudaStream_t st) {
    constexpr int VE = 16 / (int)sizeof(T);
    // 16-byte vector loads: x/dt/z rows channel-contiguous with 16-byte aligned bases and step strides; B/C rows
    // state-contiguous likewise with whole vectors per step. Anything else: element loads (any strides).
    auto al = [](const void *p) { return ((uintptr_t)p % 16) == 0; };
    int vec = 0;
    if (a.sx1 == 1 && a.sdt1 == 1 && a.sx2 % VE == 0 && a.sdt2 % VE == 0 && al(a.x) && al(a.dt) &&
        (!a.z || (a.sz1 == 1 && a.sz2 % VE == 0 && al(a.z))) && a.sx0 % VE == 0 && a.sdt0 % VE == 0 &&
        (!a.z || a.sz0 % VE == 0))
        vec |= 1;
    if (a.sB2 == 1 && a.sC2 == 1 && a.N % VE == 0 && a.sB3 % VE == 0 && a.sC3 % VE == 0 && a.sB0 % VE == 0 &&
        a.sC0 % VE == 0 && a.sB1 % VE == 0 && a.sC1 % VE == 0 && al(a.B) && al(a.C))
        vec |= 2;
    const int64_t N = a.N;
    if (N <= 16) {
        // Lanes per channel P (chunk 8P steps): the block count grows with P and the time per block falls as 1/P,
        // while the scan over lanes adds ~(4 log2 P + 4) / 8 instructions to the ~7 per state element. Estimated
        // time ~ waves(P) * (7 + (4 log2 P + 4) / 8) / P, waves rounded up while few (the tail wave costs a whole
        // wave then); the smallest wins. SSMTP_SCAN_P overrides (benchmarks, tests).
        int sms = 132;
        SSMTP_TRY(ssm_sm_count(device, &sms));
        // resident blocks per SM, the same for the three P (the register cap decides)
        const int occ = ssm_blocks_per_sm((const void *)scan_chunked_kernel<T, 8, 1>, CK_THREADS, 0);
        const double slots = (double)sms * occ;
        const int64_t ngroups = a.dim / a.per_group;
        int p = 4;
        double best = 1e300;
        for (int cand = 4, lg = 2; cand <= 16; cand *= 2, lg++) {
            const int64_t cb = CK_THREADS / cand;
            const double blocks = (double)(a.batch * ngroups * ((a.per_group + cb - 1) / cb));
            double waves = blocks / slots;
            if (waves < 4) waves = ceil(waves);
            const double est = waves * (7.0 + (4.0 * lg + 4.0) / CK_I) / cand;
            if (est < best * 0.999) {
                best = est;
                p = cand;
            }
        }
        const char *env = getenv("SSMTP_SCAN_P");
        if (env && *env) p = atoi(env);
        switch (p) {
        case 4: return launch_chunked<T, 4, 1>(a, vec, st);
        case 8: return launch_chunked<T, 8, 1>(a, vec, st);
        case 16: return launch_chunked<T, 16, 1>(a, vec, st);
        default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_SCAN_P=%d (4, 8 or 16)", p);
        }
    }
    if (N <= 32) return launch_chunked<T, 8, 2>(a, vec, st);
    if (N <= 64) return launch_chunked<T, 8, 4>(a, vec, st);
    if (N <= 128) return launch_chunked<T, 4, 8>(a, vec, st);
    if (N <= 256) return launch_chunked<T, 2, 16>(a, vec, st);
    return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": d_state=%lld > 256", (long long)N);
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_scan_fwd(const ssmtp_scan_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    ScanArgs a;
    memset(&a, 0, sizeof a);
    ssm_fill_ptrs(a, p);
    a.seq_lens = (const int32_t *)p->seq_lens.data;
    a.batch = p->x.shape[0];
    a.dim = p->x.shape[1];
    a.len = p->x.shape[2];
    a.N = p->A.shape[1];
    a.per_group = a.dim / p->B.shape[1];
    a.sx0 = p->x.stride[0]; a.sx1 = p->x.stride[1]; a.sx2 = p->x.stride[2];
    a.sdt0 = p->dt.stride[0]; a.sdt1 = p->dt.stride[1]; a.sdt2 = p->dt.stride[2];
    if (a.z) { a.sz0 = p->z.stride[0]; a.sz1 = p->z.stride[1]; a.sz2 = p->z.stride[2]; }
    a.so0 = p->out.stride[0]; a.so1 = p->out.stride[1]; a.so2 = p->out.stride[2];
    a.sB0 = p->B.stride[0]; a.sB1 = p->B.stride[1]; a.sB2 = p->B.stride[2]; a.sB3 = p->B.stride[3];
    a.sC0 = p->C.stride[0]; a.sC1 = p->C.stride[1]; a.sC2 = p->C.stride[2]; a.sC3 = p->C.stride[3];
    a.sA0 = p->A.stride[0]; a.sA1 = p->A.stride[1];
    if (a.D) { a.sD = p->D.stride[0]; a.D_dtype = p->D.dtype; }
    if (a.dt_bias) { a.sbias = p->dt_bias.stride[0]; a.bias_dtype = p->dt_bias.dtype; }
    if (a.state) {
        a.nslots = p->state.shape[0];
        a.ss0 = p->state.stride[0]; a.ss1 = p->state.stride[1]; a.ss2 = p->state.stride[2];
    }
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    if (a.seq_lens) a.slens = p->seq_lens.stride[0];
    a.softplus = p->dt_softplus;
    a.load_state = p->load_state;
    a.sv = ssm_save_args(p->save_pos, p->save_idx);
    if (a.batch == 0 || a.dim == 0) return SSMTP_OK;
    // seqlen == 0 still launches: the final state is then the initial one (zeros when !load_state).
    cudaStream_t st = (cudaStream_t)stream;
    // Kernel choice (SSMTP_SCAN_KERNEL): "loop" (default) or "chunked"; anything else is an error, not a fallback.
    // Measured on H200 (2026-11-22, bench_ops.py, bf16, d_state 16, both validated): chunked was slower on 33 of 36
    // cases (mamba-2.8b tp1 B=1 L=8192: 1345 us vs 607; B=8 L=2048: 1692 vs 992; it held ~250 GB/s flat), faster
    // only at B=1 L=512 with half the channels (57 vs 60 us). So loop stays the default.
    const char *kenv = getenv("SSMTP_SCAN_KERNEL");
    bool chunked = false;
    if (kenv && *kenv) {
        if (strcmp(kenv, "chunked") == 0) chunked = true;
        else if (strcmp(kenv, "loop") != 0)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_SCAN_KERNEL=%s (loop or chunked)", kenv);
    }
    if (chunked && !a.sv.pos) { // intermediate saves: the loop kernel only
        SSMTP_DISPATCH_FLOAT(p->x.dtype, T, OP, { return dispatch_chunked<T>(a, p->x.device, st); });
    } else {
        SSMTP_DISPATCH_FLOAT(p->x.dtype, T, OP, { return dispatch_n<T>(a, p->x.device, st); });
    }
    return SSMTP_OK;
}
