/*
 * ssd.c - Mamba-2 SSD (state space duality) ops: the chunked prefill scan and the one-token decode step, with one
 * scalar A and one dt per head. Argument checks, device dispatch and the CPU reference kernels (fp32 state and
 * accumulation). Semantics: see ssmtp.h (ssmtp_ssd_params_t, ssmtp_ssd_step_params_t).
 *
 * The prefill follows the chunked SSD algorithm (the form a tensor-core kernel uses) rather than a token loop, so it
 * is the CPU oracle for such a kernel: per chunk of Q tokens and per (sequence, head)
 *   y_t  = sum_{s <= t} (C_t . B_s) exp(seg(t, s)) dt_s x_s  +  exp(seg(t, t0 - 1)) (H C_t)      (intra + inter)
 *   H   <- exp(seg(last, t0 - 1)) H + sum_s exp(seg(last, s)) dt_s x_s B_s^T                      (state passing)
 * with seg(t, s) = sum_{k = s+1 .. t} dt_k A, accumulated as a running sum (never a difference of two cumulative
 * sums, which loses precision when the sums are large). The prefill has a CUDA kernel (csrc/cuda/ssd.cu: the same
 * chunks on tensor cores, f16/bf16, headdim % 32 == 0, d_state % 16 == 0 and <= 128); the decode step does not (the
 * selective state update computes the same step on the GPU).
 */
#include "internal.h"

#include <stdlib.h>

static inline float ssd_delta(float dt, float bias, int softplus, float lo, float hi) {
    float d = dt + bias;
    if (softplus) d = ssmtp_softplus(d);
    return d < lo ? lo : (d > hi ? hi : d);
}

/* Shape checks shared by the scan and the step (has_time = 0: no seqlen axis). */
static ssmtp_status_t ssd_check(const char *op, const ssmtp_tensor_t *x, const ssmtp_tensor_t *dt,
                                const ssmtp_tensor_t *A, const ssmtp_tensor_t *B, const ssmtp_tensor_t *C,
                                const ssmtp_tensor_t *D, const ssmtp_tensor_t *z, const ssmtp_tensor_t *dt_bias,
                                const ssmtp_tensor_t *state, const ssmtp_tensor_t *state_idx,
                                const ssmtp_tensor_t *out, int has_time, float dt_min, float dt_max) {
    const int nd = has_time ? 4 : 3;
    SSMTP_TRY(ssmtp_check_tensor(op, "x", x, 0, nd, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "x", x));
    const int32_t ty = x->dtype;
    const int64_t batch = x->shape[0], len = has_time ? x->shape[1] : 1;
    const int64_t nheads = x->shape[nd - 2], headdim = x->shape[nd - 1];
    const int64_t xs4[4] = {batch, len, nheads, headdim}, xs3[3] = {batch, nheads, headdim};
    const int64_t *xs = has_time ? xs4 : xs3;
    SSMTP_TRY(ssmtp_check_tensor(op, "dt", dt, 0, nd - 1, ty, has_time ? (int64_t[]){batch, len, nheads}
                                                                       : (int64_t[]){batch, nheads}));
    SSMTP_TRY(ssmtp_check_tensor(op, "A", A, 0, 1, SSMTP_DTYPE_F32, (int64_t[]){nheads}));
    SSMTP_TRY(ssmtp_check_tensor(op, "B", B, 0, nd, ty, has_time ? (int64_t[]){batch, len, -1, -1}
                                                                 : (int64_t[]){batch, -1, -1}));
    const int64_t groups = B->shape[nd - 2], dstate = B->shape[nd - 1];
    if (dstate < 1 || dstate > SSMTP_MAX_DSTATE)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: d_state=%lld outside 1..%d", op, (long long)dstate,
                          SSMTP_MAX_DSTATE);
    if (groups < 1 || nheads % groups != 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: ngroups=%lld does not divide nheads=%lld", op, (long long)groups,
                          (long long)nheads);
    SSMTP_TRY(ssmtp_check_tensor(op, "C", C, 0, nd, ty, has_time ? (int64_t[]){batch, len, groups, dstate}
                                                                 : (int64_t[]){batch, groups, dstate}));
    SSMTP_TRY(ssmtp_check_tensor(op, "D", D, 1, 1, -1, (int64_t[]){nheads}));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "D", D));
    SSMTP_TRY(ssmtp_check_tensor(op, "z", z, 1, nd, ty, xs));
    SSMTP_TRY(ssmtp_check_tensor(op, "dt_bias", dt_bias, 1, 1, -1, (int64_t[]){nheads}));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "dt_bias", dt_bias));
    SSMTP_TRY(ssmtp_check_tensor(op, "state", state, has_time, 4, SSMTP_DTYPE_F32,
                                 (int64_t[]){-1, nheads, headdim, dstate}));
    SSMTP_TRY(ssmtp_check_tensor(op, "state_idx", state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    if (ssmtp_present(state_idx) && !ssmtp_present(state))
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: state_idx given without state", op);
    if (ssmtp_present(state) && !ssmtp_present(state_idx) && state->shape[0] < batch)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: state has %lld slots < batch=%lld and no state_idx", op,
                          (long long)state->shape[0], (long long)batch);
    SSMTP_TRY(ssmtp_check_tensor(op, "out", out, 0, nd, ty, xs));
    if (!(dt_min <= dt_max)) /* also rejects NaN */
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: dt_min=%g > dt_max=%g (or NaN)", op, (double)dt_min, (double)dt_max);
    return SSMTP_OK;
}

