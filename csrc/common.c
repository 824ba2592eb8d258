/*
 * common.c - the error channel, dtype tables, argument checks and scalar conversions used by every op.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static __thread char g_err[512];

const char *ssmtp_last_error(void) { return g_err; }
void ssmtp_clear_error(void) { g_err[0] = '\0'; }

ssmtp_status_t ssmtp_fail(ssmtp_status_t st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

const char *ssmtp_status_name(ssmtp_status_t s) {
    switch (s) {
    case SSMTP_OK: return "ok";
    case SSMTP_ERR_INVALID: return "invalid argument";
    case SSMTP_ERR_UNSUPPORTED: return "unsupported";
    case SSMTP_ERR_NOT_BUILT: return "not built";
    case SSMTP_ERR_CUDA: return "CUDA error";
    case SSMTP_ERR_NCCL: return "NCCL error";
    case SSMTP_ERR_TIMEOUT: return "timeout";
    case SSMTP_ERR_NOMEM: return "out of memory";
    default: return "unknown status";
    }
}

int ssmtp_cuda_built(void) {
#ifdef SSMTP_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

#ifndef SSMTP_CUDA_ARCHS_STR
#define SSMTP_CUDA_ARCHS_STR "none"
#endif
const char *ssmtp_build_info(void) {
#ifdef SSMTP_WITH_CUDA
#ifdef SSMTP_WG_BUILT
    return "cpu+cuda archs=" SSMTP_CUDA_ARCHS_STR " +sm_90a"
#else
    return "cpu+cuda archs=" SSMTP_CUDA_ARCHS_STR
#endif
#else
    return "cpu-only"
#endif
#ifdef SSMTP_DEBUG
           " debug"
#endif
        ;
}

size_t ssmtp_dtype_size(int32_t dtype) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: return 4;
    case SSMTP_DTYPE_F16: return 2;
    case SSMTP_DTYPE_BF16: return 2;
    case SSMTP_DTYPE_I8: return 1;
    case SSMTP_DTYPE_F8E4M3: return 1;
    case SSMTP_DTYPE_I32: return 4;
    case SSMTP_DTYPE_I64: return 8;
    case SSMTP_DTYPE_U8: return 1;
    default: return 0;
    }
}

const char *ssmtp_dtype_name(int32_t dtype) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: return "float32";
    case SSMTP_DTYPE_F16: return "float16";
    case SSMTP_DTYPE_BF16: return "bfloat16";
    case SSMTP_DTYPE_I8: return "int8";
    case SSMTP_DTYPE_F8E4M3: return "float8_e4m3fn";
    case SSMTP_DTYPE_I32: return "int32";
    case SSMTP_DTYPE_I64: return "int64";
    case SSMTP_DTYPE_U8: return "uint8";
    default: return "unknown dtype";
    }
}

ssmtp_status_t ssmtp_check_tensor(const char *op, const char *name, const ssmtp_tensor_t *t, int optional, int ndim,
                                  int32_t dtype, const int64_t *shape) {
    if (!t->data) {
        if (optional) return SSMTP_OK;
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s is required", op, name);
    }
    if (t->ndim != ndim)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s must have %d dims, got %d", op, name, ndim, (int)t->ndim);
    if (dtype >= 0 && t->dtype != dtype)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s must be %s, got %s", op, name, ssmtp_dtype_name(dtype),
                          ssmtp_dtype_name(t->dtype));
    if (ssmtp_dtype_size(t->dtype) == 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s has unknown dtype code %d", op, name, (int)t->dtype);
    for (int d = 0; d < ndim; d++) {
        if (t->shape[d] < 0)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s.shape[%d]=%lld is negative", op, name, d,
                              (long long)t->shape[d]);
        if (shape && shape[d] >= 0 && t->shape[d] != shape[d])
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s.shape[%d]=%lld, expected %lld", op, name, d,
                              (long long)t->shape[d], (long long)shape[d]);
        if (t->stride[d] < 0)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s.stride[%d]=%lld is negative", op, name, d,
                              (long long)t->stride[d]);
    }
    return ssmtp_check_extent(op, name, t);
}

/* The byte offset of the last element, sum_d (shape[d]-1) * stride[d] * itemsize, must be representable: no real
 * buffer is larger, and every index the kernels compute (int64, in elements) is then free of overflow. A tensor
 * without elements has no extent. Shapes and strides are known non-negative here. */
