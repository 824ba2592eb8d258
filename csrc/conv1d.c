/*
 * conv1d.c - causal depthwise conv1d (prefill and one-token decode): argument checks, device dispatch and the CPU
 * reference kernel (fp32 accumulation). Semantics: see ssmtp_conv1d_fwd in ssmtp.h.
 */
#include "internal.h"

#define OP "conv1d_fwd"

static ssmtp_status_t conv1d_check(const ssmtp_conv1d_params_t *p, int32_t *device) {
    const ssmtp_tensor_t *ts[] = {&p->x,        &p->weight, &p->bias,     &p->state,   &p->state_idx,
                                  &p->seq_lens, &p->out,    &p->save_pos, &p->save_idx};
    const char *names[] = {"x", "weight", "bias", "state", "state_idx", "seq_lens", "out", "save_pos", "save_idx"};
    SSMTP_TRY(ssmtp_check_tensor(OP, "x", &p->x, 0, 3, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "x", &p->x));
    const int64_t batch = p->x.shape[0], dim = p->x.shape[1], len = p->x.shape[2];
    const int32_t dt = p->x.dtype;
    SSMTP_TRY(ssmtp_check_tensor(OP, "weight", &p->weight, 0, 2, dt, (int64_t[]){dim, -1}));
    const int64_t width = p->weight.shape[1];
    if (width < 2 || width > 4) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": width=%lld, supported 2..4", (long long)width);
    SSMTP_TRY(ssmtp_check_tensor(OP, "bias", &p->bias, 1, 1, dt, (int64_t[]){dim}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state", &p->state, 1, 3, dt, (int64_t[]){-1, dim, -1}));
    if (ssmtp_present(&p->state) && p->state.shape[2] < width - 1)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_len=%lld < width-1=%lld", (long long)p->state.shape[2],
                          (long long)(width - 1));
    if (p->load_state && !ssmtp_present(&p->state))
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": load_state=1 needs a state tensor");
    SSMTP_TRY(ssmtp_check_tensor(OP, "state_idx", &p->state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    if (ssmtp_present(&p->state_idx) && !ssmtp_present(&p->state))
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx given without state");
    if (ssmtp_present(&p->state) && !ssmtp_present(&p->state_idx) && p->state.shape[0] < batch)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state has %lld slots < batch=%lld and no state_idx",
                          (long long)p->state.shape[0], (long long)batch);
    SSMTP_TRY(ssmtp_check_tensor(OP, "seq_lens", &p->seq_lens, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 3, dt, (int64_t[]){batch, dim, len}));
    SSMTP_TRY(ssmtp_check_saves(OP, &p->save_pos, &p->save_idx, &p->state, batch));
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 9, device));
    if (*device >= 0) { /* the CUDA kernels read contiguous time and tap axes */
        SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "weight", &p->weight));
        SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "state", &p->state));
        SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "state_idx", &p->state_idx));
        SSMTP_TRY(ssmtp_check_inner_contiguous(OP, "seq_lens", &p->seq_lens));
    }
    return SSMTP_OK;
}

/* Shared with the fused decode input (decode.c); see internal.h. */
void ssmtp_conv_channel_load(const ssmtp_tensor_t *weight, const ssmtp_tensor_t *bias, const ssmtp_tensor_t *state,
                             int64_t c, int64_t so, int load_state, float w[4], float h[3], float *b) {
    const int64_t width = weight->shape[1];
    for (int64_t k = 0; k < width; k++)
        w[k] = ssmtp_load(weight->data, weight->dtype, c * weight->stride[0] + k * weight->stride[1]);
    *b = ssmtp_present(bias) ? ssmtp_load(bias->data, bias->dtype, c * bias->stride[0]) : 0.0f;
    for (int64_t k = 0; k < 3; k++) h[k] = 0.0f;
    if (load_state) {
        const int64_t slen = state->shape[2];
        for (int64_t k = 0; k < width - 1; k++)
            h[k] = ssmtp_load(state->data, state->dtype, so + (slen - (width - 1) + k) * state->stride[2]);
    }
}

