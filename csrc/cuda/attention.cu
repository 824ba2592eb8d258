// attention.cu - decode attention over slot-indexed K/V caches (one query token per sequence), reading each
// sequence's first lengths[b] keys in place. Semantics: ssmtp_decode_attention in csrc/ssmtp.h; CPU reference:
// csrc/attention.c.
//
// One block per (head, sequence), WARPS warps. Warp w takes keys w, w + WARPS, ... in groups of U: it issues the
// loads of U key rows and U value rows at once (a warp is latency-bound on its own: at batch 1 a head has a single
// block, so keys in flight per warp are what keeps HBM busy), then computes the U scores (lanes split head_dim in
// chunks of VEC elements, a shuffle sum) and folds them into a running (max, sum, accumulator) - the online softmax.
// The warps' partial results are merged through shared memory at the end. fp32 throughout, one rounding of out.
// Traffic: each key and value row is read once (no gather copy, no key past the sequence's length).
// Launched with PDL (sm_90+): it reads no parameters, so griddepcontrol.wait comes first; only the launch of the next
// kernel (launch_dependents) is signalled before it.
#include "common.cuh"

#include <math.h>
#include <string.h>

#define OP "decode_attention"

namespace {

constexpr int WARPS = 8;

struct AttnArgs {
    const void *q, *k, *v;
    const int32_t *idx, *len;
    void *out;
    int64_t D, nslots, maxlen, group;
    int64_t sq0, sq1, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, sidx, slen;
    float scale;
};

// VEC consecutive elements as fp32 (VEC = 4: one 8- or 16-byte load; the launcher checked the alignment).
template <typename T, int VEC> __device__ __forceinline__ void loadv(const T *p, float *f) {
    if constexpr (VEC == 4 && sizeof(T) == 2) {
        const uint2 u = *(const uint2 *)p;
        const T *h = (const T *)&u;
#pragma unroll
        for (int e = 0; e < 4; e++) f[e] = to_f32<T>(h[e]);
    } else if constexpr (VEC == 4 && sizeof(T) == 4) {
        const float4 u = *(const float4 *)p;
        f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
    } else {
#pragma unroll
        for (int e = 0; e < VEC; e++) f[e] = to_f32<T>(p[e]);
    }
}

// NCH: chunks of VEC elements per lane (head_dim <= 32 * VEC * NCH); U: keys per group.
template <typename T, int VEC, int NCH, int U>
__global__ void __launch_bounds__(WARPS * 32) attn_kernel(const AttnArgs a) {
    constexpr int NE = NCH * VEC;
    __shared__ float sm_m[WARPS], sm_l[WARPS];
    __shared__ float sm_acc[WARPS][SSMTP_MAX_HEAD_DIM];
    const int64_t h = blockIdx.x, b = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    ssm_pdl_trigger();
    ssm_pdl_wait(); // q, k, v, idx and len may come from the kernels before
    const int64_t slot = a.idx[b * a.sidx], n = a.len[b * a.slen];
    T *out = (T *)a.out + b * a.so0 + h * a.so1;
    if (slot < 0 || slot >= a.nslots || n < 1 || n > a.maxlen) { // padding: zeros; bad index: NaN
        const T fill = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        for (int64_t d = threadIdx.x; d < a.D; d += WARPS * 32) out[d] = fill;
        return;
    }
    const int64_t kvh = h / a.group;
    const T *qp = (const T *)a.q + b * a.sq0 + h * a.sq1;
    const T *kb = (const T *)a.k + slot * a.sk0 + kvh * a.sk2;
    const T *vb = (const T *)a.v + slot * a.sv0 + kvh * a.sv2;
    float q[NE], acc[NE];
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        const int64_t d0 = (int64_t)(lane + 32 * c) * VEC;
        float f[VEC];
        if (d0 < a.D) loadv<T, VEC>(qp + d0, f);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            q[c * VEC + e] = d0 < a.D ? f[e] * a.scale : 0.f;
            acc[c * VEC + e] = 0.f;
        }
    }
    float m = -INFINITY, l = 0.f;
    for (int64_t t0 = (int64_t)warp * U; t0 < n; t0 += (int64_t)WARPS * U) {
        float kf[U][NE], vf[U][NE];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t t = t0 + u;
#pragma unroll
            for (int c = 0; c < NCH; c++) {
                const int64_t d0 = (int64_t)(lane + 32 * c) * VEC;
                if (t < n && d0 < a.D) {
                    loadv<T, VEC>(kb + t * a.sk1 + d0, &kf[u][c * VEC]);
                    loadv<T, VEC>(vb + t * a.sv1 + d0, &vf[u][c * VEC]);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; e++) kf[u][c * VEC + e] = vf[u][c * VEC + e] = 0.f;
                }
            }
        }
        float s[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float x = 0.f;
#pragma unroll
            for (int i = 0; i < NE; i++) x = fmaf(q[i], kf[u][i], x);
            s[u] = x;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int u = 0; u < U; u++) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
        float mn = m;