ssmtp_status_t ssmtp_check_extent(const char *op, const char *name, const ssmtp_tensor_t *t) {
    const int64_t limit = INT64_MAX / 8; /* room for itemsize <= 8 and for one more row in an index expression */
    int64_t last = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) return SSMTP_OK;
    for (int d = 0; d < t->ndim; d++) {
        const int64_t n = t->shape[d] - 1, s = t->stride[d];
        if (n == 0 || s == 0) continue;
        if (n > (limit - last) / s)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s.shape[%d]=%lld with stride %lld reaches past the address space",
                              op, name, d, (long long)t->shape[d], (long long)s);
        last += n * s;
    }
    return SSMTP_OK;
}

/* A dense (row-major contiguous) tensor, as torch.Tensor.is_contiguous() sees it: strides of size-1 dims are free and
 * a tensor without elements is dense whatever its strides. *n receives the element count, bounded so that its byte
 * size cannot overflow. */
ssmtp_status_t ssmtp_check_dense(const char *op, const char *name, const ssmtp_tensor_t *t, int64_t *n) {
    if (!t || !t->data) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s is required", op, name);
    if (t->ndim < 0 || t->ndim > SSMTP_MAX_DIMS)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s has ndim %d", op, name, (int)t->ndim);
    int64_t count = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s.shape[%d] is negative", op, name, d);
        if (t->shape[d] == 0) count = 0;
    }
    if (count == 0) {
        *n = 0;
        return SSMTP_OK;
    }
    const int64_t limit = INT64_MAX / 8;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] > 1 && t->stride[d] != count)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s must be contiguous (dim %d has stride %lld, expected %lld)",
                              op, name, d, (long long)t->stride[d], (long long)count);
        if (t->shape[d] > limit / count)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s has more elements than the address space holds", op, name);
        count *= t->shape[d];
    }
    *n = count;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_saves(const char *op, const ssmtp_tensor_t *save_pos, const ssmtp_tensor_t *save_idx,
                                 const ssmtp_tensor_t *state, int64_t batch) {
    if (ssmtp_present(save_pos) != ssmtp_present(save_idx))
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_pos and save_idx must be given together", op);
    if (!ssmtp_present(save_pos)) return SSMTP_OK;
    if (!ssmtp_present(state)) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_pos given without state", op);
    SSMTP_TRY(ssmtp_check_tensor(op, "save_pos", save_pos, 0, 2, SSMTP_DTYPE_I32, (int64_t[]){batch, -1}));
    SSMTP_TRY(ssmtp_check_tensor(op, "save_idx", save_idx, 0, 2, SSMTP_DTYPE_I32,
                                 (int64_t[]){batch, save_pos->shape[1]}));
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_save_values(const char *op, const ssmtp_tensor_t *save_pos, const ssmtp_tensor_t *save_idx,
                                       const ssmtp_tensor_t *state_idx, int64_t batch, int64_t b, int64_t n,
                                       int64_t nslots) {
    if (!ssmtp_present(save_pos)) return SSMTP_OK;
    int64_t prev = 0;
    for (int64_t j = 0; j < save_pos->shape[1]; j++) {
        const int64_t slot = ssmtp_i32_at(save_idx, b, j), pos = ssmtp_i32_at(save_pos, b, j);
        if (slot < 0) continue;
        if (slot >= nslots)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_idx[%lld][%lld]=%lld >= nslots=%lld", op, (long long)b,
                              (long long)j, (long long)slot, (long long)nslots);
        if (pos < 1 || pos > n)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_pos[%lld][%lld]=%lld outside 1..%lld (the row's length)",
                              op, (long long)b, (long long)j, (long long)pos, (long long)n);
        if (pos <= prev)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_pos[%lld] is not strictly ascending (%lld after %lld)", op,
                              (long long)b, (long long)pos, (long long)prev);
        prev = pos;
        for (int64_t r = 0; r < batch; r++) {
            const int64_t own = ssmtp_slot_of(state_idx, r);
            if (own == slot)
                return ssmtp_fail(SSMTP_ERR_INVALID, "%s: save_idx[%lld][%lld]=%lld is the slot of row %lld", op,
                                  (long long)b, (long long)j, (long long)slot, (long long)r);
        }
    }
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_devices(const char *op, const ssmtp_tensor_t *const *ts, const char *const *names, int n,
                                   int32_t *device) {
    int first = -1;
    for (int i = 0; i < n; i++) {
        if (!ts[i]->data) continue;
        if (ts[i]->device < SSMTP_DEVICE_CPU)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s has invalid device %d", op, names[i], (int)ts[i]->device);
        if (first < 0) {
            first = i;
            continue;
        }
        if (ts[i]->device != ts[first]->device)
            return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s is on %s%d but %s is on %s%d", op, names[i],
                              ts[i]->device < 0 ? "cpu" : "cuda:", ts[i]->device < 0 ? 0 : (int)ts[i]->device,
                              names[first], ts[first]->device < 0 ? "cpu" : "cuda:",
                              ts[first]->device < 0 ? 0 : (int)ts[first]->device);
    }
    *device = first < 0 ? SSMTP_DEVICE_CPU : ts[first]->device;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_inner_contiguous(const char *op, const char *name, const ssmtp_tensor_t *t) {
    if (!t->data || t->ndim == 0) return SSMTP_OK;
    int d = t->ndim - 1;
    if (t->shape[d] > 1 && t->stride[d] != 1)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s must be contiguous in its last dim (stride %lld)", op, name,
                          (long long)t->stride[d]);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_stream_dtype(const char *op, const char *name, const ssmtp_tensor_t *t, int32_t ty,
                                        const char *of) {
    if (t->data && t->dtype != SSMTP_DTYPE_F32 && t->dtype != ty)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s must be float32 or %s (the dtype of %s), got %s", op, name,
                          ssmtp_dtype_name(ty), of, ssmtp_dtype_name(t->dtype));
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_check_float_dtype(const char *op, const char *name, const ssmtp_tensor_t *t) {
    if (!t->data) return SSMTP_OK;
    switch (t->dtype) {
    case SSMTP_DTYPE_F32:
    case SSMTP_DTYPE_F16:
    case SSMTP_DTYPE_BF16: return SSMTP_OK;
    default:
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: %s has dtype %s; supported: float32, float16, bfloat16", op,
                          name, ssmtp_dtype_name(t->dtype));
    }
}

