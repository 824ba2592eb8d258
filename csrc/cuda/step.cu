// step.cu - the decode selective state update on the GPU: one token per sequence, in place on the slot-indexed fp32
// state. Semantics: ssmtp_step_fwd in csrc/ssmtp.h; CPU reference: step_cpu in csrc/scan.c.
//
// Memory-bound: per (sequence, channel) the state row (N fp32) is read and written once; everything else is a few
// bytes (x, dt, z, out) or shared by many rows (A by all sequences, B/C by the channels of a group). At B=64,
// mamba-2.8b shapes (d_inner 5120, N 16), states are 2 x 21 MB against ~0.2 MB of the rest.
//
// Vector path (N % 4 == 0, N/4 a power of two, 16-byte aligned rows): TPC = min(N/4, 32) adjacent lanes own one
// channel, each NV float4s of its state (float4 q = part + j*TPC, so a warp's accesses are contiguous 512-byte runs);
// y is summed with xor shuffles. A block covers 256/TPC channels of BPB = 4 sequences (2 at N = 256; at N = 16 the
// shape step_shape() picks, 1 or 4 sequences at 8 or 4 blocks per SM): A is loaded
// once per thread and reused for the rows (A would otherwise be re-read from L2 once per sequence, as many bytes as
// the state), and every load of the rows (state, x, dt, z, B, C) is issued before the first is used: one memory
// round trip per block instead of two. With TPC >= BPB, lane p evaluates softplus and the output tail (D, SiLU) for
// row p only, and shares delta by shuffles.
// The vector kernel is launched with programmatic dependent launch (common.cuh): it loads its parameters (A, dt_bias,
// D) while the kernel before it finishes.
// The next kernel may launch from this kernel's start: with the trigger after the fused dt_proj products instead
// (out_proj's weight preload kept off this kernel's loads) the mamba-2.8b step at B=1 was 0.065 ms slower (H200,
// 2026-11-25, benchmarks/results/decode-pdl-order-h200-not-kept.json).
// With dt_proj (the decode step at small batch, ssmtp.h): the vector path computes each channel's raw time step from
// the (batch, R) low-rank dt and its dt_proj row (dt_proj_rows below), one sequence per block; unaligned layouts take
// the scalar path's per-element loop.
// Scalar path (anything else): one thread per (sequence, channel), strided loops over N.
// Pipe path (SSMTP_STEP_KERNEL=pipe; default "block" = the vector path above): the vector path's lane layout for
// N % 4 == 0 and N <= 128, walked by a grid of 3 blocks per SM that loads its next item while it computes the
// current one (see step_pipe_kernel).
//
// Instruction diet (measured on H200, bench_ops.py, bf16, side by side with the previous commit): the vector kernel
// was issue-bound (Nsight Compute: issue slots ~71-75% busy at B=64/256, DRAM 24-45%). nvcc had split each 16-byte
// state store into four 4-byte stores, B/C were loaded one element at a time with 64-bit index products, c / per_group
// was a 64-bit division and the rows' slots sat in local memory; fixing those (16-byte stores by inline PTX, one
// vector load per 4 B/C states, 32-bit indices with wide products) took mamba-2.8b tp1 from 72.8 to 59.8 us at B=256
// and 21.2 to 16.8 us at B=64 (70% / 63% of the copy rate; every model and batch 1.16-1.26x; step-h200-5f4543e.json
// vs step-h200-3b6e39f-ref.json). The scan's arithmetic for the state update (below) then gave 3-12% at B <= 8 and
// ~1% at B >= 64 (step-h200-d2163ba.json vs step-h200-5f4543e-c.json).
//
// Arithmetic: the state update as one step of the prefill scan (ex2.approx of delta * A log2(e), FMA; ~1e-7 relative
// from the CPU reference's expf form), the per-row softplus and SiLU as the CPU reference (expf, log1pf, IEEE
// division).
// Graph-capturable: slots are read on the device, no host synchronisation, no allocation.
#include "common.cuh"
#include "ssm_math.cuh"

#include <stdlib.h>
#include <string.h>

#include <type_traits>

#define OP "step_fwd"

namespace {

struct StepArgs {
    const void *x, *dt, *B, *C, *z, *D, *dt_bias;
    const float *A;
    float *state;
    const int32_t *state_idx;
    void *out;
    const void *dtw; // dt_proj (dim, R), optional: dt is then (batch, R)
    int64_t batch, dim, N, per_group, nslots, R, sdw0;
    int64_t sx0, sx1, sdt0, sdt1, sz0, sz1, so0, so1, sB0, sB1, sB2, sC0, sC1, sC2;
    // 3-D dt: (batch, dim / dt_per, dt_per) without dt_proj (e.g. one time step per head, stride 0 on the last axis),
    // (batch, ngroups, R) with it (dt_per = dim / ngroups); channel c reads row c / dt_per (group axis stride sdtg).
    // 2-D dt: dt_per = dim, sdtg = 0.
    int64_t sdtg, dt_per;
    int64_t sA0, sA1, sD, sbias, ss0, ss1, ss2, sidx;
    int D_dtype, bias_dtype, softplus;
    int state_early; // state_idx and the state rows may be read before the PDL wait (ssmtp.h: a launch hint)
    int vecbc; // B and C state-contiguous with 4-element-aligned bases and strides (one vector load per 4 states)
    int device;
};

constexpr int THREADS = 256;
// Sequences per block on the vector path: 4 (2 when each thread holds 8 states, N = 256, to stay unspilled at the
// 3-blocks-per-SM register cap; 1 by default with dt_proj fused, whose dot products spill at 4 rows under that cap:
// at d_state 16 launch_dtp picks 1, 2 or 4 per batch, the multi-row shapes with a lower blocks-per-SM bound).
template <int NV, bool DTP = false> constexpr int bpb_of() { return DTP ? 1 : NV >= 2 ? 2 : 4; }

// i x s as a 32 x 32 -> 64-bit product (one wide multiply; the vector kernel's launcher checks that indices and
// strides fit in 32 bits).
__device__ __forceinline__ int64_t wide(int i, int64_t s) {
    int64_t r;
    asm("mul.wide.s32 %0, %1, %2;" : "=l"(r) : "r"(i), "r"((int)s));
    return r;
}

__device__ __forceinline__ int64_t slot_of(const StepArgs &a, int64_t b) {
    return a.state_idx ? (int64_t)a.state_idx[b * a.sidx] : b;
}

// h <- exp(delta*A)*h + B*(delta*x), as one step of the prefill scan evaluates it (scan.cu): exp(delta*A) as one
// ex2 of delta * (A log2 e) on the MUFU, delta*x once per (row, channel), one FMA per state. update_e takes eA
// evaluated by the caller (once per channel when A is the same for all its states); A2 = A * log2(e).
__device__ __forceinline__ float update_e(float h, float eA, float dx, float Bs) { return fmaf(eA, h, dx * Bs); }
__device__ __forceinline__ float update(float h, float A2, float delta, float dx, float Bs) {
    return update_e(h, ssm_ex2(delta * A2), dx, Bs);
}

// One 16-byte store of four floats (written as make_float4 into the pointer, nvcc emitted four 4-byte stores).
__device__ __forceinline__ void st_f4(float *p, const float (&v)[4]) {
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]));
}