/* The device of the op's tensors: CPU, or a CUDA device when `cuda_ok` (the op has a CUDA kernel) and this build has
 * CUDA; anything else is refused naming why. */
static ssmtp_status_t ssd_device(const char *op, const ssmtp_tensor_t *const *ts, const char *const *names, int n,
                                 int cuda_ok, int32_t *device) {
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, n, device));
    if (*device == SSMTP_DEVICE_CPU) return SSMTP_OK;
    if (!cuda_ok)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: tensors are on cuda:%d; this op has no CUDA kernel (the "
                          "selective ops compute the same recurrence)", op, (int)*device);
#ifndef SSMTP_WITH_CUDA
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "%s: tensors are on cuda:%d but this build has no CUDA", op, (int)*device);
#else
    return SSMTP_OK;
#endif
}

/* ---------------------------------------------------------------- chunked prefill scan */

#define SSD "ssd_fwd"

/* Scratch for one (sequence, head): chunk-local delta, x, B, C, the Q x Q score row, the state. */
typedef struct {
    float *delta, *da, *wk, *x, *Bc, *Cc, *H;
} ssd_scratch_t;

static void ssd_head(const ssmtp_ssd_params_t *p, int64_t b, int64_t h, int64_t n, int64_t slot,
                     const ssd_scratch_t *w) {
    const int64_t len = p->x.shape[1], P = p->x.shape[3], N = p->B.shape[3], Q = p->chunk_size;
    const int64_t g = h / (p->x.shape[2] / p->B.shape[2]);
    const int32_t ty = p->x.dtype;
    const float A = ((const float *)p->A.data)[h * p->A.stride[0]];
    const float Dh = ssmtp_present(&p->D) ? ssmtp_load(p->D.data, p->D.dtype, h * p->D.stride[0]) : 0.0f;
    const float bias =
        ssmtp_present(&p->dt_bias) ? ssmtp_load(p->dt_bias.data, p->dt_bias.dtype, h * p->dt_bias.stride[0]) : 0.0f;
    float *st = ssmtp_present(&p->state)
                    ? (float *)p->state.data + slot * p->state.stride[0] + h * p->state.stride[1]
                    : NULL;
    float *H = w->H; /* (P, N) */
    for (int64_t i = 0; i < P; i++)
        for (int64_t s = 0; s < N; s++)
            H[i * N + s] = (p->load_state && st) ? st[i * p->state.stride[2] + s * p->state.stride[3]] : 0.0f;

    for (int64_t t0 = 0; t0 < n; t0 += Q) {
        const int64_t q = (n - t0 < Q) ? n - t0 : Q;
        for (int64_t j = 0; j < q; j++) { /* load the chunk into fp32 scratch */
            const int64_t t = t0 + j;
            w->delta[j] = ssd_delta(ssmtp_load(p->dt.data, ty, b * p->dt.stride[0] + t * p->dt.stride[1] +
                                                                   h * p->dt.stride[2]),
                                    bias, p->dt_softplus, p->dt_min, p->dt_max);
            w->da[j] = w->delta[j] * A;
            for (int64_t i = 0; i < P; i++)
                w->x[j * P + i] = ssmtp_load(p->x.data, ty, b * p->x.stride[0] + t * p->x.stride[1] +
                                                                h * p->x.stride[2] + i * p->x.stride[3]);
            for (int64_t s = 0; s < N; s++) {
                w->Bc[j * N + s] = ssmtp_load(p->B.data, ty, b * p->B.stride[0] + t * p->B.stride[1] +
                                                                 g * p->B.stride[2] + s * p->B.stride[3]);
                w->Cc[j * N + s] = ssmtp_load(p->C.data, ty, b * p->C.stride[0] + t * p->C.stride[1] +
                                                                 g * p->C.stride[2] + s * p->C.stride[3]);
            }
        }
        /* outputs: intra-chunk quadratic form + the contribution of the state at the chunk start */
        float from_start = 0.0f; /* seg(t, t0 - 1) */
        for (int64_t j = 0; j < q; j++) {
            from_start += w->da[j];
            const float *Ct = w->Cc + j * N;
            const float decay0 = expf(from_start);
            float seg = 0.0f; /* seg(t, k) for k = t, t-1, ...: row j of the masked decay matrix */
            for (int64_t k = j; k >= 0; k--) {
                float cb = 0.0f;
                for (int64_t s = 0; s < N; s++) cb += Ct[s] * w->Bc[k * N + s];
                w->wk[k] = cb * expf(seg) * w->delta[k];
                seg += w->da[k];
            }
            for (int64_t i = 0; i < P; i++) {
                float y = 0.0f;
                for (int64_t s = 0; s < N; s++) y += H[i * N + s] * Ct[s];
                y *= decay0;
                for (int64_t k = 0; k <= j; k++) y += w->wk[k] * w->x[k * P + i];
                const int64_t t = t0 + j;
                y += Dh * w->x[j * P + i];
                if (ssmtp_present(&p->z))
                    y *= ssmtp_silu(ssmtp_load(p->z.data, ty, b * p->z.stride[0] + t * p->z.stride[1] +
                                                                  h * p->z.stride[2] + i * p->z.stride[3]));
                ssmtp_store(p->out.data, ty,
                            b * p->out.stride[0] + t * p->out.stride[1] + h * p->out.stride[2] + i * p->out.stride[3],
                            y);
            }
        }
        /* state passing: H <- exp(seg(last, t0-1)) H + sum_s exp(seg(last, s)) dt_s x_s B_s^T */
        const float decay_all = expf(from_start);
        for (int64_t e = 0; e < P * N; e++) H[e] *= decay_all;
        float seg = 0.0f; /* seg(last, k) for k = last, last-1, ... */
        for (int64_t k = q - 1; k >= 0; k--) {
            const float wk = expf(seg) * w->delta[k];
            for (int64_t i = 0; i < P; i++) {
                const float xi = wk * w->x[k * P + i];
                for (int64_t s = 0; s < N; s++) H[i * N + s] += xi * w->Bc[k * N + s];
            }
            seg += w->da[k];
        }
    }
    for (int64_t t = n; t < len; t++) /* right padding */
        for (int64_t i = 0; i < P; i++)
            ssmtp_store(p->out.data, ty,
                        b * p->out.stride[0] + t * p->out.stride[1] + h * p->out.stride[2] + i * p->out.stride[3],
                        0.0f);
    if (st)
        for (int64_t i = 0; i < P; i++)
            for (int64_t s = 0; s < N; s++) st[i * p->state.stride[2] + s * p->state.stride[3]] = H[i * N + s];
}

