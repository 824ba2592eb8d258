/*
 * allreduce.c - the custom one-host all-reduce: public entry points and their argument checks. The handle, the CUDA
 * IPC setup and the kernels live in csrc/cuda/allreduce.cu (they need the CUDA runtime); a build without CUDA
 * answers SSMTP_ERR_NOT_BUILT here. Protocol and semantics: see "Custom all-reduce" in ssmtp.h.
 */
#include "internal.h"

#ifndef SSMTP_WITH_CUDA
#define NOT_BUILT(op) ssmtp_fail(SSMTP_ERR_NOT_BUILT, "%s: this build of ssmtp has no CUDA", op)
#endif

ssmtp_status_t ssmtp_ar_init(ssmtp_ar_t **out, const ssmtp_ar_config_t *cfg) {
    const char *op = "ar_init";
    if (!out) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: out is NULL", op);
    *out = NULL;
    if (!cfg) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: config is NULL", op);
    if (cfg->world_size < 2 || cfg->world_size > SSMTP_AR_MAX_RANKS)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: world_size=%d, supported 2..%d", op, (int)cfg->world_size,
                          SSMTP_AR_MAX_RANKS);
    if (cfg->rank < 0 || cfg->rank >= cfg->world_size)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: rank=%d outside 0..%d", op, (int)cfg->rank,
                          (int)cfg->world_size - 1);
    if (cfg->device < 0) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: device=%d is not a CUDA device", op, (int)cfg->device);
    if (cfg->buffer_bytes < 0 || cfg->max_blocks < 0 || cfg->max_blocks > 256 || cfg->oneshot_max_bytes < 0)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: buffer_bytes=%lld max_blocks=%d oneshot_max_bytes=%lld", op,
                          (long long)cfg->buffer_bytes, (int)cfg->max_blocks, (long long)cfg->oneshot_max_bytes);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_init(out, cfg);
#else
    return NOT_BUILT(op);
#endif
}

ssmtp_status_t ssmtp_ar_ipc_handle(const ssmtp_ar_t *ar, void *out, size_t size) {
    const char *op = "ar_ipc_handle";
    if (!ar || !out) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: handle or out is NULL", op);
    if (size != SSMTP_AR_IPC_HANDLE_BYTES)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: size=%zu, expected %d", op, size, SSMTP_AR_IPC_HANDLE_BYTES);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_ipc_handle(ar, out);
#else
    return NOT_BUILT(op);
#endif
}

ssmtp_status_t ssmtp_ar_open_peers(ssmtp_ar_t *ar, const void *handles, size_t size) {
    const char *op = "ar_open_peers";
    if (!ar || !handles) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: handle or handles is NULL", op);
#ifdef SSMTP_WITH_CUDA
    const size_t want = (size_t)ssmtp_cuda_ar_world_size(ar) * SSMTP_AR_IPC_HANDLE_BYTES;
    if (size != want) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: %zu bytes of handles, expected %zu", op, size, want);
    return ssmtp_cuda_ar_open_peers(ar, handles);
#else
    (void)size;
    return NOT_BUILT(op);
#endif
}

static ssmtp_status_t check_algo(const char *op, int32_t algo) {
    switch (algo) {
    case SSMTP_AR_AUTO:
    case SSMTP_AR_ONESHOT:
    case SSMTP_AR_TWOSHOT:
    case SSMTP_AR_LAMPORT: return SSMTP_OK;
    default:
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: algo=%d, expected 0 (auto), 1 (one-shot), 2 (two-shot), 3 (lamport)",
                          op, (int)algo);
    }
}

static ssmtp_status_t check_quant(const char *op, int32_t qdtype, int32_t block) {
    if (qdtype != SSMTP_DTYPE_I8 && qdtype != SSMTP_DTYPE_F8E4M3)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: qdtype %s, supported: int8, float8_e4m3fn", op,
                          ssmtp_dtype_name(qdtype));
    if (block != 32 && block != 64 && block != 128 && block != 256)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: block=%d, supported: 32, 64, 128, 256", op, (int)block);
    return SSMTP_OK;
}

/* A dense (row-major contiguous) float tensor; its element count in *n. */
static ssmtp_status_t check_dense(const char *op, const char *name, const ssmtp_tensor_t *t, int64_t *n) {
    SSMTP_TRY(ssmtp_check_dense(op, name, t, n));
    return ssmtp_check_float_dtype(op, name, t);
}

