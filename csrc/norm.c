/*
 * norm.c - the gated RMSNorm over groups of channels, the block input's residual add + RMSNorm and the weightless
 * RMS norms over segments of a row: argument checks, device dispatch and the CPU references. Semantics: see
 * ssmtp_gated_norm, ssmtp_add_rms_norm and ssmtp_rms_segments in ssmtp.h.
 */
#include "internal.h"

#include <stdlib.h>

/* What every norm here checks last: eps finite and >= 0, all tensors on one device, rows contiguous. */
static ssmtp_status_t norm_tail_check(const char *op, float eps, const ssmtp_tensor_t *const *ts,
                                      const char *const *names, int n, int32_t *device) {
    if (!(eps >= 0.0f) || isinf(eps))
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: eps=%g must be finite and >= 0", op, (double)eps);
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, n, device));
    for (int i = 0; i < n; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(op, names[i], ts[i]));
    return SSMTP_OK;
}

#define OP "gated_norm"

static ssmtp_status_t gated_norm_check(const ssmtp_gated_norm_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "y", &p->y, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "y", &p->y));
    const int64_t M = p->y.shape[0], D = p->y.shape[1];
    const int32_t ty = p->y.dtype;
    SSMTP_TRY(ssmtp_check_tensor(OP, "gate", &p->gate, 0, 2, ty, (int64_t[]){M, D}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "weight", &p->weight, 0, 1, ty, (int64_t[]){D}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 2, ty, (int64_t[]){M, D}));
    if (p->group < 1 || D % p->group != 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": group=%lld does not divide D=%lld", (long long)p->group,
                          (long long)D);
    const ssmtp_tensor_t *ts[] = {&p->y, &p->gate, &p->weight, &p->out};
    const char *names[] = {"y", "gate", "weight", "out"};
    return norm_tail_check(OP, p->eps, ts, names, 4, device);
}

static void gated_norm_cpu(const ssmtp_gated_norm_params_t *p) {
    const int64_t M = p->y.shape[0], D = p->y.shape[1], G = p->group;
    const int32_t ty = p->y.dtype;
    for (int64_t m = 0; m < M; m++) {
        const int64_t ry = m * p->y.stride[0], rg = m * p->gate.stride[0], ro = m * p->out.stride[0];
        for (int64_t c0 = 0; c0 < D; c0 += G) {
            float ss = 0.0f;
            for (int64_t c = c0; c < c0 + G; c++) {
                const float v = ssmtp_load(p->y.data, ty, ry + c) * ssmtp_silu(ssmtp_load(p->gate.data, ty, rg + c));
                ss += v * v;
            }
            const float r = 1.0f / sqrtf(ss / (float)G + p->eps);
            for (int64_t c = c0; c < c0 + G; c++) { /* out may alias y or gate: each element read before written */
                const float v = ssmtp_load(p->y.data, ty, ry + c) * ssmtp_silu(ssmtp_load(p->gate.data, ty, rg + c));
                const float n = ssmtp_round(v * r, ty);
                ssmtp_store(p->out.data, ty, ro + c, ssmtp_load(p->weight.data, ty, c) * n);
            }
        }
    }
}

ssmtp_status_t ssmtp_gated_norm(const ssmtp_gated_norm_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    SSMTP_TRY(gated_norm_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) {
        gated_norm_cpu(p);
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_gated_norm(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

#undef OP
#define OP "add_rms_norm"

void ssmtp_add_norm_row(const ssmtp_tensor_t *res, const ssmtp_tensor_t *add, const ssmtp_tensor_t *res_out,
                        const ssmtp_tensor_t *norm_w, float eps, int32_t ty, int64_t m, float *h) {
    const int64_t H = norm_w->shape[0];
    float ss = 0.0f;
    for (int64_t k = 0; k < H; k++) { /* residual add in fp32, stored at res_out's precision; the norm reads T's */
        float r = ssmtp_load(res->data, res->dtype, m * res->stride[0] + k * res->stride[1]);
        if (ssmtp_present(add)) r += ssmtp_load(add->data, ty, m * add->stride[0] + k * add->stride[1]);
        if (ssmtp_present(res_out))
            ssmtp_store(res_out->data, res_out->dtype, m * res_out->stride[0] + k * res_out->stride[1], r);
        h[k] = ssmtp_round(r, ty);
        ss += h[k] * h[k];
    }
    const float s = H > 0 ? 1.0f / sqrtf(ss / (float)H + eps) : 0.0f;
    for (int64_t k = 0; k < H; k++) {
        const float nw = ssmtp_load(norm_w->data, ty, k * norm_w->stride[0]);
        h[k] = ssmtp_round(nw * ssmtp_round(h[k] * s, ty), ty);
    }
}

static ssmtp_status_t add_norm_check(const ssmtp_add_norm_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "norm_w", &p->norm_w, 0, 1, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "norm_w", &p->norm_w));
    const int32_t ty = p->norm_w.dtype;
    const int64_t H = p->norm_w.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(OP, "res", &p->res, 0, 2, -1, (int64_t[]){-1, H}));
    SSMTP_TRY(ssmtp_check_stream_dtype(OP, "res", &p->res, ty, "norm_w"));
    const int64_t M = p->res.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(OP, "add", &p->add, 1, 2, ty, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "res_out", &p->res_out, 1, 2, -1, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_stream_dtype(OP, "res_out", &p->res_out, ty, "norm_w"));
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 2, ty, (int64_t[]){M, H}));
    const ssmtp_tensor_t *ts[] = {&p->res, &p->add, &p->res_out, &p->norm_w, &p->out};
    const char *names[] = {"res", "add", "res_out", "norm_w", "out"};
    return norm_tail_check(OP, p->eps, ts, names, 5, device);
}