/* Indices (slot, valid length) are read on the host in the CPU path only; the CUDA path reads them on the device. */
static ssmtp_status_t conv1d_cpu(const ssmtp_conv1d_params_t *p) {
    const int64_t batch = p->x.shape[0], dim = p->x.shape[1], len = p->x.shape[2], width = p->weight.shape[1];
    const int64_t slen = ssmtp_present(&p->state) ? p->state.shape[2] : 0;
    const int32_t dt = p->x.dtype;
    if (slen > 256) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": state_len=%lld > 256", (long long)slen);
    /* every row's slot and length is checked before any output or state is written: a rejected call changes nothing */
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b), n = ssmtp_row_len(&p->seq_lens, b, len);
        if (ssmtp_present(&p->state) && slot >= p->state.shape[0])
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)b,
                              (long long)slot, (long long)p->state.shape[0]);
        if (n < 0 || n > len)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": seq_lens[%lld]=%lld outside 0..%lld", (long long)b,
                              (long long)n, (long long)len);
        if (slot >= 0)
            SSMTP_TRY(ssmtp_check_save_values(OP, &p->save_pos, &p->save_idx, &p->state_idx, batch, b, n,
                                              ssmtp_present(&p->state) ? p->state.shape[0] : 0));
    }
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b), n = ssmtp_row_len(&p->seq_lens, b, len);
        const int pad = slot < 0;
        for (int64_t c = 0; c < dim; c++) {
            const int64_t xo = b * p->x.stride[0] + c * p->x.stride[1];
            const int64_t oo = b * p->out.stride[0] + c * p->out.stride[1];
            if (pad) {
                for (int64_t t = 0; t < len; t++) ssmtp_store(p->out.data, dt, oo + t * p->out.stride[2], 0.0f);
                continue;
            }
            const int64_t so = ssmtp_present(&p->state) ? slot * p->state.stride[0] + c * p->state.stride[1] : 0;
            float w[4], h[3], bias; /* h: the width-1 inputs before t, oldest first */
            ssmtp_conv_channel_load(&p->weight, &p->bias, &p->state, c, so, p->load_state, w, h, &bias);
            /* Final state: last slen columns of [old history (slen cols, or zeros); x[0:n]]. Computed before out
             * is written, because out may alias x. */
            float newstate[256]; /* slen <= 256, checked above */
            const int64_t keep = slen;
            for (int64_t j = 0; j < keep; j++) {
                int64_t src = n - slen + j; /* index into x; negative -> history column slen + src */
                if (src >= 0)
                    newstate[j] = ssmtp_load(p->x.data, dt, xo + src * p->x.stride[2]);
                else if (p->load_state)
                    newstate[j] = ssmtp_load(p->state.data, dt, so + (slen + src) * p->state.stride[2]);
                else
                    newstate[j] = 0.0f;
            }
            /* intermediate states: the same window at save_pos (reads x and the old history, so also before out) */
            for (int64_t j = 0; ssmtp_present(&p->save_pos) && j < p->save_pos.shape[1]; j++) {
                const int64_t sv = ssmtp_i32_at(&p->save_idx, b, j), pos = ssmtp_i32_at(&p->save_pos, b, j);
                if (sv < 0) continue;
                const int64_t vo = sv * p->state.stride[0] + c * p->state.stride[1];
                for (int64_t k = 0; k < slen; k++) {
                    const int64_t src = pos - slen + k;
                    float v = 0.0f;
                    if (src >= 0) v = ssmtp_load(p->x.data, dt, xo + src * p->x.stride[2]);
                    else if (p->load_state) v = ssmtp_load(p->state.data, dt, so + (slen + src) * p->state.stride[2]);
                    ssmtp_store(p->state.data, dt, vo + k * p->state.stride[2], v);
                }
            }
            for (int64_t t = 0; t < len; t++) {
                if (t >= n) {
                    ssmtp_store(p->out.data, dt, oo + t * p->out.stride[2], 0.0f);
                    continue;
                }
                const float xt = ssmtp_load(p->x.data, dt, xo + t * p->x.stride[2]);
                const float acc = ssmtp_conv_tap_sum(w, h, width, bias, xt);
                for (int64_t k = 0; k + 1 < width - 1; k++) h[k] = h[k + 1];
                h[width - 2] = xt;
                ssmtp_store(p->out.data, dt, oo + t * p->out.stride[2], p->silu ? ssmtp_silu(acc) : acc);
            }
            for (int64_t j = 0; j < keep; j++) ssmtp_store(p->state.data, dt, so + j * p->state.stride[2], newstate[j]);
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_conv1d_fwd(const ssmtp_conv1d_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    int32_t device;
    SSMTP_TRY(conv1d_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return conv1d_cpu(p);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_conv1d_fwd(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
