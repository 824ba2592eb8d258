/*
 * linear.c - the small-batch linear layer (decode GEMV): argument checks, device dispatch and the CPU reference.
 * Semantics: see ssmtp_linear_small in ssmtp.h.
 */
#include "internal.h"

static ssmtp_status_t linear_check(const char *op, const ssmtp_linear_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(op, "x", &p->x, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "x", &p->x));
    const int64_t M = p->x.shape[0], K = p->x.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(op, "weight", &p->weight, 0, 2, p->x.dtype, (int64_t[]){-1, K}));
    const int64_t N = p->weight.shape[0];
    int64_t wnumel; /* dense as torch sees it: an empty (N, 0) weight has strides (1, 1) */
    SSMTP_TRY(ssmtp_check_dense(op, "weight", &p->weight, &wnumel));
    SSMTP_TRY(ssmtp_check_tensor(op, "bias", &p->bias, 1, 1, p->x.dtype, (int64_t[]){N}));
    /* out: x's dtype, or f32 for 16-bit x (the rounded sums widened) */
    const int32_t odt = p->out.dtype == SSMTP_DTYPE_F32 && p->x.dtype != SSMTP_DTYPE_F32 ? SSMTP_DTYPE_F32 : p->x.dtype;
    SSMTP_TRY(ssmtp_check_tensor(op, "out", &p->out, 0, 2, odt, (int64_t[]){M, N}));
    const ssmtp_tensor_t *ts[] = {&p->x, &p->weight, &p->bias, &p->out};
    const char *names[] = {"x", "weight", "bias", "out"};
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, 4, device));
    SSMTP_TRY(ssmtp_check_inner_contiguous(op, "x", &p->x));
    SSMTP_TRY(ssmtp_check_inner_contiguous(op, "out", &p->out));
    if (ssmtp_present(&p->bias)) SSMTP_TRY(ssmtp_check_inner_contiguous(op, "bias", &p->bias));
    return SSMTP_OK;
}

static void linear_cpu(const ssmtp_linear_params_t *p) {
    const int64_t M = p->x.shape[0], K = p->x.shape[1], N = p->weight.shape[0];
    const int32_t dt = p->x.dtype;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += ssmtp_load(p->x.data, dt, m * p->x.stride[0] + k) * ssmtp_load(p->weight.data, dt, j * K + k);
            if (ssmtp_present(&p->bias)) acc += ssmtp_load(p->bias.data, dt, j);
            ssmtp_store(p->out.data, p->out.dtype, m * p->out.stride[0] + j, ssmtp_round(acc, dt));
        }
    }
}

ssmtp_status_t ssmtp_linear_small(const ssmtp_linear_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, "linear_small: params is NULL");
    SSMTP_TRY(linear_check("linear_small", p, &device));
    if (device == SSMTP_DEVICE_CPU) {
        linear_cpu(p);
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_linear_small(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "linear_small: tensors are on cuda:%d but this build has no CUDA",
                      (int)device);
#endif
}
