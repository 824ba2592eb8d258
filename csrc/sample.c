/*
 * sample.c - token sampling (greedy / temperature / top-k / top-p with counter-based Gumbel noise): argument
 * checks, device dispatch and the CPU reference. Semantics: see ssmtp_sample in ssmtp.h.
 */
#include <stdlib.h>

#include "internal.h"
#include "sample_math.h"

/* logits (n, V) of a float dtype, 1 <= V < 2^31 unless n = 0 */
static ssmtp_status_t logits_check(const char *op, const ssmtp_tensor_t *logits) {
    SSMTP_TRY(ssmtp_check_tensor(op, "logits", logits, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "logits", logits));
    const int64_t n = logits->shape[0], V = logits->shape[1];
    if (V < 1 && n > 0) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: logits has no columns (V = 0)", op);
    if (V > INT32_MAX) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: V=%lld columns, at most 2^31 - 1", op,
                                         (long long)V);
    return SSMTP_OK;
}

static ssmtp_status_t sample_check(const char *op, const ssmtp_sample_params_t *p, int32_t *device) {
    SSMTP_TRY(logits_check(op, &p->logits));
    const int64_t n = p->logits.shape[0];
    const int64_t sh[] = {n};
    SSMTP_TRY(ssmtp_check_tensor(op, "temperature", &p->temperature, 0, 1, SSMTP_DTYPE_F32, sh));
    SSMTP_TRY(ssmtp_check_tensor(op, "top_k", &p->top_k, 0, 1, SSMTP_DTYPE_I64, sh));
    SSMTP_TRY(ssmtp_check_tensor(op, "top_p", &p->top_p, 0, 1, SSMTP_DTYPE_F32, sh));
    SSMTP_TRY(ssmtp_check_tensor(op, "seed", &p->seed, 0, 1, SSMTP_DTYPE_I64, sh));
    SSMTP_TRY(ssmtp_check_tensor(op, "step", &p->step, 0, 1, SSMTP_DTYPE_I64, sh));
    SSMTP_TRY(ssmtp_check_tensor(op, "out", &p->out, 0, 1, SSMTP_DTYPE_I64, sh));
    const ssmtp_tensor_t *ts[] = {&p->logits, &p->temperature, &p->top_k, &p->top_p, &p->seed, &p->step, &p->out};
    const char *names[] = {"logits", "temperature", "top_k", "top_p", "seed", "step", "out"};
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, 7, device));
    SSMTP_TRY(ssmtp_check_inner_contiguous(op, "logits", &p->logits));
    return SSMTP_OK;
}

/* Smallest K in [lo, hi] for which the tokens whose value has a key above K are fewer than k (count mode, k >= 1)
 * or hold a mass below pz (mass mode: the values are masses, -1 for tokens already dropped). hi must qualify. */