// Offset of channel c's raw time step within one sequence's dt (no dt_proj) on the 32-bit vector paths: c * sdt1 for
// a 2-D dt; for a 3-D one row c / dt_per, column c % dt_per. A uniform test: the 2-D dt (every caller but Zamba2's)
// costs no division (measured: with the division in every call mamba-2.8b's graph step was 0.5% slower at B = 8 and
// 256; benchmarks/results/mamba-step-dt-h200-10bbc49.json).
__device__ __forceinline__ int64_t dt_off(const StepArgs &a, int c) {
    if (a.dt_per == a.dim) return wide(c, a.sdt1);
    const uint32_t q = (uint32_t)c / (uint32_t)a.dt_per;
    return wide((int)q, a.sdtg) + wide((int)((uint32_t)c - q * (uint32_t)a.dt_per), a.sdt1);
}

template <typename T>
__device__ __forceinline__ float finish(const StepArgs &a, float y, int64_t b, int64_t c, float xt) {
    if (a.D) y = __fadd_rn(y, __fmul_rn(ssm_load_param(a.D, a.D_dtype, c * a.sD), xt));
    if (a.z) y = __fmul_rn(y, ssm_silu_exact(to_f32<T>(((const T *)a.z)[b * a.sz0 + c * a.sz1])));
    return y;
}

// The raw time step of (b, c) as T: dt[b, c], or with dt_proj the product dt_proj[c] . dt[b] rounded to T (the
// scalar path sums in order; the vector path by lanes, then shuffles).
template <typename T> __device__ __forceinline__ T raw_dt(const StepArgs &a, int64_t b, int64_t c) {
    const T *dr = (const T *)a.dt + b * a.sdt0 + (c / a.dt_per) * a.sdtg;
    if (!a.dtw) return dr[(c % a.dt_per) * a.sdt1];
    float acc = 0.f;
    for (int64_t r = 0; r < a.R; r++)
        acc = fmaf(to_f32<T>(((const T *)a.dtw)[c * a.sdw0 + r]), to_f32<T>(dr[r * a.sdt1]), acc);
    return from_f32<T>(acc);
}

template <typename T>
__device__ __forceinline__ float delta_of(const StepArgs &a, int64_t b, int64_t c) {
    float d = to_f32<T>(raw_dt<T>(a, b, c));
    if (a.dt_bias) d = __fadd_rn(d, ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias));
    return a.softplus ? ssm_softplus_exact(d) : d;
}

// With dt_proj (DTP): the TPC lanes of a channel split its dt_proj row into 16-byte packs (the first DTP_PRE per lane
// loaded before the PDL wait: weights), each lane dots its packs with the BPB rows of dt, and xor shuffles sum the
// lanes: the raw time step is ready in every lane of the channel, rounded to T as a separate GEMV would round it.
constexpr int DTP_PRE = 5; // R = 160 (mamba-2.8b) at TPC 4: the whole row (20 packs) before the wait

template <typename T, int TPC, int BPB>
__device__ __forceinline__ void dt_proj_rows(const StepArgs &a, int64_t c, int g, int64_t b0,
                                             const uint4 (&wpre)[DTP_PRE], T (&dr)[BPB]) {
    constexpr int P = Pack16<T>::N;
    const int part = threadIdx.x % TPC;
    const int64_t npk = a.R / P;
    const uint4 *wr = reinterpret_cast<const uint4 *>((const T *)a.dtw + c * a.sdw0);
    // the channel's group's rows: g = c / per_group, the caller's B/C group (a grouped dt has one row per B/C group;
    // a 2-D dt has sdtg 0)
    const T *dg = (const T *)a.dt + wide(g, a.sdtg);
    float acc[BPB];
#pragma unroll
    for (int i = 0; i < BPB; i++) acc[i] = 0.f;
    auto dot = [&](const uint4 &wv, int64_t k) {
        float wf[P];
        Pack16<T>::to_f32(wv, wf);
#pragma unroll
        for (int i = 0; i < BPB; i++) {
            const int64_t b = b0 + i < a.batch ? b0 + i : b0;
            float df[P];
            Pack16<T>::to_f32(__ldg(reinterpret_cast<const uint4 *>(dg + b * a.sdt0) + k), df);
#pragma unroll
            for (int e = 0; e < P; e++) acc[i] = fmaf(wf[e], df[e], acc[i]);
        }
    };
#pragma unroll
    for (int j = 0; j < DTP_PRE; j++)
        if (part + j * TPC < npk) dot(wpre[j], part + j * TPC);
    for (int64_t k = part + DTP_PRE * TPC; k < npk; k += TPC) dot(ld_stream(wr + k), k);
#pragma unroll
    for (int i = 0; i < BPB; i++) {
#pragma unroll
        for (int o = TPC / 2; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
        dr[i] = from_f32<T>(acc[i]);
    }
}

// Four consecutive B or C values of one row, kept packed (two 32-bit words for 16-bit types).
template <typename T> struct Quad {
    uint32_t w[sizeof(T)];
    __device__ __forceinline__ float get(int e) const {
        if constexpr (sizeof(T) == 4) {
            return __uint_as_float(w[e]);
        } else if constexpr (std::is_same<T, __nv_bfloat16>::value) { // bf16 = the high half of an f32: one op
            return __uint_as_float(e & 1 ? w[e >> 1] & 0xffff0000u : w[e >> 1] << 16);
        } else {
            return ssm_bits16_to_f32<T>((w[e >> 1] >> (16 * (e & 1))) & 0xffffu);
        }
    }
};

template <typename T> __device__ __forceinline__ Quad<T> quad_load(const T *p, int64_t s, bool vec) {
    Quad<T> q;
    if constexpr (sizeof(T) == 4) {
        if (vec) {
            const uint4 u = __ldg((const uint4 *)p);
            q.w[0] = u.x; q.w[1] = u.y; q.w[2] = u.z; q.w[3] = u.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++) q.w[e] = __float_as_uint(p[e * s]);
        }
    } else {
        if (vec) {
            const uint2 u = __ldg((const uint2 *)p);
            q.w[0] = u.x; q.w[1] = u.y;
        } else {
            const uint16_t *u = (const uint16_t *)p; // the same elements as bits
            q.w[0] = (uint32_t)u[0] | ((uint32_t)u[s] << 16);
            q.w[1] = (uint32_t)u[2 * s] | ((uint32_t)u[3 * s] << 16);
        }
    }
    return q;
}

