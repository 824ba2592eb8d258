/*
 * quant.c - block-scaled int8 / fp8-e4m3 quantization of a flat payload (the wire format of the quantized
 * all-reduce): argument checks, device dispatch and the CPU reference. Semantics: see ssmtp_quantize in ssmtp.h.
 */
#include "internal.h"

static ssmtp_status_t quant_check(const char *op, const ssmtp_quant_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(op, "x", &p->x, 0, 1, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(op, "x", &p->x));
    const int64_t n = p->x.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(op, "q", &p->q, 0, 1, -1, (int64_t[]){n}));
    if (p->q.dtype != SSMTP_DTYPE_I8 && p->q.dtype != SSMTP_DTYPE_F8E4M3)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: q has dtype %s; supported: int8, float8_e4m3fn", op,
                          ssmtp_dtype_name(p->q.dtype));
    if (p->block < 32 || p->block > 256 || p->block % 32)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: block=%d, supported 32..256 in steps of 32", op, (int)p->block);
    const int64_t nb = (n + p->block - 1) / p->block;
    SSMTP_TRY(ssmtp_check_tensor(op, "scales", &p->scales, 0, 1, SSMTP_DTYPE_F32, (int64_t[]){nb}));
    const ssmtp_tensor_t *ts[] = {&p->x, &p->q, &p->scales};
    const char *names[] = {"x", "q", "scales"};
    SSMTP_TRY(ssmtp_check_devices(op, ts, names, 3, device));
    for (int i = 0; i < 3; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(op, names[i], ts[i]));
    return SSMTP_OK;
}

static float qmax_of(int32_t qtype) { return qtype == SSMTP_DTYPE_I8 ? 127.0f : 448.0f; }

static void quant_cpu(const ssmtp_quant_params_t *p) {
    const int64_t n = p->x.shape[0], blk = p->block;
    const float qmax = qmax_of(p->q.dtype);
    for (int64_t b0 = 0; b0 < n; b0 += blk) {
        const int64_t e = b0 + blk < n ? b0 + blk : n;
        float amax = 0.0f;
        int finite = 1;
        for (int64_t i = b0; i < e; i++) {
            float v = ssmtp_load(p->x.data, p->x.dtype, i);
            if (!isfinite(v)) finite = 0;
            else if (fabsf(v) > amax) amax = fabsf(v);
        }
        float scale = finite ? amax / qmax : NAN;
        ((float *)p->scales.data)[b0 / blk] = scale;
        const float inv = (finite && amax > 0.0f) ? qmax / amax : 0.0f;
        for (int64_t i = b0; i < e; i++) {
            float v = finite ? ssmtp_load(p->x.data, p->x.dtype, i) * inv : 0.0f;
            if (p->q.dtype == SSMTP_DTYPE_I8) {
                float r = nearbyintf(v);
                r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
                ((int8_t *)p->q.data)[i] = (int8_t)r;
            } else {
                ((uint8_t *)p->q.data)[i] = ssmtp_f32_to_e4m3(v);
            }
        }
    }
}

static void dequant_cpu(const ssmtp_quant_params_t *p) {
    const int64_t n = p->x.shape[0], blk = p->block;
    for (int64_t i = 0; i < n; i++) {
        const float s = ((const float *)p->scales.data)[i / blk];
        const float q = p->q.dtype == SSMTP_DTYPE_I8 ? (float)((const int8_t *)p->q.data)[i]
                                                     : ssmtp_e4m3_to_f32(((const uint8_t *)p->q.data)[i]);
        ssmtp_store(p->x.data, p->x.dtype, i, q * s);
    }
}

ssmtp_status_t ssmtp_quantize(const ssmtp_quant_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, "quantize: params is NULL");
    SSMTP_TRY(quant_check("quantize", p, &device));
    if (device == SSMTP_DEVICE_CPU) {
        quant_cpu(p);
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_quantize(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "quantize: tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

ssmtp_status_t ssmtp_dequantize(const ssmtp_quant_params_t *p, void *stream) {
    int32_t device;
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, "dequantize: params is NULL");
    SSMTP_TRY(quant_check("dequantize", p, &device));
    if (device == SSMTP_DEVICE_CPU) {
        dequant_cpu(p);
        return SSMTP_OK;
    }
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_dequantize(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, "dequantize: tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