static ssmtp_status_t ssd_cpu(const ssmtp_ssd_params_t *p) {
    const int64_t batch = p->x.shape[0], len = p->x.shape[1], nheads = p->x.shape[2], P = p->x.shape[3];
    const int64_t N = p->B.shape[3], Q = p->chunk_size;
    /* validate every row before touching any output or state */
    for (int64_t b = 0; b < batch; b++) {
        int64_t slot, n;
        SSMTP_TRY(ssmtp_check_prefill_row(SSD, &p->state, &p->state_idx, &p->seq_lens, b, len, &slot, &n));
    }
    const int64_t qn = Q < len ? Q : (len > 0 ? len : 1); /* a chunk never holds more than len tokens */
    float *buf = malloc(sizeof(float) * (size_t)(3 * qn + qn * P + 2 * qn * N + P * N));
    if (!buf) return ssmtp_fail(SSMTP_ERR_NOMEM, SSD ": no memory for %lld-token chunk scratch", (long long)qn);
    ssd_scratch_t w;
    w.delta = buf;
    w.da = w.delta + qn;
    w.wk = w.da + qn;
    w.x = w.wk + qn;         /* (q, P) */
    w.Bc = w.x + qn * P;     /* (q, N) */
    w.Cc = w.Bc + qn * N;    /* (q, N) */
    w.H = w.Cc + qn * N;     /* (P, N) */
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_present(&p->state) ? ssmtp_slot_of(&p->state_idx, b) : b;
        int64_t n = ssmtp_row_len(&p->seq_lens, b, len);
        if (slot < 0) n = 0; /* padding row: output zeros, state untouched */
        for (int64_t h = 0; h < nheads; h++) {
            if (slot < 0) {
                ssmtp_ssd_params_t q = *p;
                q.state.data = NULL;
                ssd_head(&q, b, h, 0, slot, &w);
            } else {
                ssd_head(p, b, h, n, slot, &w);
            }
        }
    }
    free(buf);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_ssd_fwd(const ssmtp_ssd_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, SSD ": params is NULL");
    SSMTP_TRY(ssd_check(SSD, &p->x, &p->dt, &p->A, &p->B, &p->C, &p->D, &p->z, &p->dt_bias, &p->state,
                        &p->state_idx, &p->out, 1, p->dt_min, p->dt_max));
    SSMTP_TRY(ssmtp_check_tensor(SSD, "seq_lens", &p->seq_lens, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){p->x.shape[0]}));
    if (p->load_state && !ssmtp_present(&p->state))
        return ssmtp_fail(SSMTP_ERR_INVALID, SSD ": load_state=1 needs a state tensor");
    if (p->chunk_size < 1)
        return ssmtp_fail(SSMTP_ERR_INVALID, SSD ": chunk_size=%d < 1", (int)p->chunk_size);
    const ssmtp_tensor_t *ts[] = {&p->x, &p->dt, &p->A, &p->B, &p->C, &p->D, &p->z,
                                  &p->dt_bias, &p->state, &p->state_idx, &p->seq_lens, &p->out};
    const char *names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx", "seq_lens", "out"};
    int32_t device;
    SSMTP_TRY(ssd_device(SSD, ts, names, 12, 1, &device));