// SA: one A per channel (a.sA1 == 0, Mamba-2 layers): exp(delta*A) once per (row, channel), not per state.
// BPB: sequences per block; MINB: resident blocks per SM the registers are capped for (launch bound).
// NT: threads per block (fewer than THREADS only for the multi-row dt_proj shapes, to keep more blocks per sequence).
template <typename T, int TPC, int NV, bool SA = false, bool DTP = false, int BPB = bpb_of<NV, DTP>(), int MINB = 3,
          int NT = THREADS>
__global__ void __launch_bounds__(NT, MINB) step_vec_kernel(const StepArgs a) {
    constexpr int CPB = NT / TPC;
    const int part = threadIdx.x % TPC;
    const int lane = threadIdx.x % 32;
    // 32-bit indices and strides (the launcher checked that they fit), offsets as 32 x 32 -> 64-bit products
    // (wide()): the 64-bit index arithmetic and a 64-bit division made up most of this kernel's instructions.
    const int c0 = (int)blockIdx.x * CPB + (int)threadIdx.x / TPC;
    const bool active = c0 < (int)a.dim;
    const int c = active ? c0 : (int)a.dim - 1; // inactive lanes compute a duplicate and store nothing
    const int g = (int)((uint32_t)c / (uint32_t)a.per_group);
    const int b0 = (int)blockIdx.y * BPB;

    // Parameters (A, dt_bias, D) before the wait for the previous kernel (programmatic dependent launch).
    ssm_pdl_trigger();
    float4 Av[NV];
#pragma unroll
    for (int j = 0; j < NV; j++) {
        if constexpr (SA) {
            const float a0 = a.A[wide(c, a.sA0)] * SSM_LOG2E;
            Av[j] = make_float4(a0, a0, a0, a0);
        } else {
            const float4 v = *(const float4 *)(a.A + wide(c, a.sA0) + 4 * (part + j * TPC));
            Av[j] = make_float4(v.x * SSM_LOG2E, v.y * SSM_LOG2E, v.z * SSM_LOG2E, v.w * SSM_LOG2E);
        }
    }
    const float bias = a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, wide(c, a.sbias)) : 0.f;
    const float Dc = a.D ? ssm_load_param(a.D, a.D_dtype, wide(c, a.sD)) : 0.f;
    uint4 wpre[DTP_PRE];
    if constexpr (DTP) {
        const uint4 *wr = reinterpret_cast<const uint4 *>((const T *)a.dtw + wide(c, a.sdw0));
        const int64_t npk = a.R / Pack16<T>::N;
#pragma unroll
        for (int j = 0; j < DTP_PRE; j++)
            if (part + j * TPC < npk) wpre[j] = ld_stream(wr + part + j * TPC);
    }
    float *st_c = a.state + wide(c, a.ss1) + 4 * part;
    int slot[BPB];
    bool ok[BPB];
    float4 h[BPB][NV];
    auto load_state = [&](int i, int b, bool in) {
        slot[i] = !in ? -1 : a.state_idx ? a.state_idx[wide(b, a.sidx)] : b;
        ok[i] = slot[i] >= 0 && slot[i] < a.nslots;
        const float *sp = st_c + wide(slot[i], a.ss0);
#pragma unroll
        for (int j = 0; j < NV; j++)
            h[i][j] = ok[i] ? *(const float4 *)(sp + 4 * j * TPC) : make_float4(0.f, 0.f, 0.f, 0.f);
    };
    // The rows' slots and states before the wait when the caller allows it (state_early: the engine's decode step,
    // where nothing still running writes them): the slot -> state chain of two memory round trips then overlaps the
    // kernel before, and at large batch the first wave's state reads (most of this kernel's bytes) overlap it too.
    // One copy of the loads, with the wait on either side of it (a second copy made ptxas spill in the multi-row
    // kernels).
    const bool early = a.state_early != 0;
    if (!early) ssm_pdl_wait();
#pragma unroll
    for (int i = 0; i < BPB; i++) load_state(i, b0 + i < (int)a.batch ? b0 + i : b0, b0 + i < (int)a.batch);
    if (early) ssm_pdl_wait();

    // Phase 1: every load of the block's BPB rows is issued before anything is computed (one round trip). B and C
    // as one vector per 4 states where the layout allows (vecbc, uniform): 8 bytes per load for 16-bit types.
    const bool vecbc = a.vecbc != 0;
    const T *x_c = (const T *)a.x + wide(c, a.sx1), *z_c = a.z ? (const T *)a.z + wide(c, a.sz1) : nullptr;
    const T *dt_c = (const T *)a.dt + dt_off(a, c);
    const T *B_g = (const T *)a.B + wide(g, a.sB1) + wide(4 * part, a.sB2);
    const T *C_g = (const T *)a.C + wide(g, a.sC1) + wide(4 * part, a.sC2);
    T xr[BPB], dr[BPB], zr[BPB];
    Quad<T> Bq[BPB][NV], Cq[BPB][NV];
#pragma unroll
    for (int i = 0; i < BPB; i++) {
        const bool in = b0 + i < (int)a.batch;
        const int b = in ? b0 + i : b0;
        xr[i] = x_c[wide(b, a.sx0)];
        if constexpr (!DTP) dr[i] = dt_c[wide(b, a.sdt0)];
        zr[i] = z_c ? z_c[wide(b, a.sz0)] : from_f32<T>(0.f);
        const T *Bp = B_g + wide(b, a.sB0), *Cp = C_g + wide(b, a.sC0);
#pragma unroll
        for (int j = 0; j < NV; j++) {
            Bq[i][j] = quad_load<T>(Bp + wide(4 * j * TPC, a.sB2), a.sB2, vecbc);
            Cq[i][j] = quad_load<T>(Cp + wide(4 * j * TPC, a.sC2), a.sC2, vecbc);
        }
    }

    if constexpr (DTP) dt_proj_rows<T, TPC, BPB>(a, c, g, b0, wpre, dr);

    // delta per row. With TPC >= BPB lanes, lane `part` evaluates softplus (log1pf(expf)) for row part % BPB only
    // and the rows are exchanged by shuffles: a quarter of the transcendental work at N = 16.
    float delta[BPB];
    if constexpr (TPC >= BPB) {
        float v = 0.f;
#pragma unroll
        for (int i = 0; i < BPB; i++)
            if (part % BPB == i) v = __fadd_rn(to_f32<T>(dr[i]), bias);
        if (a.softplus) v = ssm_softplus_exact(v);
#pragma unroll
        for (int i = 0; i < BPB; i++) delta[i] = __shfl_sync(0xffffffffu, v, (lane & ~(TPC - 1)) | i);
    } else {
#pragma unroll
        for (int i = 0; i < BPB; i++) {
            const float v = __fadd_rn(to_f32<T>(dr[i]), bias);
            delta[i] = a.softplus ? ssm_softplus_exact(v) : v;
        }
    }

    // Phase 2: update and store the states, reduce y over the TPC lanes of each channel.
    float y[BPB];
