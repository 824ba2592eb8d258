// norm.cu - the gated RMSNorm over groups of channels, the block input's residual add + RMSNorm and the weightless RMS
// norms over segments of a row, on the GPU. Semantics: ssmtp_gated_norm, ssmtp_add_rms_norm and ssmtp_rms_segments in
// csrc/ssmtp.h; CPU references: csrc/norm.c.
//
// Why a kernel of its own: in Zamba2's decode step the norm sits between the state update and out_proj's GEMV, both
// launched with programmatic dependent launch (PDL). torch.compile's two kernels there (a reduction and a pointwise
// pass) take no part in PDL, so out_proj could not start streaming its weights before they were done. This kernel is
// one launch with PDL.
//
// Work layout: one block per (row, group) of up to 1024 threads, each holding E <= 8 of the group's channels in
// registers (groups up to 8192 channels; larger ones are SSMTP_ERR_UNSUPPORTED): all loads first, one round trip,
// then v = y * silu(gate) (fp32), the block's sum of v^2 (warp shuffles, then shared memory), and the outputs
// round(weight * round(v * r)). The reduction order differs from the CPU reference's sequential sum, so results may
// differ by a rounding. Measured and replaced: 256 threads walking the group in two strided passes, whose dependent
// loads cost zamba2-2.7b's decode step 3.60 ms against 3.09-3.11 with the two compiled kernels (H200, B=1;
// benchmarks/results/gated-norm-h200-c8afe68.json).
// Measured and not kept (H200, 2026-11-25, benchmarks/results/zamba2-norm-outproj-h200-not-kept.json): this norm
// inside out_proj's GEMV, every GEMV block normalising the row into shared memory after its wait: zamba2-2.7b decode
// step at B=1 3.07-3.08 ms against 2.85-2.86 with this kernel and the GEMV apart.
#include "common.cuh"
#include "ssm_math.cuh"

#define OP "gated_norm"

namespace {

constexpr int NORM_THREADS = 1024; // threads per block (fewer for small groups: a multiple of 32 covering the group)
constexpr int NORM_MAX_E = 8;      // elements per thread held in registers: groups up to 8192 channels

// The block's sum of ss (warp shuffles, then one shared-memory pass; a barrier every thread passes), as the scale
// 1 / sqrt(sum / n + eps) that every kernel here applies, with the same roundings.
__device__ __forceinline__ float block_rms_scale(float ss, int n, float eps) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    __shared__ float part[NORM_THREADS / 32];
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int i = 0; i < (int)blockDim.x / 32; i++) tot += part[i];
    return __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(__fdiv_rn(tot, (float)n), eps)));
}

// Threads per block and elements per thread (E, a power of two <= NORM_MAX_E) covering n channels; fn(tag) launches
// the kernel instantiated for E = decltype(tag)::value.
template <typename F> ssmtp_status_t norm_launch(int64_t n, int *nt, F &&fn) {
    const int64_t e = (n + NORM_THREADS - 1) / NORM_THREADS;
    const int E = e <= 1 ? 1 : e <= 2 ? 2 : e <= 4 ? 4 : 8;
    *nt = (int)(((n + E - 1) / E + 31) / 32 * 32);
    switch (E) {
    case 1: return fn(std::integral_constant<int, 1>());
    case 2: return fn(std::integral_constant<int, 2>());
    case 4: return fn(std::integral_constant<int, 4>());
    default: return fn(std::integral_constant<int, NORM_MAX_E>());
    }
}

// One block per (row, group); thread t holds the group's channels t, t + nt, ... (E of them) in registers: every
// load of y, gate (and of the weight, before the PDL wait) is issued before any is used, one memory round trip.
template <typename T, int E>
__global__ void __launch_bounds__(NORM_THREADS)
    gated_norm_kernel(const T *y, int64_t sy, const T *gate, int64_t sg, // out may alias y or gate
                      const T *__restrict__ w, T *out, int64_t so, int64_t ngroups, int G, float eps) {
    ssm_pdl_trigger();
    const int nt = blockDim.x, t = threadIdx.x;
    const int64_t m = blockIdx.x / ngroups, c0 = (blockIdx.x % ngroups) * G;
    float wv[E];
#pragma unroll
    for (int e = 0; e < E; e++) // the weights: before the wait (no kernel writes them)
        wv[e] = t + e * nt < G ? to_f32<T>(w[c0 + t + e * nt]) : 0.f;
    ssm_pdl_wait(); // y (and gate) come from the kernels before
    const T *yr = y + m * sy + c0, *gr = gate + m * sg + c0;
    T yv[E], gv[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        const bool in = t + e * nt < G;
        yv[e] = in ? yr[t + e * nt] : from_f32<T>(0.f);
        gv[e] = in ? gr[t + e * nt] : from_f32<T>(0.f);
    }
    float v[E], ss = 0.f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        v[e] = to_f32<T>(yv[e]) * ssm_silu_exact(to_f32<T>(gv[e])); // 0 past the group
        ss = fmaf(v[e], v[e], ss);
    }
    const float r = block_rms_scale(ss, G, eps);
    T *orow = out + m * so + c0;