static ssmtp_status_t add_norm_cpu(const ssmtp_add_norm_params_t *p) {
    const int64_t M = p->res.shape[0], H = p->norm_w.shape[0];
    const int32_t ty = p->norm_w.dtype;
    float *h = malloc(sizeof(float) * (size_t)(H > 0 ? H : 1));
    if (!h) return ssmtp_fail(SSMTP_ERR_NOMEM, OP ": no memory for a row of H=%lld floats", (long long)H);
    for (int64_t m = 0; m < M; m++) { /* out written after the row's inputs are read: out may not alias them */
        ssmtp_add_norm_row(&p->res, &p->add, &p->res_out, &p->norm_w, p->eps, ty, m, h);
        for (int64_t k = 0; k < H; k++) ssmtp_store(p->out.data, ty, m * p->out.stride[0] + k * p->out.stride[1], h[k]);
    }
    free(h);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_add_rms_norm(const ssmtp_add_norm_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    SSMTP_TRY(add_norm_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return add_norm_cpu(p);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_add_rms_norm(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

#undef OP
#define OP "rms_segments"

static ssmtp_status_t rms_segments_check(const ssmtp_rms_segments_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "x", &p->x, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "x", &p->x));
    const int64_t M = p->x.shape[0], D = p->x.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 2, p->x.dtype, (int64_t[]){M, D}));
    if (p->nseg < 1 || p->nseg > SSMTP_RMS_MAX_SEGMENTS)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": %lld segments, supported 1..%d", (long long)p->nseg,
                          SSMTP_RMS_MAX_SEGMENTS);
    int64_t tot = 0;
    for (int64_t i = 0; i < p->nseg; i++) {
        if (p->len[i] < 1 || p->len[i] > D)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": segment %lld has %lld elements, expected 1..%lld (D)",
                              (long long)i, (long long)p->len[i], (long long)D);
        tot += p->len[i];
    }
    if (tot != D)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": the segments cover %lld elements, x has D=%lld", (long long)tot,
                          (long long)D);
    const ssmtp_tensor_t *ts[] = {&p->x, &p->out};
    const char *names[] = {"x", "out"};
    return norm_tail_check(OP, p->eps, ts, names, 2, device);
}

static void rms_segments_cpu(const ssmtp_rms_segments_params_t *p) {
    const int64_t M = p->x.shape[0];
    const int32_t ty = p->x.dtype;
    for (int64_t m = 0; m < M; m++) {
        const int64_t rx = m * p->x.stride[0], ro = m * p->out.stride[0];
        for (int64_t i = 0, o = 0; i < p->nseg; o += p->len[i], i++) {
            float ss = 0.0f;
            for (int64_t k = o; k < o + p->len[i]; k++) {
                const float v = ssmtp_load(p->x.data, ty, rx + k);
                ss += v * v;
            }
            const float r = 1.0f / sqrtf(ss / (float)p->len[i] + p->eps);
            for (int64_t k = o; k < o + p->len[i]; k++) /* out may be x: each element read before written */
                ssmtp_store(p->out.data, ty, ro + k, ssmtp_load(p->x.data, ty, rx + k) * r);
        }
    }
}

ssmtp_status_t ssmtp_rms_segments(const ssmtp_rms_segments_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    SSMTP_TRY(rms_segments_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) {
        rms_segments_cpu(p);
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_rms_segments(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