#pragma unroll
    for (int i = 0; i < BPB; i++) {
        const float dx = delta[i] * to_f32<T>(xr[i]);
        const float eA = SA ? ssm_ex2(delta[i] * Av[0].x) : 0.f;
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < NV; j++) {
            float hv[4] = {h[i][j].x, h[i][j].y, h[i][j].z, h[i][j].w};
            const float av[4] = {Av[j].x, Av[j].y, Av[j].z, Av[j].w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float Bs = Bq[i][j].get(e);
                hv[e] = SA ? update_e(hv[e], eA, dx, Bs) : update(hv[e], av[e], delta[i], dx, Bs);
                acc = fmaf(hv[e], Cq[i][j].get(e), acc);
            }
            if (active && ok[i])
                st_f4(st_c + wide(slot[i], a.ss0) + 4 * j * TPC, hv);
        }
#pragma unroll
        for (int o = TPC / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        y[i] = acc; // every lane of the channel holds the sum
    }

    // Output: lane `part` finishes row part % BPB (D*x, silu(z) with expf and IEEE division), so the tail work is
    // spread over the lanes rather than repeated by each.
    // (row i's slot passed by value: slot[i] with a runtime i would put the array in local memory)
    auto out_one = [&](int i, int sl, float yv, float xv, float zv) {
        const int b = b0 + i;
        if (!active || b >= (int)a.batch) return;
        float r;
        if (sl < 0) r = 0.f;
        else if (sl >= a.nslots) r = __int_as_float(0x7fc00000);
        else {
            r = yv;
            if (a.D) r = __fadd_rn(r, __fmul_rn(Dc, xv));
            if (a.z) r = __fmul_rn(r, ssm_silu_exact(zv));
        }
        ((T *)a.out)[wide(b, a.so0) + wide(c, a.so1)] = from_f32<T>(r);
    };
    if constexpr (TPC >= BPB) {
        const int ir = part % BPB;
        float yv = y[0], xv = to_f32<T>(xr[0]), zv = to_f32<T>(zr[0]);
        int sl = slot[0];
#pragma unroll
        for (int i = 1; i < BPB; i++)
            if (ir == i) { yv = y[i]; xv = to_f32<T>(xr[i]); zv = to_f32<T>(zr[i]); sl = slot[i]; }
        if (part < BPB) out_one(ir, sl, yv, xv, zv);
    } else {
#pragma unroll
        for (int i = 0; i < BPB; i++)
            if (part == 0) out_one(i, slot[i], y[i], to_f32<T>(xr[i]), to_f32<T>(zr[i]));
    }
}

// Any N and stride: one thread per (sequence, channel), channel fastest.
template <typename T>
__global__ void __launch_bounds__(THREADS) step_scalar_kernel(const StepArgs a) {
    const int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x;
    if (i >= a.batch * a.dim) return;
    const int64_t b = i / a.dim, c = i - b * a.dim;
    const int64_t slot = slot_of(a, b);
    T *out = (T *)a.out + b * a.so0 + c * a.so1;
    if (slot < 0 || slot >= a.nslots) {
        *out = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        return;
    }
    const int64_t g = c / a.per_group;
    const float xt = to_f32<T>(((const T *)a.x)[b * a.sx0 + c * a.sx1]);
    const float delta = delta_of<T>(a, b, c);
    const T *Bp = (const T *)a.B + b * a.sB0 + g * a.sB1;
    const T *Cp = (const T *)a.C + b * a.sC0 + g * a.sC1;
    float *st = a.state + slot * a.ss0 + c * a.ss1;
    const float dx = delta * xt;
    float y = 0.f;
    for (int64_t s = 0; s < a.N; s++) {
        const float hv = update(st[s * a.ss2], a.A[c * a.sA0 + s * a.sA1] * SSM_LOG2E, delta, dx,
                                to_f32<T>(Bp[s * a.sB2]));
        st[s * a.ss2] = hv;
        y = fmaf(hv, to_f32<T>(Cp[s * a.sC2]), y);
    }
    *out = from_f32<T>(finish<T>(a, y, b, c, xt));
}

// Pipelined vector kernel (SSMTP_STEP_KERNEL=pipe; N % 4 == 0, N <= 128, same layout conditions as the vector
// path). The block kernel above issues all loads of its rows, waits one round trip, computes, stores and exits:
// at ~3 blocks per SM the loads in flight drop to zero while each block computes (expf per state element), which
// holds it near 60% of the copy rate at B >= 64. Here a grid of 3 blocks per SM walks the (channel block, row
// group) items in a grid-stride loop and issues the loads of its next item before computing the current one, so
// each thread always has one item's state (BPB x 16 B) in flight; B and C are read as one 4-state vector per row
// (8 bytes for 16-bit types) instead of 4 scalars; no tail wave. Per (sequence, channel) it moves the same bytes:
// 2 x N x 4 B of state, x/dt/z/out, and B/C/A from L1/L2. Arithmetic identical to the block kernel.
// Bytes in flight (N = 16, TPC = 4): 2 rows x 16 B per thread while it computes the previous item, 768 threads per
// SM: ~24 KB per SM, against ~16 B/clk/SM x ~1000-1500 clk of loaded DRAM latency = 16-24 KB needed for the copy
// rate; the block kernel's 48 KB per SM are in flight only during its load phase.

constexpr int PIPE_BPB = 2; // sequences per item (4 spilled at the 3-blocks-per-SM register cap)

template <typename T, int TPC> struct PipeItem {
    int32_t slot[PIPE_BPB]; // -1: padding row or past the batch
    float4 h[PIPE_BPB];
    T xr[PIPE_BPB], dr[PIPE_BPB], zr[PIPE_BPB];
    Quad<T> Bq[PIPE_BPB], Cq[PIPE_BPB];
};

