/*
 * attention.c - decode attention over slot-indexed K/V caches: argument checks, device dispatch and the CPU
 * reference (fp32, online softmax). Semantics: see ssmtp_decode_attention in ssmtp.h.
 */
#include "internal.h"

#define OP "decode_attention"

static ssmtp_status_t attn_check(const ssmtp_attn_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "q", &p->q, 0, 3, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "q", &p->q));
    const int64_t batch = p->q.shape[0], nh = p->q.shape[1], hd = p->q.shape[2];
    if (hd < 1 || hd > SSMTP_MAX_HEAD_DIM)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": head_dim=%lld outside 1..%d", (long long)hd, SSMTP_MAX_HEAD_DIM);
    SSMTP_TRY(ssmtp_check_tensor(OP, "k", &p->k, 0, 4, p->q.dtype, (int64_t[]){-1, -1, -1, hd}));
    const int64_t nkv = p->k.shape[2];
    if (nkv < 1 || nh % nkv != 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": nheads=%lld is not a multiple of nkv=%lld", (long long)nh,
                          (long long)nkv);
    SSMTP_TRY(ssmtp_check_tensor(OP, "v", &p->v, 0, 4, p->q.dtype, p->k.shape));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state_idx", &p->state_idx, 0, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "lengths", &p->lengths, 0, 1, SSMTP_DTYPE_I32, (int64_t[]){batch}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 3, p->q.dtype, p->q.shape));
    const ssmtp_tensor_t *ts[] = {&p->q, &p->k, &p->v, &p->state_idx, &p->lengths, &p->out};
    const char *names[] = {"q", "k", "v", "state_idx", "lengths", "out"};
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 6, device));
    if (*device >= 0) /* the CUDA kernel reads head_dim-contiguous rows */
        for (int i = 0; i < 6; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, names[i], ts[i]));
    return SSMTP_OK;
}

static ssmtp_status_t attn_cpu(const ssmtp_attn_params_t *p) {
    const int64_t batch = p->q.shape[0], nh = p->q.shape[1], hd = p->q.shape[2];
    const int64_t nslots = p->k.shape[0], maxlen = p->k.shape[1], group = nh / p->k.shape[2];
    const int32_t dt = p->q.dtype;
    for (int64_t b = 0; b < batch; b++) { /* every index first: a rejected call writes nothing */
        const int64_t slot = ((const int32_t *)p->state_idx.data)[b * p->state_idx.stride[0]];
        const int64_t n = ((const int32_t *)p->lengths.data)[b * p->lengths.stride[0]];
        if (slot >= nslots)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)b,
                              (long long)slot, (long long)nslots);
        if (slot >= 0 && (n < 1 || n > maxlen))
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": lengths[%lld]=%lld outside 1..%lld", (long long)b, (long long)n,
                              (long long)maxlen);
    }
    float q[SSMTP_MAX_HEAD_DIM], acc[SSMTP_MAX_HEAD_DIM];
    for (int64_t b = 0; b < batch; b++) {
        const int64_t slot = ((const int32_t *)p->state_idx.data)[b * p->state_idx.stride[0]];
        const int64_t n = ((const int32_t *)p->lengths.data)[b * p->lengths.stride[0]];
        for (int64_t h = 0; h < nh; h++) {
            const int64_t oo = b * p->out.stride[0] + h * p->out.stride[1];
            if (slot < 0) {
                for (int64_t d = 0; d < hd; d++) ssmtp_store(p->out.data, dt, oo + d * p->out.stride[2], 0.0f);
                continue;
            }
            const int64_t kvh = h / group;
            for (int64_t d = 0; d < hd; d++) {
                q[d] = ssmtp_load(p->q.data, dt, b * p->q.stride[0] + h * p->q.stride[1] + d * p->q.stride[2]);
                acc[d] = 0.0f;
            }
            float m = -INFINITY, l = 0.0f; /* running max and sum of exp(s - m) */
            for (int64_t t = 0; t < n; t++) {
                const int64_t ko = slot * p->k.stride[0] + t * p->k.stride[1] + kvh * p->k.stride[2];
                const int64_t vo = slot * p->v.stride[0] + t * p->v.stride[1] + kvh * p->v.stride[2];
                float s = 0.0f;
                for (int64_t d = 0; d < hd; d++) s += q[d] * ssmtp_load(p->k.data, dt, ko + d * p->k.stride[3]);
                s *= p->scale;
                const float mn = s > m ? s : m;
                const float c = expf(m - mn), e = expf(s - mn);
                l = l * c + e;
                for (int64_t d = 0; d < hd; d++)
                    acc[d] = acc[d] * c + e * ssmtp_load(p->v.data, dt, vo + d * p->v.stride[3]);
                m = mn;
            }
            for (int64_t d = 0; d < hd; d++) ssmtp_store(p->out.data, dt, oo + d * p->out.stride[2], acc[d] / l);
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_decode_attention(const ssmtp_attn_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    int32_t device;
    SSMTP_TRY(attn_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return attn_cpu(p);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_decode_attention(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
