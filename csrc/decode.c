/*
 * decode.c - the fused input half of a Mamba-1 block's decode step (residual add, RMSNorm, in_proj, conv step +
 * SiLU): argument checks, device dispatch and the CPU reference. Semantics: see ssmtp_mamba_decode_in in ssmtp.h.
 *
 * The CPU reference rounds where the unfused ops do (res_out to its dtype, the normed input and its product with the
 * norm weight to T, in_proj's output to T before the conv reads it), so it equals that chain up to summation order:
 * the in_proj dot products and the conv taps are the same loops as linear.c and conv1d.c (bitwise equal), only the
 * RMSNorm's sum of squares may be ordered differently from torch's reduction.
 */
#include "internal.h"

#include <stdlib.h>

#define OP "mamba_decode_in"

static ssmtp_status_t decode_in_check(const ssmtp_decode_in_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "weight", &p->weight, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "weight", &p->weight));
    const int32_t ty = p->weight.dtype;
    const int64_t n2 = p->weight.shape[0], H = p->weight.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_w", &p->conv_w, 0, 2, ty, NULL));
    const int64_t nc = p->conv_w.shape[0]; /* conv channels: in_proj rows [conv_lo, conv_lo + nc) */
    if (p->conv_lo < 0 || p->conv_lo > n2 - nc) { /* the end row printed only where it is representable */
        if (nc >= 0 && p->conv_lo <= INT64_MAX - nc)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv rows [%lld, %lld) (conv_lo, conv_w's %lld rows) are not "
                              "within weight's %lld rows", (long long)p->conv_lo, (long long)(p->conv_lo + nc),
                              (long long)nc, (long long)n2);
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv rows from %lld (conv_lo), conv_w's %lld rows, are not within "
                          "weight's %lld rows", (long long)p->conv_lo, (long long)nc, (long long)n2);
    }
    int64_t wnumel;
    SSMTP_TRY(ssmtp_check_dense(OP, "weight", &p->weight, &wnumel));
    SSMTP_TRY(ssmtp_check_tensor(OP, "res", &p->res, 0, 2, -1, (int64_t[]){-1, H}));
    SSMTP_TRY(ssmtp_check_stream_dtype(OP, "res", &p->res, ty, "weight"));
    const int64_t M = p->res.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(OP, "add", &p->add, 1, 2, ty, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "res_out", &p->res_out, 0, 2, -1, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_stream_dtype(OP, "res_out", &p->res_out, ty, "weight"));
    SSMTP_TRY(ssmtp_check_tensor(OP, "norm_w", &p->norm_w, 0, 1, ty, (int64_t[]){H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "bias", &p->bias, 1, 1, ty, (int64_t[]){n2}));
    const int64_t width = p->conv_w.shape[1];
    if (width < 2 || width > 4)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": conv width=%lld, supported 2..4", (long long)width);
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_b", &p->conv_b, 1, 1, ty, (int64_t[]){nc}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_state", &p->conv_state, 0, 3, ty, (int64_t[]){-1, nc, -1}));
    if (p->conv_state.shape[2] < width - 1)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv_state length %lld < width-1=%lld",
                          (long long)p->conv_state.shape[2], (long long)(width - 1));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state_idx", &p->state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){M}));
    if (!ssmtp_present(&p->state_idx) && p->conv_state.shape[0] < M)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv_state has %lld slots < M=%lld rows and no state_idx",
                          (long long)p->conv_state.shape[0], (long long)M);
    SSMTP_TRY(ssmtp_check_tensor(OP, "xc", &p->xc, 0, 2, ty, (int64_t[]){M, nc}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "z", &p->z, 0, 2, ty, (int64_t[]){M, n2 - nc}));
    /* rows are read and written as contiguous runs (the CUDA kernel vectorizes along them) */
    const ssmtp_tensor_t *rows[] = {&p->res, &p->add, &p->res_out, &p->xc, &p->z};
    const char *row_names[] = {"res", "add", "res_out", "xc", "z"};
    for (int i = 0; i < 5; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, row_names[i], rows[i]));
    const ssmtp_tensor_t *ts[] = {&p->res,    &p->add,    &p->res_out,    &p->norm_w,    &p->weight, &p->bias,
                                  &p->conv_w, &p->conv_b, &p->conv_state, &p->state_idx, &p->xc,     &p->z};
    const char *names[] = {"res",    "add",    "res_out",    "norm_w",    "weight", "bias",
                           "conv_w", "conv_b", "conv_state", "state_idx", "xc",     "z"};
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 12, device));
    if (*device >= 0) { /* the CUDA kernel reads contiguous parameter vectors, tap rows and state rows (as conv1d's) */
        const ssmtp_tensor_t *inner[] = {&p->norm_w, &p->bias, &p->conv_w, &p->conv_b, &p->conv_state, &p->state_idx};
        const char *inner_names[] = {"norm_w", "bias", "conv_w", "conv_b", "conv_state", "state_idx"};
        for (int i = 0; i < 6; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, inner_names[i], inner[i]));
    }
    return SSMTP_OK;
}