template <typename T, int TPC>
__device__ __forceinline__ void pipe_load(const StepArgs &a, int64_t w, int64_t ncb, bool vecbc, PipeItem<T, TPC> &it,
                                          int64_t &c_out, int64_t &b0_out) {
    constexpr int CPB = THREADS / TPC;
    const int part = threadIdx.x % TPC;
    // 32-bit index arithmetic (the launcher checked the ranges): a 64-bit division is a called subroutine.
    const uint32_t wu = (uint32_t)w, nc = (uint32_t)ncb;
    const int64_t cbk = wu % nc, rg = wu / nc;
    const int64_t c0 = cbk * CPB + threadIdx.x / TPC;
    const int64_t c = c0 < a.dim ? c0 : a.dim - 1;
    const int64_t g = (uint32_t)c / (uint32_t)a.per_group, b0 = rg * PIPE_BPB;
    c_out = c0;
    b0_out = b0;
#pragma unroll
    for (int i = 0; i < PIPE_BPB; i++) {
        const int64_t b = b0 + i < a.batch ? b0 + i : b0;
        const int64_t sl = b0 + i < a.batch ? slot_of(a, b0 + i) : -1;
        const bool ok = sl >= 0 && sl < a.nslots;
        it.slot[i] = (int32_t)sl; // from an int32 index (or a row number): >= nslots means out NaN, state untouched
        it.h[i] = ok ? *(const float4 *)(a.state + sl * a.ss0 + c * a.ss1 + 4 * part) : make_float4(0.f, 0.f, 0.f, 0.f);
        it.xr[i] = ((const T *)a.x)[b * a.sx0 + c * a.sx1];
        it.dr[i] = ((const T *)a.dt)[b * a.sdt0 + dt_off(a, (int)c)];
        it.zr[i] = a.z ? ((const T *)a.z)[b * a.sz0 + c * a.sz1] : from_f32<T>(0.f);
        it.Bq[i] = quad_load<T>((const T *)a.B + b * a.sB0 + g * a.sB1 + 4 * part * a.sB2, a.sB2, vecbc);
        it.Cq[i] = quad_load<T>((const T *)a.C + b * a.sC0 + g * a.sC1 + 4 * part * a.sC2, a.sC2, vecbc);
    }
}

template <typename T, int TPC>
__global__ void __launch_bounds__(THREADS, 3) step_pipe_kernel(const StepArgs a, const int64_t ncb,
                                                               const int64_t nitems) {
    constexpr int BPB = PIPE_BPB;
    const int part = threadIdx.x % TPC;
    const int lane = threadIdx.x % 32;
    PipeItem<T, TPC> cur, nxt;
    int64_t c0, b0, c0n = 0, b0n = 0;
    int64_t w = blockIdx.x;
    if (w >= nitems) return;
    pipe_load<T, TPC>(a, w, ncb, a.vecbc != 0, cur, c0, b0);
    for (; w < nitems; w += gridDim.x) {
        const int64_t wn = w + gridDim.x;
        if (wn < nitems) pipe_load<T, TPC>(a, wn, ncb, a.vecbc != 0, nxt, c0n, b0n); // in flight during the compute
        const bool active = c0 < a.dim;
        const int64_t c = active ? c0 : a.dim - 1;
        const float4 Av = *(const float4 *)(a.A + c * a.sA0 + 4 * part);
        const float av[4] = {Av.x * SSM_LOG2E, Av.y * SSM_LOG2E, Av.z * SSM_LOG2E, Av.w * SSM_LOG2E};
        const float bias = a.dt_bias ? ssm_load_param(a.dt_bias, a.bias_dtype, c * a.sbias) : 0.f;
        const float Dc = a.D ? ssm_load_param(a.D, a.D_dtype, c * a.sD) : 0.f;

        float delta[BPB];
        if constexpr (TPC >= BPB) {
            float v = 0.f;
#pragma unroll
            for (int i = 0; i < BPB; i++)
                if (part % BPB == i) v = __fadd_rn(to_f32<T>(cur.dr[i]), bias);
            if (a.softplus) v = ssm_softplus_exact(v);
#pragma unroll
            for (int i = 0; i < BPB; i++) delta[i] = __shfl_sync(0xffffffffu, v, (lane & ~(TPC - 1)) | i);
        } else {
#pragma unroll
            for (int i = 0; i < BPB; i++) {
                const float v = __fadd_rn(to_f32<T>(cur.dr[i]), bias);
                delta[i] = a.softplus ? ssm_softplus_exact(v) : v;
            }
        }
        float y[BPB];
#pragma unroll
        for (int i = 0; i < BPB; i++) {
            const float dx = delta[i] * to_f32<T>(cur.xr[i]);
            float hv[4] = {cur.h[i].x, cur.h[i].y, cur.h[i].z, cur.h[i].w};
            float acc = 0.f;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                hv[e] = update(hv[e], av[e], delta[i], dx, cur.Bq[i].get(e));
                acc = fmaf(hv[e], cur.Cq[i].get(e), acc);
            }
            if (active && cur.slot[i] >= 0 && cur.slot[i] < a.nslots)
                st_f4(a.state + cur.slot[i] * a.ss0 + c * a.ss1 + 4 * part, hv);
#pragma unroll
            for (int o = TPC / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            y[i] = acc;
        }
        // (no runtime index into cur: that would put the item in local memory)
        auto out_one = [&](int i, int64_t sl, float yv, float xv, float zv) {
            const int64_t b = b0 + i;
            if (!active || b >= a.batch) return;
            float r;
            if (sl < 0) r = 0.f;
            else if (sl >= a.nslots) r = __int_as_float(0x7fc00000);
            else {
                r = yv;
                if (a.D) r = __fadd_rn(r, __fmul_rn(Dc, xv));
                if (a.z) r = __fmul_rn(r, ssm_silu_exact(zv));
            }
            ((T *)a.out)[b * a.so0 + c * a.so1] = from_f32<T>(r);
        };
        if constexpr (TPC >= BPB) {
            const int ir = part % BPB;
            float yv = y[0], xv = to_f32<T>(cur.xr[0]), zv = to_f32<T>(cur.zr[0]);
            int64_t sl = cur.slot[0];
#pragma unroll
            for (int i = 1; i < BPB; i++)
                if (ir == i) { yv = y[i]; xv = to_f32<T>(cur.xr[i]); zv = to_f32<T>(cur.zr[i]); sl = cur.slot[i]; }
            if (part < BPB) out_one(ir, sl, yv, xv, zv);
        } else {
#pragma unroll
            for (int i = 0; i < BPB; i++)
                if (part == 0) out_one(i, cur.slot[i], y[i], to_f32<T>(cur.xr[i]), to_f32<T>(cur.zr[i]));
        }
        cur = nxt;
        c0 = c0n;
        b0 = b0n;
    }
}

template <typename T, int TPC, int NV, bool SA = false, bool DTP = false, int BPB = bpb_of<NV, DTP>(), int MINB = 3,
          int NT = THREADS>
ssmtp_status_t launch_vec(const StepArgs &a, cudaStream_t s);

