/*
 * norm.c - the gated RMSNorm over groups of channels: argument checks, device dispatch and the CPU reference.
 * Semantics: see ssmtp_gated_norm in ssmtp.h.
 */
#include "internal.h"

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
    if (!(p->eps >= 0.0f) || isinf(p->eps))
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": eps=%g must be finite and >= 0", (double)p->eps);
    const ssmtp_tensor_t *ts[] = {&p->y, &p->gate, &p->weight, &p->out};
    const char *names[] = {"y", "gate", "weight", "out"};
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 4, device));
    SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "y", &p->y));
    SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "gate", &p->gate));
    SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "weight", &p->weight));
    SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "out", &p->out));
    return SSMTP_OK;
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