/* IEEE half <-> float, round to nearest even. */
float ssmtp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ssmtp_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0));
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: overflow to Inf */
    if (absu < 0x38800000u) {                                    /* result is subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;           /* < 2^-25 rounds to zero */
        uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absu >> 23); /* 14..24 */
        uint32_t half = 1u << (shift - 1), rem = mant & ((1u << shift) - 1), q = mant >> shift;
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

/* float8 e4m3fn (no Inf; NaN = 0x7f/0xff; max 448), round to nearest even, saturating. */
float ssmtp_e4m3_to_f32(uint8_t v) {
    uint32_t sign = v & 0x80u, exp = (v >> 3) & 0xfu, mant = v & 0x7u;
    float r;
    if (exp == 0xfu && mant == 0x7u) return NAN;
    if (exp == 0)
        r = ldexpf((float)mant, -9); /* subnormal: mant * 2^-6 / 8 */
    else
        r = ldexpf((float)(8 + mant), (int)exp - 10);
    return sign ? -r : r;
}

uint8_t ssmtp_f32_to_e4m3(float f) {
    if (isnan(f)) return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7e; /* saturate (Inf too) */
    if (a < ldexpf(1.0f, -6)) {          /* subnormal range: multiples of 2^-9 */
        float q = nearbyintf(a * 512.0f);  /* default rounding mode: nearest even */
        return sign | (uint8_t)q;          /* q == 8 becomes the smallest normal 0x08: same encoding */
    }
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    float q = nearbyintf(ldexpf(a, 4 - e)); /* 8..16 */
    int exp = e - 1 + 7;
    if (q >= 16.0f) {
        q = 8.0f;
        exp++;
    }
    if (exp > 15 || (exp == 15 && q > 14.0f)) return sign | 0x7e;
    return sign | (uint8_t)(exp << 3) | (uint8_t)((int)q - 8);
}

ssmtp_status_t ssmtp_check_prefill_row(const char *op, const ssmtp_tensor_t *state, const ssmtp_tensor_t *state_idx,
                                       const ssmtp_tensor_t *seq_lens, int64_t b, int64_t len, int64_t *slot,
                                       int64_t *n) {
    *slot = ssmtp_present(state) ? ssmtp_slot_of(state_idx, b) : b;
    *n = ssmtp_row_len(seq_lens, b, len);
    if (*n < 0 || *n > len)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: seq_lens[%lld]=%lld outside 0..%lld", op, (long long)b,
                          (long long)*n, (long long)len);
    if (ssmtp_present(state) && *slot >= state->shape[0])
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: state_idx[%lld]=%lld >= nslots=%lld", op, (long long)b,
                          (long long)*slot, (long long)state->shape[0]);
    return SSMTP_OK;
}