#pragma unroll
        for (int u = 0; u < U; u++)
            if (t0 + u < n) mn = fmaxf(mn, s[u]);
        const float corr = expf(m - mn); // m = -inf on the first group: 0
        l *= corr;
#pragma unroll
        for (int i = 0; i < NE; i++) acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float e = t0 + u < n ? expf(s[u] - mn) : 0.f;
            l += e;
#pragma unroll
            for (int i = 0; i < NE; i++) acc[i] = fmaf(e, vf[u][i], acc[i]);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        const int64_t d0 = (int64_t)(lane + 32 * c) * VEC;
#pragma unroll
        for (int e = 0; e < VEC; e++)
            if (d0 + e < a.D) sm_acc[warp][d0 + e] = acc[c * VEC + e];
    }
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) M = fmaxf(M, sm_m[w]);
    float ws[WARPS], L = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        ws[w] = sm_m[w] == -INFINITY ? 0.f : expf(sm_m[w] - M); // a warp without keys weighs nothing
        L = fmaf(sm_l[w], ws[w], L);
    }
    const float inv = 1.f / L;
    for (int64_t d = threadIdx.x; d < a.D; d += WARPS * 32) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) o = fmaf(sm_acc[w][d], ws[w], o);
        out[d] = from_f32<T>(o * inv);
    }
}

template <typename T, int VEC, int NCH, int U>
ssmtp_status_t launch(const AttnArgs &a, int64_t B, int64_t H, bool pdl, cudaStream_t st) {
    return ssmtp_launch(OP, attn_kernel<T, VEC, NCH, U>, dim3((unsigned)H, (unsigned)B), WARPS * 32, 0, st, pdl, a);
}

template <typename T>
ssmtp_status_t dispatch(const AttnArgs &a, int64_t B, int64_t H, bool vec, bool pdl, cudaStream_t st) {
    if (vec) { // 4 elements per load; up to 2 key groups of 4 rows in flight per warp for head_dim <= 256
        if (a.D <= 128) return launch<T, 4, 1, 4>(a, B, H, pdl, st);
        if (a.D <= 256) return launch<T, 4, 2, 4>(a, B, H, pdl, st);
        return launch<T, 4, 4, 2>(a, B, H, pdl, st);
    }
    if (a.D <= 128) return launch<T, 1, 4, 2>(a, B, H, pdl, st);
    if (a.D <= 256) return launch<T, 1, 8, 1>(a, B, H, pdl, st);
    return launch<T, 1, 16, 1>(a, B, H, pdl, st);
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_decode_attention(const ssmtp_attn_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->q.device));
    AttnArgs a;
    memset(&a, 0, sizeof a);
    a.q = p->q.data;
    a.k = p->k.data;
    a.v = p->v.data;
    a.idx = (const int32_t *)p->state_idx.data;
    a.len = (const int32_t *)p->lengths.data;
    a.out = p->out.data;
    const int64_t B = p->q.shape[0], H = p->q.shape[1];
    a.D = p->q.shape[2];
    a.nslots = p->k.shape[0];
    a.maxlen = p->k.shape[1];
    a.group = H / p->k.shape[2];
    a.sq0 = p->q.stride[0]; a.sq1 = p->q.stride[1];
    a.sk0 = p->k.stride[0]; a.sk1 = p->k.stride[1]; a.sk2 = p->k.stride[2];
    a.sv0 = p->v.stride[0]; a.sv1 = p->v.stride[1]; a.sv2 = p->v.stride[2];
    a.so0 = p->out.stride[0]; a.so1 = p->out.stride[1];
    a.sidx = p->state_idx.stride[0];
    a.slen = p->lengths.stride[0];
    a.scale = p->scale;
    if (B == 0 || H == 0) return SSMTP_OK;
    if (B > 65535 || H > 0x7fffffff)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch=%lld heads=%lld too large", (long long)B, (long long)H);
    // vector loads of 4 elements: every row start (q, k, v) must sit on a 4-element boundary of an aligned base
    const size_t es = ssmtp_dtype_size(p->q.dtype);
    const int64_t strides[] = {a.sq0, a.sq1, a.sk0, a.sk1, a.sk2, a.sv0, a.sv1, a.sv2};
    bool vec = a.D % 4 == 0;
    for (int i = 0; i < 8; i++) vec = vec && strides[i] % 4 == 0;
    vec = vec && (uintptr_t)a.q % (4 * es) == 0 && (uintptr_t)a.k % (4 * es) == 0 && (uintptr_t)a.v % (4 * es) == 0;
    cudaStream_t st = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(p->q.device);
    SSMTP_DISPATCH_FLOAT(p->q.dtype, T, OP, { return dispatch<T>(a, B, H, vec, pdl, st); });
    return SSMTP_OK;
}