#ifdef SSMTP_WITH_CUDA
    if (device != SSMTP_DEVICE_CPU) return ssmtp_cuda_ssd_fwd(p, stream);
#endif
    return ssd_cpu(p);
}

/* ---------------------------------------------------------------- decode step */

#define SSD_STEP "ssd_step"

static ssmtp_status_t ssd_step_cpu(const ssmtp_ssd_step_params_t *p) {
    const int64_t batch = p->x.shape[0], nheads = p->x.shape[1], P = p->x.shape[2], N = p->B.shape[2];
    const int64_t per_group = nheads / p->B.shape[1];
    const int32_t ty = p->x.dtype;
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b);
        if (slot >= p->state.shape[0])
            return ssmtp_fail(SSMTP_ERR_INVALID, SSD_STEP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)b,
                              (long long)slot, (long long)p->state.shape[0]);
    }
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ssmtp_slot_of(&p->state_idx, b);
        for (int64_t h = 0; h < nheads; h++) {
            const int64_t oo = b * p->out.stride[0] + h * p->out.stride[1];
            if (slot < 0) {
                for (int64_t i = 0; i < P; i++) ssmtp_store(p->out.data, ty, oo + i * p->out.stride[2], 0.0f);
                continue;
            }
            const int64_t g = h / per_group;
            const float bias = ssmtp_present(&p->dt_bias)
                                   ? ssmtp_load(p->dt_bias.data, p->dt_bias.dtype, h * p->dt_bias.stride[0])
                                   : 0.0f;
            const float delta = ssd_delta(ssmtp_load(p->dt.data, ty, b * p->dt.stride[0] + h * p->dt.stride[1]), bias,
                                          p->dt_softplus, p->dt_min, p->dt_max);
            const float dA = expf(delta * ((const float *)p->A.data)[h * p->A.stride[0]]);
            const float Dh = ssmtp_present(&p->D) ? ssmtp_load(p->D.data, p->D.dtype, h * p->D.stride[0]) : 0.0f;
            float *st = (float *)p->state.data + slot * p->state.stride[0] + h * p->state.stride[1];
            for (int64_t i = 0; i < P; i++) {
                const float xi = ssmtp_load(p->x.data, ty, b * p->x.stride[0] + h * p->x.stride[1] + i * p->x.stride[2]);
                float y = 0.0f;
                for (int64_t s = 0; s < N; s++) {
                    const float Bs = ssmtp_load(p->B.data, ty, b * p->B.stride[0] + g * p->B.stride[1] + s * p->B.stride[2]);
                    const float Cs = ssmtp_load(p->C.data, ty, b * p->C.stride[0] + g * p->C.stride[1] + s * p->C.stride[2]);
                    float *hs = st + i * p->state.stride[2] + s * p->state.stride[3];
                    *hs = dA * *hs + delta * Bs * xi;
                    y += *hs * Cs;
                }
                y += Dh * xi;
                if (ssmtp_present(&p->z))
                    y *= ssmtp_silu(ssmtp_load(p->z.data, ty, b * p->z.stride[0] + h * p->z.stride[1] + i * p->z.stride[2]));
                ssmtp_store(p->out.data, ty, oo + i * p->out.stride[2], y);
            }
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_ssd_step(const ssmtp_ssd_step_params_t *p, void *stream) {
    (void)stream;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, SSD_STEP ": params is NULL");
    SSMTP_TRY(ssd_check(SSD_STEP, &p->x, &p->dt, &p->A, &p->B, &p->C, &p->D, &p->z, &p->dt_bias, &p->state,
                        &p->state_idx, &p->out, 0, p->dt_min, p->dt_max));
    const ssmtp_tensor_t *ts[] = {&p->x, &p->dt, &p->A, &p->B, &p->C, &p->D,
                                  &p->z, &p->dt_bias, &p->state, &p->state_idx, &p->out};
    const char *names[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx", "out"};
    int32_t device;
    SSMTP_TRY(ssd_device(SSD_STEP, ts, names, 11, 0, &device));
    return ssd_step_cpu(p);
}