// Block shape of the vector kernel at d_state 16, 64 and 128 (TPC 4, 16, 32) without fused dt_proj: sequences per
// block x resident blocks per SM (the registers are capped for the latter). SSMTP_STEP_SHAPE: auto (default), 4x3,
// 4x4, 2x5, 2x6 or 1x8 (other d_state: 4x3, 2x3 at 256). auto at d_state 16 = 1x8 up to 8 sequences, 4x4 above.
// Measured on H200 (2026-11-23, 025a662, bench_ops.py, bf16, mamba-2.8b tp1 / tp2, falcon-mamba-7b, zamba-7b;
// benchmarks/results/step-shape-h200-025a662-*.json), us, the previous fixed 4x3 first: B=256 4x3 59.4 / 31.2 / 91.9
// / 85.1, 4x4 54.3 / 28.8 / 84.6 / 77.0 (mamba-2.8b tp1 77% of the copy rate), 2x6 56.1 / 29.4 / 88.1 / 80.4, 1x8
// 65.4 / 33.8 / 103.2 / 93.8; B=64 4x3 16.6 / 9.7 / 24.8 / 23.2, 4x4 16.2 / 10.1 / 23.2 / 21.5, 2x6 15.8 / 9.1 / 23.8
// / 21.9; B=8 4x3 4.8 / 3.7 / 5.2 / 4.9, 1x8 4.2 / 3.2 / 4.8 / 4.6; B=1 4x3 3.3 / 2.9 / 3.4 / 3.6, 1x8 2.6 / 2.4 /
// 2.7 / 2.7. Nsight Compute on 4x3 at B=256 (b247c84): DRAM ~54%, 24 of 64 warp slots (3 blocks of 80 registers),
// top stall long scoreboard: more resident warps, not more bytes per warp (the ring kernel, below), is what the
// memory latency wanted.
// At d_state 64 (Zamba2; one A per head) and 128 auto = 2x5 at small batch (up to 8 sequences at 64, 7 at 128), 4x4
// above. Measured on H200 (2026-11-24; benchmarks/results/step-variants-h200-54f134d.json and
// step-shapes-h200-54f134d.json), us: zamba2-2.7b, 4x3 (the previous default) -> 4x4: tp1 B=256 229.5 -> 184.9 (70%
// -> 87% of the copy rate), B=64 60.0 -> 48.5, tp2 B=64 31.9 -> 25.6; 4x3 -> 2x5: tp1 B=1 / 2 / 4 / 8 4.32 / 4.83 /
// 5.86 / 10.34 -> 3.04 / 3.76 / 5.17 / 8.86 (4x4 8.73 at B=8), tp2 B=1 / 8 4.11 / 5.87 -> 3.01 / 5.18. d_state 128
// (5120 channels, one A per head): B=1 7.19 -> 4.23 (2x5; 1x8 3.92), B=8 17.5 -> 14.9 (4x4), B=64 114.9 -> 99.5,
// B=256 449 -> 392. Fewer lanes per channel with more states each (8 x 8, 4 x 16 at d_state 64) were slower or
// spilled.
// Measured and not kept (H200, 2026-11-25, benchmarks/results/step-shape-waves-h200-not-kept.json): at d_state 16 above
// batch 8, 2x6 wherever 4x4's grid fills under 0.8 of a wave or 1.0-1.4 waves. The op alone was 2-12% faster there
// (mamba-2.8b TP=2 shard B=64 9.08 vs 9.47 us, B=12 4.40 vs 4.98), but the engine's decode step did not follow
// (mamba-2.8b B=12 3.198-3.206 vs 3.184-3.185 ms, B=16 and 32 unchanged).
// The shapes, in SSMTP_STEP_SHAPE's order: X(index, sequences per block, blocks per SM the registers are capped for);
// one list for the names, the launches and the error message.
#define STEP_SHAPES(X) X(0, 4, 3) X(1, 4, 4) X(2, 2, 5) X(3, 2, 6) X(4, 1, 8)
#define STEP_SHAPE_NAME(i, b, m) #b "x" #m,
static const char *const STEP_SHAPE_NAMES[] = {STEP_SHAPES(STEP_SHAPE_NAME)};
#undef STEP_SHAPE_NAME
constexpr int N_STEP_SHAPES = (int)(sizeof STEP_SHAPE_NAMES / sizeof STEP_SHAPE_NAMES[0]);

static int step_shape(int64_t batch, int64_t N) {
    const char *env = getenv("SSMTP_STEP_SHAPE");
    if (!env || !*env || strcmp(env, "auto") == 0) {
        if (N == 16) return batch <= 8 ? 4 : 1;
        return batch < (N == 64 ? 9 : 8) ? 2 : 1; // d_state 64 / 128 (the launcher's other sizes ignore this)
    }
    for (int i = 0; i < N_STEP_SHAPES; i++)
        if (strcmp(env, STEP_SHAPE_NAMES[i]) == 0) return i;
    return -1;
}

template <typename T, int TPC, bool SA> ssmtp_status_t launch_shape(const StepArgs &a, cudaStream_t s) {
    switch (step_shape(a.batch, a.N)) {
#define STEP_SHAPE_LAUNCH(i, b, m) case i: return launch_vec<T, TPC, 1, SA, false, b, m>(a, s);
        STEP_SHAPES(STEP_SHAPE_LAUNCH)
#undef STEP_SHAPE_LAUNCH
    default:
#define STEP_SHAPE_LIST(i, b, m) ", " #b "x" #m
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_STEP_SHAPE=%s (auto" STEP_SHAPES(STEP_SHAPE_LIST) ")",
                          getenv("SSMTP_STEP_SHAPE"));
#undef STEP_SHAPE_LIST
    }
}
#undef STEP_SHAPES

template <typename T, int TPC> ssmtp_status_t launch_pipe(const StepArgs &a, int device, cudaStream_t s) {
    constexpr int CPB = THREADS / TPC;
    const int64_t ncb = (a.dim + CPB - 1) / CPB, nitems = ncb * ((a.batch + PIPE_BPB - 1) / PIPE_BPB);
    if (nitems > 0x7fffffff || a.dim > 0x7fffffff) return launch_vec<T, TPC, 1>(a, s); // 32-bit item indices
    int sms = 132;
    SSMTP_TRY(ssm_sm_count(device, &sms));
    // 3 resident blocks per SM (the launch bound); SSMTP_STEP_BLOCKS_PER_SM overrides (benchmarks, tests).
    int per_sm = 3;
    const char *env = getenv("SSMTP_STEP_BLOCKS_PER_SM");
    if (env && *env) per_sm = atoi(env) > 0 ? atoi(env) : 3;
    const int64_t grid = nitems < (int64_t)sms * per_sm ? nitems : (int64_t)sms * per_sm;
    step_pipe_kernel<T, TPC><<<(unsigned)grid, THREADS, 0, s>>>(a, ncb, nitems);
    SSMTP_CUDA_CHECK_LAUNCH(OP);
    return SSMTP_OK;
}

template <typename T, int TPC, int NV, bool SA, bool DTP, int BPB, int MINB, int NT>
ssmtp_status_t launch_vec(const StepArgs &a, cudaStream_t s) {
    constexpr int CPB = NT / TPC;
    const dim3 grid((unsigned)((a.dim + CPB - 1) / CPB), (unsigned)((a.batch + BPB - 1) / BPB));
    return ssmtp_launch(OP, step_vec_kernel<T, TPC, NV, SA, DTP, BPB, MINB, NT>, grid, dim3(NT), 0, s,
                        ssmtp_pdl_enabled(a.device), a);
}

