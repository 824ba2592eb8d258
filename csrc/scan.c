/*
 * scan.c - selective scan (prefill) and the one-token selective state update (decode): argument checks, device
 * dispatch and the CPU reference kernels (fp32 state and accumulation). Semantics: see ssmtp.h.
 */
#include "internal.h"

/* Shared shape checks of the scan and the step. seq = 1 for the step (its tensors have no time axis). dt_proj: the
 * step's optional fused projection (NULL for the scan); when present dt is (batch, R) or (batch, ngroups, R),
 * R = dt_proj.shape[1]. */
static ssmtp_status_t check_common(const char *op, const ssmtp_tensor_t *x, const ssmtp_tensor_t *dt,
                                   const ssmtp_tensor_t *A, const ssmtp_tensor_t *B, const ssmtp_tensor_t *C,
                                   const ssmtp_tensor_t *D, const ssmtp_tensor_t *z, const ssmtp_tensor_t *dt_bias,
                                   const ssmtp_tensor_t *state, const ssmtp_tensor_t *state_idx,
                                   const ssmtp_tensor_t *out, const ssmtp_tensor_t *dt_proj, int has_time) {
    const int nd = has_time ? 3 : 2;
    SSMTP_TRY(ssmtp_check_tensor(op, "x", x, 0, nd, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "x", x));
    const int64_t batch = x->shape[0], dim = x->shape[1], len = has_time ? x->shape[2] : 1;
    const int32_t ty = x->dtype;
    const int64_t xs[3] = {batch, dim, len};
    const int dtp = dt_proj && ssmtp_present(dt_proj);
    if (dtp) {
        SSMTP_TRY(ssmtp_check_tensor(op, "dt_proj", dt_proj, 0, 2, ty, (int64_t[]){dim, -1}));
    } else if (!has_time && dt->ndim == 3) { /* the step's dt per group of channels: (batch, G, dim / G) */
        SSMTP_TRY(ssmtp_check_tensor(op, "dt", dt, 0, 3, ty, (int64_t[]){batch, -1, -1}));
        if (dt->shape[1] < 1 || dim % dt->shape[1] != 0 || dt->shape[2] != dim / dt->shape[1])
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: dt of shape (%lld, %lld, %lld) does not cover dim=%lld channels "
                              "(expected (batch, G, dim / G))", op, (long long)dt->shape[0], (long long)dt->shape[1],
                              (long long)dt->shape[2], (long long)dim);
    } else {
        SSMTP_TRY(ssmtp_check_tensor(op, "dt", dt, 0, nd, ty, xs));
    }
    SSMTP_TRY(ssmtp_check_tensor(op, "A", A, 0, 2, SSMTP_DTYPE_F32, (int64_t[]){dim, -1}));
    const int64_t dstate = A->shape[1];
    if (dstate < 1 || dstate > SSMTP_MAX_DSTATE)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: d_state=%lld outside 1..%d", op, (long long)dstate,
                          SSMTP_MAX_DSTATE);
    SSMTP_TRY(ssmtp_check_tensor(op, "B", B, 0, nd + 1, ty, (int64_t[]){batch, -1, dstate, len}));
    const int64_t groups = B->shape[1];
    if (groups < 1 || dim % groups != 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: ngroups=%lld does not divide dim=%lld", op, (long long)groups,
                          (long long)dim);
    SSMTP_TRY(ssmtp_check_tensor(op, "C", C, 0, nd + 1, ty, (int64_t[]){batch, groups, dstate, len}));
    if (dtp) { /* the low-rank dt: (batch, R), or (batch, ngroups, R) with one row per group of B/C */
        if (dt->ndim == 3)
            SSMTP_TRY(ssmtp_check_tensor(op, "dt", dt, 0, 3, ty, (int64_t[]){batch, groups, dt_proj->shape[1]}));
        else
            SSMTP_TRY(ssmtp_check_tensor(op, "dt", dt, 0, 2, ty, (int64_t[]){batch, dt_proj->shape[1]}));
    }
    SSMTP_TRY(ssmtp_check_tensor(op, "D", D, 1, 1, -1, (int64_t[]){dim}));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "D", D));
    SSMTP_TRY(ssmtp_check_tensor(op, "z", z, 1, nd, ty, xs));
    SSMTP_TRY(ssmtp_check_tensor(op, "dt_bias", dt_bias, 1, 1, -1, (int64_t[]){dim}));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "dt_bias", dt_bias));
    SSMTP_TRY(ssmtp_check_tensor(op, "state", state, !has_time ? 0 : 1, 3, SSMTP_DTYPE_F32,
                                 (int64_t[]){-1, dim, dstate}));
    SSMTP_TRY(ssmtp_check_tensor(op, "state_idx", state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    if (ssmtp_present(state_idx) && !ssmtp_present(state))
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: state_idx given without state", op);
    if (ssmtp_present(state) && !ssmtp_present(state_idx) && state->shape[0] < batch)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: state has %lld slots < batch=%lld and no state_idx", op,
                          (long long)state->shape[0], (long long)batch);
    SSMTP_TRY(ssmtp_check_tensor(op, "out", out, 0, nd, ty, xs));
    return SSMTP_OK;
}