#pragma unroll
    for (int e = 0; e < E; e++)
        if (t + e * nt < G) orow[t + e * nt] = from_f32<T>(wv[e] * to_f32<T>(from_f32<T>(v[e] * r)));
}

// The residual add + RMSNorm of a Mamba-1 block's input (ssmtp_add_rms_norm), one block per row, the thread layout of
// gated_norm_kernel: thread t holds the row's elements t, t + nt, ... (E of them); norm_w before the PDL wait, every
// load of res and add issued before any is used. Math as decode.cu's prologue (the same roundings).
template <typename T, int E>
__global__ void __launch_bounds__(NORM_THREADS)
    add_norm_kernel(const void *res, int64_t sr, int res_f32, const T *add, int64_t sa, void *res_out, int64_t sro,
                    int ro_f32, const T *__restrict__ w, T *out, int64_t so, int H, float eps) {
    ssm_pdl_trigger();
    const int nt = blockDim.x, t = threadIdx.x;
    const int64_t m = blockIdx.x;
    float wv[E];
#pragma unroll
    for (int e = 0; e < E; e++) wv[e] = t + e * nt < H ? to_f32<T>(w[t + e * nt]) : 0.f;
    ssm_pdl_wait(); // res and add come from the kernels before
    float r[E], a[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        const int64_t i = t + e * nt;
        const bool in = i < H;
        r[e] = !in ? 0.f : res_f32 ? ((const float *)res)[m * sr + i] : to_f32<T>(((const T *)res)[m * sr + i]);
        a[e] = in && add ? to_f32<T>(add[m * sa + i]) : 0.f;
    }
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        r[e] = __fadd_rn(r[e], a[e]);
        const int64_t i = t + e * nt;
        if (res_out && i < H) {
            if (ro_f32) ((float *)res_out)[m * sro + i] = r[e];
            else ((T *)res_out)[m * sro + i] = from_f32<T>(r[e]);
        }
        r[e] = to_f32<T>(from_f32<T>(r[e])); // v = (T) r: 0 past the row
        ss = fmaf(r[e], r[e], ss);
    }
    const float s = block_rms_scale(ss, H, eps);
    T *orow = out + m * so;
#pragma unroll
    for (int e = 0; e < E; e++)
        if (t + e * nt < H)
            orow[t + e * nt] = from_f32<T>(__fmul_rn(wv[e], to_f32<T>(from_f32<T>(__fmul_rn(r[e], s)))));
}

struct Segs {
    int64_t off[SSMTP_RMS_MAX_SEGMENTS];
    int len[SSMTP_RMS_MAX_SEGMENTS];
    int nseg;
};

// Weightless RMS norm of one (row, segment) per block (ssmtp_rms_segments: Falcon-Mamba's dt, B and C), thread t
// holding the segment's elements t, t + nt, ... (E of them); nothing to load before the PDL wait but the launch.
template <typename T, int E>
__global__ void __launch_bounds__(NORM_THREADS)
    rms_segments_kernel(const T *x, int64_t sx, T *out, int64_t so, Segs sg, float eps) {
    ssm_pdl_trigger();
    const int nt = blockDim.x, t = threadIdx.x, seg = (int)(blockIdx.x % sg.nseg);
    const int64_t m = blockIdx.x / sg.nseg;
    const int len = sg.len[seg];
    const T *xr = x + m * sx + sg.off[seg];
    ssm_pdl_wait(); // x comes from the kernels before
    float v[E], ss = 0.f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        v[e] = t + e * nt < len ? to_f32<T>(xr[t + e * nt]) : 0.f;
        ss = fmaf(v[e], v[e], ss);
    }
    const float r = block_rms_scale(ss, len, eps); // its barrier: out may be x, every element was read above
    T *orow = out + m * so + sg.off[seg];