// Block shape with dt_proj fused at d_state 16 (TPC 4; Mamba-1 layers): sequences per block x threads per block.
// Each block reads its channels' dt_proj rows once for all its sequences, so more sequences per block mean fewer
// re-reads and dot-product passes per weight pack, but fewer blocks: auto (default) takes the fewest sequences per
// block, of 1x256, 2x256 and 4x128, whose grid fits in one wave of resident blocks (occupancy calculator), else 4x128.
// SSMTP_STEP_DTP_SHAPE names one: 1x256, 2x256, 4x256, 8x256, 4x128, 8x128 or 8x64.
// Measured on H200 (2026-11-25, benchmarks/results/dtp-shapes-h200-3ad7ef6.json, bf16, us per call in a CUDA graph,
// 1x256 (the shape before) / 2x256 / 4x128 / ops.linear + the plain step): mamba-2.8b M=4 4.04 / 4.28 / 4.75 / 6.06,
// M=8 7.22 / 7.47 / 6.12 / 6.64; its TP=2 shard M=16 7.01 / 7.38 / 5.74 / 7.13; falcon-mamba-7b M=4 9.50 / 5.81 / 7.09
// / 6.27. 8 sequences per block (230 registers, one 256-thread block per SM) were slower at every batch.
// The shapes, in SSMTP_STEP_DTP_SHAPE's order: X(index, sequences per block, blocks per SM the registers are capped
// for, threads per block); one list for the names, the auto choice's occupancy queries and the launches.
#define STEP_DTP_SHAPES(X) X(0, 1, 3, 256) X(1, 2, 2, 256) X(2, 4, 1, 256) X(3, 8, 1, 256) X(4, 4, 2, 128) \
    X(5, 8, 1, 128) X(6, 8, 1, 64)
#define STEP_DTP_NAME(i, b, m, t) #b "x" #t,
static const char *const DTP_SHAPES[] = {STEP_DTP_SHAPES(STEP_DTP_NAME)};
#undef STEP_DTP_NAME
constexpr int N_DTP_SHAPES = (int)(sizeof DTP_SHAPES / sizeof DTP_SHAPES[0]);

// Sequences per block and threads per block of shape i, and its kernel (for the occupancy calculator).
struct DtpGeom { int bpb, threads; };
#define STEP_DTP_GEOM(i, b, m, t) {b, t},
static const DtpGeom DTP_GEOM[] = {STEP_DTP_SHAPES(STEP_DTP_GEOM)};
#undef STEP_DTP_GEOM
template <typename T> static const void *dtp_kernel(int i) {
    switch (i) {
#define STEP_DTP_KERNEL(i, b, m, t) case i: return (const void *)step_vec_kernel<T, 4, 1, false, true, b, m, t>;
        STEP_DTP_SHAPES(STEP_DTP_KERNEL)
#undef STEP_DTP_KERNEL
    default: return nullptr;
    }
}

template <typename T> static int dtp_shape(const StepArgs &a) {
    const char *env = getenv("SSMTP_STEP_DTP_SHAPE");
    if (env && *env && strcmp(env, "auto") != 0) {
        for (int i = 0; i < N_DTP_SHAPES; i++)
            if (strcmp(env, DTP_SHAPES[i]) == 0) return i;
        return -1;
    }
    int sms = 0;
    if (ssm_sm_count(a.device, &sms) != SSMTP_OK) return 0;
    for (const int i : {0, 1, 4}) { // 1x256, 2x256, 4x128
        const DtpGeom g = DTP_GEOM[i];
        const int64_t grid = (a.dim + g.threads / 4 - 1) / (g.threads / 4) * ((a.batch + g.bpb - 1) / g.bpb);
        if (grid <= (int64_t)sms * ssm_blocks_per_sm(dtp_kernel<T>(i), g.threads, 0)) return i;
    }
    return 4;
}

template <typename T> ssmtp_status_t launch_dtp(const StepArgs &a, cudaStream_t s) {
    switch (dtp_shape<T>(a)) {
#define STEP_DTP_LAUNCH(i, b, m, t) case i: return launch_vec<T, 4, 1, false, true, b, m, t>(a, s);
        STEP_DTP_SHAPES(STEP_DTP_LAUNCH)
#undef STEP_DTP_LAUNCH
    default:
#define STEP_DTP_LIST(i, b, m, t) ", " #b "x" #t
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED,
                          OP ": SSMTP_STEP_DTP_SHAPE=%s (auto" STEP_DTP_SHAPES(STEP_DTP_LIST) ")",
                          getenv("SSMTP_STEP_DTP_SHAPE"));
#undef STEP_DTP_LIST
    }
}
#undef STEP_DTP_SHAPES

template <typename T, bool SA, bool DTP> ssmtp_status_t dispatch_vec(const StepArgs &a, cudaStream_t s) {
    switch (a.N / 4) {
    case 1: return launch_vec<T, 1, 1, SA, DTP>(a, s);
    case 2: return launch_vec<T, 2, 1, SA, DTP>(a, s);
    case 4:
        if constexpr (!SA && !DTP) return launch_shape<T, 4, false>(a, s);
        if constexpr (!SA && DTP) return launch_dtp<T>(a, s);
        return launch_vec<T, 4, 1, SA, DTP>(a, s);
    case 8: return launch_vec<T, 8, 1, SA, DTP>(a, s);
    case 16:
        if constexpr (!DTP) return launch_shape<T, 16, SA>(a, s);
        return launch_vec<T, 16, 1, SA, DTP>(a, s);
    case 32:
        if constexpr (!DTP) return launch_shape<T, 32, SA>(a, s);
        return launch_vec<T, 32, 1, SA, DTP>(a, s);
    default: return launch_vec<T, 32, 2, SA, DTP>(a, s); // N = 256 (the caller checked N / 4 is one of these)
    }
}