/* What the CUDA kernel takes (ssmtp.h): a few rows, whole 16-byte packs along H, 16-byte aligned weight, res and add.
 * Anything else is a valid call for the unfused ops. */
static ssmtp_status_t decode_in_cuda_layout(const ssmtp_decode_in_params_t *p) {
    const int64_t M = p->res.shape[0], H = p->weight.shape[1];
    const int64_t es = (int64_t)ssmtp_dtype_size(p->weight.dtype);
    if (M < 1 || M > SSMTP_DECODE_IN_MAX_M)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M=%lld rows on CUDA, supported 1..%d", (long long)M,
                          SSMTP_DECODE_IN_MAX_M);
    if ((H * es) % 16)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": H=%lld (%lld bytes a row) on CUDA needs rows of a multiple of "
                          "16 bytes", (long long)H, (long long)(H * es));
    const ssmtp_tensor_t *ts[] = {&p->weight, &p->res, &p->add};
    const char *names[] = {"weight", "res", "add"};
    for (int i = 0; i < 3; i++)
        if (ssmtp_present(ts[i]) && (uintptr_t)ts[i]->data % 16)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %s on CUDA needs a 16-byte aligned data pointer", names[i]);
    return SSMTP_OK;
}

/* Shift x into the conv history of one channel (conv1d's decode: the last S columns of [state ; x]). */
static void conv_state_push(const ssmtp_tensor_t *st, int64_t so, float x) {
    const int64_t S = st->shape[2], s2 = st->stride[2];
    for (int64_t j = 0; j + 1 < S; j++)
        ssmtp_store(st->data, st->dtype, so + j * s2, ssmtp_load(st->data, st->dtype, so + (j + 1) * s2));
    ssmtp_store(st->data, st->dtype, so + (S - 1) * s2, x);
}

static ssmtp_status_t decode_in_cpu(const ssmtp_decode_in_params_t *p) {
    const int64_t M = p->res.shape[0], H = p->weight.shape[1], n2 = p->weight.shape[0];
    const int64_t nc = p->conv_w.shape[0], lo = p->conv_lo;
    const int64_t width = p->conv_w.shape[1], nslots = p->conv_state.shape[0];
    const int32_t ty = p->weight.dtype;
    const ssmtp_tensor_t *cs = &p->conv_state;
    for (int64_t m = 0; m < M; m++) { /* all slots first: a rejected call changes nothing */
        const int64_t slot = ssmtp_slot_of(&p->state_idx, m);
        if (slot >= nslots)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)m,
                              (long long)slot, (long long)nslots);
    }
    float *h = malloc(sizeof(float) * (size_t)(H > 0 ? H : 1)); /* the normed row, reused by all n2 outputs */
    if (!h) return ssmtp_fail(SSMTP_ERR_NOMEM, OP ": no memory for a row of H=%lld floats", (long long)H);
    for (int64_t m = 0; m < M; m++) {
        ssmtp_add_norm_row(&p->res, &p->add, &p->res_out, &p->norm_w, p->eps, ty, m, h);
        const int64_t slot = ssmtp_slot_of(&p->state_idx, m);
        for (int64_t row = 0; row < n2; row++) {
            /* in_proj row j as linear.c computes it: sequential fp32 sum, then the bias, one rounding to T */
            float acc = 0.0f;
            for (int64_t k = 0; k < H; k++) acc += h[k] * ssmtp_load(p->weight.data, ty, row * H + k);
            if (ssmtp_present(&p->bias)) acc += ssmtp_load(p->bias.data, ty, row * p->bias.stride[0]);
            const float xz = ssmtp_round(acc, ty);
            if (row < lo || row >= lo + nc) { /* not a conv row: the next column of z */
                const int64_t zc = row < lo ? row : row - nc;
                ssmtp_store(p->z.data, ty, m * p->z.stride[0] + zc * p->z.stride[1], xz);
                continue;
            }
            const int64_t j = row - lo; /* conv channel */
            const int64_t xo = m * p->xc.stride[0] + j * p->xc.stride[1];
            if (slot < 0) { /* padding row: its conv state is untouched and its conv output is zero */
                ssmtp_store(p->xc.data, ty, xo, 0.0f);
                continue;
            }
            const int64_t so = slot * cs->stride[0] + j * cs->stride[1];
            float w[4], hist[3], cb;
            ssmtp_conv_channel_load(&p->conv_w, &p->conv_b, cs, j, so, 1, w, hist, &cb);
            ssmtp_store(p->xc.data, ty, xo, ssmtp_silu(ssmtp_conv_tap_sum(w, hist, width, cb, xz)));
            conv_state_push(cs, so, xz);
        }
    }
    free(h);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    int32_t device;
    SSMTP_TRY(decode_in_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return decode_in_cpu(p);
    SSMTP_TRY(decode_in_cuda_layout(p));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_mamba_decode_in(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