#pragma unroll
    for (int e = 0; e < E; e++)
        if (t + e * nt < len) orow[t + e * nt] = from_f32<T>(__fmul_rn(v[e], r));
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_gated_norm(const ssmtp_gated_norm_params_t *p, void *stream) {
    const int64_t M = p->y.shape[0], D = p->y.shape[1], G = p->group;
    if (M == 0 || D == 0) return SSMTP_OK;
    const int64_t blocks = M * (D / G);
    if (blocks > 0x7fffffffLL || G > (int64_t)NORM_THREADS * NORM_MAX_E)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %lld blocks of groups of %lld channels on CUDA (at most "
                          "2^31 - 1 blocks of %d channels)", (long long)blocks, (long long)G,
                          NORM_THREADS * NORM_MAX_E);
    SSMTP_TRY(ssmtp_cuda_set_device(p->y.device));
    const bool pdl = ssmtp_pdl_enabled(p->y.device);
    cudaStream_t s = (cudaStream_t)stream;
    int nt = 0;
    SSMTP_DISPATCH_FLOAT(p->y.dtype, T, OP, {
        return norm_launch(G, &nt, [&](auto E) {
            return ssmtp_launch(OP, gated_norm_kernel<T, decltype(E)::value>, (unsigned)blocks, nt, 0, s, pdl,
                                (const T *)p->y.data, (int64_t)p->y.stride[0], (const T *)p->gate.data,
                                (int64_t)p->gate.stride[0], (const T *)p->weight.data, (T *)p->out.data,
                                (int64_t)p->out.stride[0], D / G, (int)G, p->eps);
        });
    });
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_add_rms_norm(const ssmtp_add_norm_params_t *p, void *stream) {
    const int64_t M = p->res.shape[0], H = p->norm_w.shape[0];
    if (M == 0 || H == 0) return SSMTP_OK;
    if (M > 0x7fffffffLL || H > SSMTP_ADD_NORM_CUDA_MAX_H)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "add_rms_norm: %lld rows of %lld elements on CUDA (at most 2^31 - 1 "
                          "rows of %d)", (long long)M, (long long)H, SSMTP_ADD_NORM_CUDA_MAX_H);
    SSMTP_TRY(ssmtp_cuda_set_device(p->norm_w.device));
    const bool pdl = ssmtp_pdl_enabled(p->norm_w.device);
    cudaStream_t s = (cudaStream_t)stream;
    const int64_t sa = p->add.data ? p->add.stride[0] : 0, sro = p->res_out.data ? p->res_out.stride[0] : 0;
    const int res_f32 = p->res.dtype == SSMTP_DTYPE_F32, ro_f32 = p->res_out.dtype == SSMTP_DTYPE_F32;
    int nt = 0;
    SSMTP_DISPATCH_FLOAT(p->norm_w.dtype, T, "add_rms_norm", {
        return norm_launch(H, &nt, [&](auto E) {
            return ssmtp_launch("add_rms_norm", add_norm_kernel<T, decltype(E)::value>, (unsigned)M, nt, 0, s, pdl,
                                (const void *)p->res.data, (int64_t)p->res.stride[0], res_f32, (const T *)p->add.data,
                                sa, p->res_out.data, sro, ro_f32, (const T *)p->norm_w.data, (T *)p->out.data,
                                (int64_t)p->out.stride[0], (int)H, p->eps);
        });
    });
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_rms_segments(const ssmtp_rms_segments_params_t *p, void *stream) {
    const int64_t M = p->x.shape[0];
    Segs sg = {};
    sg.nseg = (int)p->nseg;
    int64_t most = 0;
    for (int i = 0, o = 0; i < sg.nseg; o += (int)p->len[i], i++) {
        sg.off[i] = o;
        sg.len[i] = (int)p->len[i];
        most = p->len[i] > most ? p->len[i] : most;
    }
    if (M == 0) return SSMTP_OK;
    if (M * sg.nseg > 0x7fffffffLL || most > (int64_t)NORM_THREADS * NORM_MAX_E)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "rms_segments: %lld rows with a %lld-element segment on CUDA (at most "
                          "2^31 - 1 blocks, segments of %d)", (long long)M, (long long)most, NORM_THREADS * NORM_MAX_E);
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    const bool pdl = ssmtp_pdl_enabled(p->x.device);
    cudaStream_t s = (cudaStream_t)stream;
    int nt = 0;
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, "rms_segments", {
        return norm_launch(most, &nt, [&](auto E) {
            return ssmtp_launch("rms_segments", rms_segments_kernel<T, decltype(E)::value>, (unsigned)(M * sg.nseg),
                                nt, 0, s, pdl, (const T *)p->x.data, (int64_t)p->x.stride[0], (T *)p->out.data,
                                (int64_t)p->out.stride[0], sg, p->eps);
        });
    });
    return SSMTP_OK;
}