static uint32_t bisect(const float *x, int64_t V, uint32_t lo, uint32_t hi, int64_t k, float pz, int mass) {
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        int64_t cnt = 0;
        float m = 0.0f;
        for (int64_t v = 0; v < V; v++) {
            if (isnan(x[v]) || ssmtp_fkey(x[v]) <= mid) continue;
            cnt++;
            m += x[v];
        }
        if (mass ? m < pz : cnt < k) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* The greedy token of one row (the first index of the largest logit, NaN never chosen, 0 when nothing is above -inf)
 * and that logit; l (optional) receives the row as fp32. */
static int64_t greedy_row(const char *base, int32_t dtype, int64_t V, float *l, float *lmax) {
    int64_t best = 0;
    float m = -INFINITY;
    for (int64_t v = 0; v < V; v++) {
        const float x = ssmtp_load(base, dtype, v);
        if (l) l[v] = x;
        if (x > m) {
            m = x;
            best = v;
        }
    }
    *lmax = m;
    return best;
}

static ssmtp_status_t sample_cpu(const ssmtp_sample_params_t *p) {
    const int64_t n = p->logits.shape[0], V = p->logits.shape[1];
    float *l = (float *)malloc((size_t)(V > 0 ? V : 1) * 2 * sizeof(float));
    if (!l) return ssmtp_fail(SSMTP_ERR_NOMEM, "sample: out of host memory for a %lld-entry row", (long long)V);
    float *e = l + V;
    for (int64_t i = 0; i < n; i++) {
        const char *base = (const char *)p->logits.data +
                           i * p->logits.stride[0] * (int64_t)ssmtp_dtype_size(p->logits.dtype);
        float lmax;
        int64_t best = greedy_row(base, p->logits.dtype, V, l, &lmax);
        const float T = ((const float *)p->temperature.data)[i * p->temperature.stride[0]];
        const float c = 1.0f / T;
        if (T > 0.0f && isfinite(c) && isfinite(lmax)) {
            const int64_t k = ((const int64_t *)p->top_k.data)[i * p->top_k.stride[0]];
            const float tp = ((const float *)p->top_p.data)[i * p->top_p.stride[0]];
            uint32_t K = 0; /* top-k: tokens whose logit has a key >= K */
            if (k > 0 && k < V) K = bisect(l, V, 0, ssmtp_fkey(lmax), k, 0.0f, 0);
            const int pon = tp < 1.0f;
            uint32_t Ke = 0; /* top-p: tokens whose mass has a key >= Ke */
            if (pon) {
                float z = 0.0f; /* the top-k set's mass, in index order */
                for (int64_t v = 0; v < V; v++) {
                    e[v] = !isnan(l[v]) && ssmtp_fkey(l[v]) >= K ? expf((l[v] - lmax) * c) : -1.0f;
                    if (e[v] >= 0.0f) z += e[v];
                }
                Ke = bisect(e, V, ssmtp_fkey(0.0f), ssmtp_fkey(1.0f), 0, tp * z, 1);
            }
            const uint32_t h = ssmtp_noise_row(((const int64_t *)p->seed.data)[i * p->seed.stride[0]],
                                               ((const int64_t *)p->step.data)[i * p->step.stride[0]]);
            float zbest = -INFINITY;
            best = -1;
            for (int64_t v = 0; v < V; v++) {
                if (pon ? e[v] < 0.0f || ssmtp_fkey(e[v]) < Ke : isnan(l[v]) || ssmtp_fkey(l[v]) < K) continue;
                const float zv = l[v] * c + ssmtp_gumbel(h, v);
                if (best < 0 || zv > zbest) {
                    zbest = zv;
                    best = v;
                }
            }
        }
        ((int64_t *)p->out.data)[i * p->out.stride[0]] = best;
    }
    free(l);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_sample(const ssmtp_sample_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, "sample: params is NULL");
    SSMTP_TRY(sample_check("sample", p, &device));
    if (device == SSMTP_DEVICE_CPU) return sample_cpu(p);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_sample(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "sample: tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

ssmtp_status_t ssmtp_argmax(const ssmtp_argmax_params_t *p, void *stream) {
    static const char *op = "argmax";
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, "argmax: params is NULL");
    SSMTP_TRY(logits_check(op, &p->logits));
    const int64_t n = p->logits.shape[0], V = p->logits.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(op, "out", &p->out, 0, 1, SSMTP_DTYPE_I64, (int64_t[]){n}));
    const ssmtp_tensor_t *ts[] = {&p->logits, &p->out};
    const char *names[] = {"logits", "out"};
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, 2, &device));
    SSMTP_TRY(ssmtp_check_inner_contiguous(op, "logits", &p->logits));
    if (device == SSMTP_DEVICE_CPU) {
        const int64_t es = (int64_t)ssmtp_dtype_size(p->logits.dtype);
        for (int64_t i = 0; i < n; i++) {
            float m;
            const char *base = (const char *)p->logits.data + i * p->logits.stride[0] * es;
            ((int64_t *)p->out.data)[i * p->out.stride[0]] = greedy_row(base, p->logits.dtype, V, NULL, &m);
        }
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_argmax(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "argmax: tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