static ssmtp_status_t check_io(const char *op, const ssmtp_ar_t *ar, const ssmtp_tensor_t *in,
                               const ssmtp_tensor_t *out) {
    int64_t n = 0, m = 0;
    SSMTP_TRY(check_dense(op, "in", in, &n));
    SSMTP_TRY(check_dense(op, "out", out, &m));
    if (n != m) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: in has %lld elements, out %lld", op, (long long)n, (long long)m);
    if (in->dtype != out->dtype)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: in is %s but out is %s", op, ssmtp_dtype_name(in->dtype),
                          ssmtp_dtype_name(out->dtype));
#ifdef SSMTP_WITH_CUDA
    const int32_t dev = ssmtp_cuda_ar_device(ar);
    if (in->device != dev || out->device != dev)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: tensors are on devices %d/%d, the handle on cuda:%d", op,
                          (int)in->device, (int)out->device, (int)dev);
    /* out may alias in exactly, but must not overlap it partially */
    const size_t bytes = (size_t)n * ssmtp_dtype_size(in->dtype);
    const char *a = (const char *)in->data, *b = (const char *)out->data;
    if (a != b && a < b + bytes && b < a + bytes)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: out overlaps in without being the same tensor", op);
#else
    (void)ar;
#endif
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_ar_chunk_elems(const ssmtp_ar_t *ar, int32_t dtype, int32_t qdtype, int32_t block, int32_t algo,
                                    int64_t *elems) {
    const char *op = "ar_chunk_elems";
    if (!ar || !elems) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: handle or elems is NULL", op);
    SSMTP_TRY(check_algo(op, algo));
    if (qdtype >= 0 && algo == SSMTP_AR_LAMPORT)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: the lamport algorithm is not quantized", op);
    if (qdtype >= 0) SSMTP_TRY(check_quant(op, qdtype, block));
    if (dtype != SSMTP_DTYPE_F32 && dtype != SSMTP_DTYPE_F16 && dtype != SSMTP_DTYPE_BF16)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: dtype %s", op, ssmtp_dtype_name(dtype));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_chunk_elems(ar, dtype, qdtype, block, algo, elems);
#else
    return NOT_BUILT(op);
#endif
}

ssmtp_status_t ssmtp_ar_all_reduce(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out, int32_t algo,
                                   void *stream) {
    const char *op = "ar_all_reduce";
    if (!ar) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: handle is NULL", op);
    SSMTP_TRY(check_algo(op, algo));
    SSMTP_TRY(check_io(op, ar, in, out));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_run(ar, in, out, -1, 0, algo, stream);
#else
    (void)stream;
    return NOT_BUILT(op);
#endif
}

ssmtp_status_t ssmtp_ar_quant_all_reduce(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out,
                                         int32_t qdtype, int32_t block, int32_t algo, void *stream) {
    const char *op = "ar_quant_all_reduce";
    if (!ar) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: handle is NULL", op);
    SSMTP_TRY(check_algo(op, algo));
    if (algo == SSMTP_AR_LAMPORT)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: the lamport algorithm is not quantized; use 1 or 2", op);
    SSMTP_TRY(check_quant(op, qdtype, block));
    SSMTP_TRY(check_io(op, ar, in, out));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_run(ar, in, out, qdtype, block, algo, stream);
#else
    (void)stream;
    return NOT_BUILT(op);
#endif
}

ssmtp_status_t ssmtp_ar_check(ssmtp_ar_t *ar, int32_t sync) {
    if (!ar) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_check: handle is NULL");
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_check(ar, sync);
#else
    (void)sync;
    return NOT_BUILT("ar_check");
#endif
}

ssmtp_status_t ssmtp_ar_probe(ssmtp_ar_t *ar, int32_t mode, int64_t bytes, void *stream) {
    if (!ar) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_probe: handle is NULL");
    if (mode < 0 || mode > 2) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_probe: mode %d (0, 1 or 2)", (int)mode);
    if (bytes < 0) return ssmtp_fail(SSMTP_ERR_INVALID, "ar_probe: bytes = %lld", (long long)bytes);
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_probe(ar, mode, bytes, stream);
#else
    (void)stream;
    return NOT_BUILT("ar_probe");
#endif
}

ssmtp_status_t ssmtp_ar_free(ssmtp_ar_t *ar) {
    if (!ar) return SSMTP_OK;
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_ar_free(ar);
#else
    return NOT_BUILT("ar_free");
#endif
}