template <typename T>
ssmtp_status_t dispatch(const StepArgs &a, bool vec, bool pipe, bool sa, int device, cudaStream_t s) {
    // dt_proj on the vector path: 16-byte packs of dt_proj rows and dt rows (else the scalar kernel's loop)
    const int64_t es = (int64_t)sizeof(T);
    const bool dtp_vec = a.dtw && (a.R * es) % 16 == 0 && a.sdt1 == 1 && (a.sdt0 * es) % 16 == 0 &&
                         (a.sdtg * es) % 16 == 0 &&
                         (a.sdw0 * es) % 16 == 0 && (uintptr_t)a.dt % 16 == 0 && (uintptr_t)a.dtw % 16 == 0;
    if (vec && pipe && !sa && !a.dtw) {
        switch (a.N / 4) {
        case 1: return launch_pipe<T, 1>(a, device, s);
        case 2: return launch_pipe<T, 2>(a, device, s);
        case 4: return launch_pipe<T, 4>(a, device, s);
        case 8: return launch_pipe<T, 8>(a, device, s);
        case 16: return launch_pipe<T, 16>(a, device, s);
        case 32: return launch_pipe<T, 32>(a, device, s);
        default: break; // N = 256: the block kernel
        }
    }
    const int64_t q = a.N / 4;
    if (vec && (q == 1 || q == 2 || q == 4 || q == 8 || q == 16 || q == 32 || q == 64)) { // other N: scalar path
        // dt_proj fused: Mamba-1 layers (A per state); with one A per channel (no model has both) the scalar kernel
        if (a.dtw && !sa && dtp_vec) return dispatch_vec<T, false, true>(a, s);
        if (!a.dtw) return sa ? dispatch_vec<T, true, false>(a, s) : dispatch_vec<T, false, false>(a, s);
    }
    const int64_t n = a.batch * a.dim;
    step_scalar_kernel<T><<<(unsigned)((n + THREADS - 1) / THREADS), THREADS, 0, s>>>(a);
    SSMTP_CUDA_CHECK_LAUNCH(OP);
    return SSMTP_OK;
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_step_fwd(const ssmtp_step_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    StepArgs a;
    memset(&a, 0, sizeof a);
    ssm_fill_ptrs(a, p);
    a.batch = p->x.shape[0];
    a.dim = p->x.shape[1];
    a.N = p->A.shape[1];
    a.per_group = a.dim / p->B.shape[1];
    a.nslots = p->state.shape[0];
    a.sx0 = p->x.stride[0]; a.sx1 = p->x.stride[1];
    a.sdt0 = p->dt.stride[0]; a.sdt1 = p->dt.stride[1];
    a.dt_per = a.dim;
    if (p->dt.ndim == 3) {
        a.sdtg = p->dt.stride[1];
        a.sdt1 = p->dt.stride[2];
        a.dt_per = a.dim / p->dt.shape[1];
    }
    if (a.z) { a.sz0 = p->z.stride[0]; a.sz1 = p->z.stride[1]; }
    a.so0 = p->out.stride[0]; a.so1 = p->out.stride[1];
    a.sB0 = p->B.stride[0]; a.sB1 = p->B.stride[1]; a.sB2 = p->B.stride[2];
    a.sC0 = p->C.stride[0]; a.sC1 = p->C.stride[1]; a.sC2 = p->C.stride[2];
    a.sA0 = p->A.stride[0]; a.sA1 = p->A.stride[1];
    if (a.D) { a.sD = p->D.stride[0]; a.D_dtype = p->D.dtype; }
    if (a.dt_bias) { a.sbias = p->dt_bias.stride[0]; a.bias_dtype = p->dt_bias.dtype; }
    a.ss0 = p->state.stride[0]; a.ss1 = p->state.stride[1]; a.ss2 = p->state.stride[2];
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    a.softplus = p->dt_softplus;
    // SSMTP_STATE_EARLY=0 ignores the launch hint (comparisons)
    const char *eenv = getenv("SSMTP_STATE_EARLY");
    a.state_early = eenv && eenv[0] == '0' && !eenv[1] ? 0 : p->state_early;
    a.device = p->x.device;
    // B/C as one vector per 4 states: state-contiguous, vector-aligned bases and strides (the models' x_proj split).
    const int64_t al = 4 * (int64_t)ssmtp_dtype_size(p->x.dtype);
    a.vecbc = a.sB2 == 1 && a.sC2 == 1 && ((uintptr_t)a.B % al) == 0 && ((uintptr_t)a.C % al) == 0 &&
              a.sB0 % 4 == 0 && a.sB1 % 4 == 0 && a.sC0 % 4 == 0 && a.sC1 % 4 == 0;
    if (p->dt_proj.data) {
        a.dtw = p->dt_proj.data;
        a.R = p->dt_proj.shape[1];
        a.sdw0 = p->dt_proj.stride[0];
    }
    if (a.batch == 0 || a.dim == 0) return SSMTP_OK;
    if (a.dtw && a.batch > 65535)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch=%lld > 65535 with dt_proj fused (a small-batch path)",
                          (long long)a.batch);
    if ((a.batch + 1) / 2 > 65535)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch=%lld > %d", (long long)a.batch, 65535 * 2);

    // float4 state rows: 16-byte aligned bases and row strides, contiguous state axis; A rows likewise, or one A per
    // channel (state stride 0: the SA kernels).
    const bool sa = a.sA1 == 0;
    // The vector kernels index in 32 bits: sizes and strides below 2^31 (offsets are still 64-bit products).
    bool fits32 = true;
    for (int64_t v : {a.batch, a.dim, a.sx0, a.sx1, a.sdt0, a.sdt1, a.sdtg, a.sz0, a.sz1, a.so0, a.so1, a.sB0, a.sB1,
                      a.sB2, a.sC0, a.sC1, a.sC2, a.sA0, a.sD, a.sbias, a.ss0, a.ss1, a.sidx, a.sdw0, a.dt_per})
        fits32 = fits32 && v >= 0 && v <= 0x7fffffffLL;
    const bool vec = fits32 && a.N % 4 == 0 && a.ss2 == 1 && a.ss0 % 4 == 0 && a.ss1 % 4 == 0 &&
                     ((uintptr_t)a.state % 16) == 0 &&
                     (sa || (a.sA1 == 1 && a.sA0 % 4 == 0 && ((uintptr_t)a.A % 16) == 0));
    // Kernel choice (SSMTP_STEP_KERNEL): "block" (default) or "pipe"; anything else is an error, not a fallback.
    // Measured on H200 (2026-11-22, bench_ops.py, bf16, both validated): pipe was slower at B >= 8 on every model
    // (mamba-2.8b tp1 B=256: 92.7 us vs 72.7, 45% vs 58% of HBM), equal at B=1. So block stays the default. A third
    // variant, 8 sequences per block at 2 blocks per SM with B/C packed, validated and measured slower too (2026-11-23:
    // 93.4 us vs 71.6 at mamba-2.8b tp1 B=256, 26.8 vs 20.1 at B=64; benchmarks/results/block8-step-h200-9d46302.json)
    // and was removed. A fourth, "ring" (2026-11-23, c617758: a persistent grid with the next three items' state
    // rows copied into shared-memory stages by cp.async, ~48 KB per block always in flight), validated and measured
    // slower at B >= 64 (mamba-2.8b tp1 B=256 64.1 vs 59.4 us, B=64 18.3 vs 16.7; 4.6 vs 4.8 at B=8;
    // benchmarks/results/step-h200-c617758-ring.json): bytes in flight are not what holds this kernel at ~70% of the
    // copy rate. Removed.
    bool pipe = false;
    const char *kenv = getenv("SSMTP_STEP_KERNEL");
    if (kenv && *kenv) {
        if (strcmp(kenv, "pipe") == 0) pipe = true;
        else if (strcmp(kenv, "block") != 0)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_STEP_KERNEL=%s (block or pipe)", kenv);
    }
    cudaStream_t s = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, OP, { return dispatch<T>(a, vec, pipe, sa, p->x.device, s); });
    return SSMTP_OK;
}