static ssmtp_status_t device_of(const char *op, const ssmtp_tensor_t *const *ts, const char *const *names, int n,
                                int32_t *device) {
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, n, device));
    if (*device >= 0) { /* CUDA kernels assume a contiguous state row and contiguous index vectors */
        for (int i = 0; i < n; i++) {
            /* A: contiguous rows, or one value per channel (state stride 0: the kernels' one-exp-per-channel path) */
            if (!strcmp(names[i], "A") && ts[i]->ndim == 2 && ts[i]->stride[1] == 0) continue;
            if (!strcmp(names[i], "state") || !strcmp(names[i], "state_idx") || !strcmp(names[i], "seq_lens") ||
                !strcmp(names[i], "A"))
                SSMTP_TRY(ssmtp_check_inner_contiguous(op, names[i], ts[i]));
        }
    }
    return SSMTP_OK;
}

/* ---------------------------------------------------------------- prefill scan */

#define SCAN "scan_fwd"

static ssmtp_status_t scan_cpu(const ssmtp_scan_params_t *p) {
    const int64_t batch = p->x.shape[0], dim = p->x.shape[1], len = p->x.shape[2], N = p->A.shape[1];
    const int64_t per_group = dim / p->B.shape[1];
    const int32_t ty = p->x.dtype;
    float h[SSMTP_MAX_DSTATE];
    /* every row's slot and length is checked before any output or state is written: a rejected call changes nothing */
    for (int64_t b = 0; b < batch; b++) {
        int64_t slot, n;
        SSMTP_TRY(ssmtp_check_prefill_row(SCAN, &p->state, &p->state_idx, &p->seq_lens, b, len, &slot, &n));
        if (slot >= 0)
            SSMTP_TRY(ssmtp_check_save_values(SCAN, &p->save_pos, &p->save_idx, &p->state_idx, batch, b, n,
                                              ssmtp_present(&p->state) ? p->state.shape[0] : 0));
    }
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_present(&p->state) ? ssmtp_slot_of(&p->state_idx, b) : b;
        const int64_t n = ssmtp_row_len(&p->seq_lens, b, len);
        for (int64_t c = 0; c < dim; c++) {
            const int64_t g = c / per_group;
            const int64_t xo = b * p->x.stride[0] + c * p->x.stride[1];
            const int64_t oo = b * p->out.stride[0] + c * p->out.stride[1];
            if (slot < 0) {
                for (int64_t t = 0; t < len; t++) ssmtp_store(p->out.data, ty, oo + t * p->out.stride[2], 0.0f);
                continue;
            }
            float *st = ssmtp_present(&p->state)
                            ? (float *)p->state.data + slot * p->state.stride[0] + c * p->state.stride[1]
                            : NULL;
            for (int64_t s = 0; s < N; s++) h[s] = (p->load_state && st) ? st[s * p->state.stride[2]] : 0.0f;
            float a[SSMTP_MAX_DSTATE];
            for (int64_t s = 0; s < N; s++)
                a[s] = ((const float *)p->A.data)[c * p->A.stride[0] + s * p->A.stride[1]];
            const float Dc = ssmtp_present(&p->D) ? ssmtp_load(p->D.data, p->D.dtype, c * p->D.stride[0]) : 0.0f;
            const float bias =
                ssmtp_present(&p->dt_bias) ? ssmtp_load(p->dt_bias.data, p->dt_bias.dtype, c * p->dt_bias.stride[0]) : 0.0f;
            const int64_t bo = b * p->B.stride[0] + g * p->B.stride[1], co = b * p->C.stride[0] + g * p->C.stride[1];
            const int64_t nsave = ssmtp_present(&p->save_pos) ? p->save_pos.shape[1] : 0;
            int64_t js = 0; /* next save of this row (entries are ascending, checked above) */
            for (int64_t t = 0; t < len; t++) {
                if (t >= n) {
                    ssmtp_store(p->out.data, ty, oo + t * p->out.stride[2], 0.0f);
                    continue;
                }
                const float xt = ssmtp_load(p->x.data, ty, xo + t * p->x.stride[2]);
                float delta = ssmtp_load(p->dt.data, ty, b * p->dt.stride[0] + c * p->dt.stride[1] + t * p->dt.stride[2]) + bias;
                if (p->dt_softplus) delta = ssmtp_softplus(delta);
                float y = 0.0f;
                for (int64_t s = 0; s < N; s++) {
                    const float Bs = ssmtp_load(p->B.data, ty, bo + s * p->B.stride[2] + t * p->B.stride[3]);
                    const float Cs = ssmtp_load(p->C.data, ty, co + s * p->C.stride[2] + t * p->C.stride[3]);
                    h[s] = expf(delta * a[s]) * h[s] + delta * Bs * xt;
                    y += h[s] * Cs;
                }
                y += Dc * xt;
                if (ssmtp_present(&p->z)) {
                    const float zt =
                        ssmtp_load(p->z.data, ty, b * p->z.stride[0] + c * p->z.stride[1] + t * p->z.stride[2]);
                    y *= ssmtp_silu(zt);
                }
                ssmtp_store(p->out.data, ty, oo + t * p->out.stride[2], y);
                while (js < nsave && (ssmtp_i32_at(&p->save_idx, b, js) < 0 || ssmtp_i32_at(&p->save_pos, b, js) <= t))
                    js++;
                if (js < nsave && ssmtp_i32_at(&p->save_pos, b, js) == t + 1) {
                    float *sv = (float *)p->state.data + (int64_t)ssmtp_i32_at(&p->save_idx, b, js) * p->state.stride[0] +
                                c * p->state.stride[1];
                    for (int64_t s = 0; s < N; s++) sv[s * p->state.stride[2]] = h[s];
                    js++;
                }
            }
            if (st)
                for (int64_t s = 0; s < N; s++) st[s * p->state.stride[2]] = h[s];
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_scan_fwd(const ssmtp_scan_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, SCAN ": params is NULL");
    SSMTP_TRY(check_common(SCAN, &p->x, &p->dt, &p->A, &p->B, &p->C, &p->D, &p->z, &p->dt_bias, &p->state,
                           &p->state_idx, &p->out, NULL, 1));
    SSMTP_TRY(ssmtp_check_tensor(SCAN, "seq_lens", &p->seq_lens, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){p->x.shape[0]}));
    SSMTP_TRY(ssmtp_check_saves(SCAN, &p->save_pos, &p->save_idx, &p->state, p->x.shape[0]));
    if (p->load_state && !ssmtp_present(&p->state))
        return ssmtp_fail(SSMTP_ERR_INVALID, SCAN ": load_state=1 needs a state tensor");
    const ssmtp_tensor_t *ts[] = {&p->x,         &p->dt,    &p->A,         &p->B,        &p->C,
                                  &p->D,         &p->z,     &p->dt_bias,   &p->state,    &p->state_idx,
                                  &p->seq_lens,  &p->out,   &p->save_pos,  &p->save_idx};
    const char *names[] = {"x",         "dt",       "A",   "B",        "C",        "D",       "z",
                           "dt_bias",   "state",    "state_idx", "seq_lens", "out", "save_pos", "save_idx"};
    int32_t device;
    SSMTP_TRY(device_of(SCAN, ts, names, 14, &device));
    if (device == SSMTP_DEVICE_CPU) return scan_cpu(p);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_scan_fwd(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, SCAN ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

/* ---------------------------------------------------------------- decode step */

#define STEP "step_fwd"

/* The CUDA step reads a row of dt_proj as consecutive elements (16-byte packs when R * element size, the row stride
 * and the pointers allow, else one element at a time); dt may have any strides. */
static ssmtp_status_t step_dt_proj_cuda_layout(const ssmtp_tensor_t *dt_proj) {
    if (dt_proj->shape[1] > 1 && dt_proj->stride[1] != 1)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, STEP ": dt_proj rows must be contiguous on CUDA (strides %lld, %lld)",
                          (long long)dt_proj->stride[0], (long long)dt_proj->stride[1]);
    return SSMTP_OK;
}

static ssmtp_status_t step_cpu(const ssmtp_step_params_t *p) {
    const int64_t batch = p->x.shape[0], dim = p->x.shape[1], N = p->A.shape[1];
    const int64_t per_group = dim / p->B.shape[1];
    const int g3 = p->dt.ndim == 3;
    const int64_t dt_per = g3 ? dim / p->dt.shape[1] : dim, sr = p->dt.stride[g3 ? 2 : 1];
    const int32_t ty = p->x.dtype;
    for (int64_t b = 0; b < batch; b++) { /* all slots first: a rejected call changes nothing */
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b);
        if (slot >= p->state.shape[0])
            return ssmtp_fail(SSMTP_ERR_INVALID, STEP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)b,
                              (long long)slot, (long long)p->state.shape[0]);
    }
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b);
        for (int64_t c = 0; c < dim; c++) {
            const int64_t oo = b * p->out.stride[0] + c * p->out.stride[1];
            if (slot < 0) {
                ssmtp_store(p->out.data, ty, oo, 0.0f);
                continue;
            }
            const int64_t g = c / per_group;
            float *st = (float *)p->state.data + slot * p->state.stride[0] + c * p->state.stride[1];
            const float xt = ssmtp_load(p->x.data, ty, b * p->x.stride[0] + c * p->x.stride[1]);
            /* this channel's row of dt: a 3-D dt has one row per dt_per channels ((batch, G, dim / G), or with dt_proj
             * (batch, ngroups, R): dt_per = per_group), a 2-D dt one row (dt_per = dim); sr: the stride along a row */
            const int64_t row = b * p->dt.stride[0] + (g3 ? (c / dt_per) * p->dt.stride[1] : 0);
            float delta;
            if (ssmtp_present(&p->dt_proj)) { /* rounded to the dtype of x, as a separate dt_proj product would be */
                float acc = 0.0f;
                for (int64_t r = 0; r < p->dt_proj.shape[1]; r++)
                    acc += ssmtp_load(p->dt_proj.data, ty, c * p->dt_proj.stride[0] + r * p->dt_proj.stride[1]) *
                           ssmtp_load(p->dt.data, ty, row + r * sr);
                delta = ssmtp_round(acc, ty);
            } else {
                delta = ssmtp_load(p->dt.data, ty, row + (c % dt_per) * sr);
            }
            if (ssmtp_present(&p->dt_bias)) delta += ssmtp_load(p->dt_bias.data, p->dt_bias.dtype, c * p->dt_bias.stride[0]);
            if (p->dt_softplus) delta = ssmtp_softplus(delta);
            float y = 0.0f;
            for (int64_t s = 0; s < N; s++) {
                const float a = ((const float *)p->A.data)[c * p->A.stride[0] + s * p->A.stride[1]];
                const float Bs = ssmtp_load(p->B.data, ty, b * p->B.stride[0] + g * p->B.stride[1] + s * p->B.stride[2]);
                const float Cs = ssmtp_load(p->C.data, ty, b * p->C.stride[0] + g * p->C.stride[1] + s * p->C.stride[2]);
                float *hs = st + s * p->state.stride[2];
                *hs = expf(delta * a) * *hs + delta * Bs * xt;
                y += *hs * Cs;
            }
            if (ssmtp_present(&p->D)) y += ssmtp_load(p->D.data, p->D.dtype, c * p->D.stride[0]) * xt;
            if (ssmtp_present(&p->z))
                y *= ssmtp_silu(ssmtp_load(p->z.data, ty, b * p->z.stride[0] + c * p->z.stride[1]));
            ssmtp_store(p->out.data, ty, oo, y);
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_step_fwd(const ssmtp_step_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, STEP ": params is NULL");
    SSMTP_TRY(check_common(STEP, &p->x, &p->dt, &p->A, &p->B, &p->C, &p->D, &p->z, &p->dt_bias, &p->state,
                           &p->state_idx, &p->out, &p->dt_proj, 0));
    const ssmtp_tensor_t *ts[] = {&p->x, &p->dt,      &p->A,     &p->B,         &p->C,   &p->D,
                                  &p->z, &p->dt_bias, &p->state, &p->state_idx, &p->out, &p->dt_proj};
    const char *names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx", "out", "dt_proj"};
    int32_t device;
    SSMTP_TRY(device_of(STEP, ts, names, 12, &device));
    if (device == SSMTP_DEVICE_CPU) return step_cpu(p);
    if (ssmtp_present(&p->dt_proj)) SSMTP_TRY(step_dt_proj_cuda_layout(&p->dt_proj));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_step_fwd(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, STEP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
