/*
 * nccl.c - NCCL without linking NCCL: the entry points are resolved at run time from the libnccl.so.2 that torch
 * already loaded (dlopen RTLD_NOLOAD), or from an explicit path, and the few types and enum values used here are
 * declared below (they are part of NCCL's stable ABI: nccl.h has kept them unchanged since 2.x). No CUDA header is
 * needed: a stream is an opaque pointer.
 *
 * Two kinds of communicator sit behind ssmtp_nccl_t: a borrowed one (torch's ProcessGroupNCCL communicator,
 * ncclComm_t passed in as an integer; never destroyed here) and an owned one (ncclCommInitRank from a unique id the
 * caller broadcast; destroyed by ssmtp_nccl_comm_free).
 */
#define _GNU_SOURCE
#include "internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>

/* ---- the NCCL ABI subset we use (values as in nccl.h) ---- */
typedef struct ncclComm *ncclComm_t;
typedef struct {
    char internal[SSMTP_NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;
typedef int ncclResult_t; /* ncclSuccess = 0; 7 = ncclInProgress */
enum {
    nccl_int8 = 0, nccl_uint8 = 1, nccl_int32 = 2, nccl_uint32 = 3, nccl_int64 = 4, nccl_uint64 = 5,
    nccl_float16 = 6, nccl_float32 = 7, nccl_float64 = 8, nccl_bfloat16 = 9, nccl_float8e4m3 = 10 /* NCCL >= 2.24 */
};
enum { nccl_sum = 0 };

typedef ncclResult_t (*fn_get_version)(int *);
typedef ncclResult_t (*fn_get_unique_id)(ncclUniqueId *);
typedef ncclResult_t (*fn_comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
typedef ncclResult_t (*fn_comm_destroy)(ncclComm_t);
typedef ncclResult_t (*fn_comm_count)(const ncclComm_t, int *);
typedef ncclResult_t (*fn_comm_cu_device)(const ncclComm_t, int *);
typedef ncclResult_t (*fn_comm_user_rank)(const ncclComm_t, int *);
typedef ncclResult_t (*fn_all_reduce)(const void *, void *, size_t, int, int, ncclComm_t, void *);
typedef ncclResult_t (*fn_all_gather)(const void *, void *, size_t, int, ncclComm_t, void *);
typedef const char *(*fn_get_error_string)(ncclResult_t);
typedef const char *(*fn_get_last_error)(ncclComm_t);

static struct {
    int source; /* 0 none, 1 already loaded, 2 explicit path */
    void *lib;
    int version;
    fn_get_version get_version;
    fn_get_unique_id get_unique_id;
    fn_comm_init_rank comm_init_rank;
    fn_comm_destroy comm_destroy;
    fn_comm_count comm_count;
    fn_comm_cu_device comm_cu_device;
    fn_comm_user_rank comm_user_rank;
    fn_all_reduce all_reduce;
    fn_all_gather all_gather;
    fn_get_error_string get_error_string;
    fn_get_last_error get_last_error; /* optional (NCCL >= 2.13) */
} g_nccl;
static pthread_mutex_t g_nccl_lock = PTHREAD_MUTEX_INITIALIZER;

struct ssmtp_nccl {
    ncclComm_t comm;
    int owned;
    int32_t rank, nranks, device;
};

static ssmtp_status_t nccl_fail(const char *op, ncclResult_t r, ncclComm_t comm) {
    const char *s = g_nccl.get_error_string ? g_nccl.get_error_string(r) : "?";
    const char *last = (g_nccl.get_last_error && comm) ? g_nccl.get_last_error(comm) : NULL;
    return ssmtp_fail(SSMTP_ERR_NCCL, "%s: NCCL error %d (%s)%s%s", op, (int)r, s ? s : "?", last && last[0] ? ": " : "",
                      last && last[0] ? last : "");
}

#define NCCL_TRY(op, call, comm)                                                                                      \
    do {                                                                                                             \
        ncclResult_t r_ = (call);                                                                                    \
        if (r_ != 0) return nccl_fail(op, r_, comm);                                                                 \
    } while (0)

static void *sym(void *lib, const char *name, int *missing) {
    void *p = dlsym(lib, name);
    if (!p) *missing = 1;
    return p;
}

static ssmtp_status_t bind_symbols(void *lib, int source, const char *where) {
    int missing = 0;
    g_nccl.get_version = (fn_get_version)sym(lib, "ncclGetVersion", &missing);
    g_nccl.get_unique_id = (fn_get_unique_id)sym(lib, "ncclGetUniqueId", &missing);
    g_nccl.comm_init_rank = (fn_comm_init_rank)sym(lib, "ncclCommInitRank", &missing);
    g_nccl.comm_destroy = (fn_comm_destroy)sym(lib, "ncclCommDestroy", &missing);
    g_nccl.comm_count = (fn_comm_count)sym(lib, "ncclCommCount", &missing);
    g_nccl.comm_cu_device = (fn_comm_cu_device)sym(lib, "ncclCommCuDevice", &missing);
    g_nccl.comm_user_rank = (fn_comm_user_rank)sym(lib, "ncclCommUserRank", &missing);
    g_nccl.all_reduce = (fn_all_reduce)sym(lib, "ncclAllReduce", &missing);
    g_nccl.all_gather = (fn_all_gather)sym(lib, "ncclAllGather", &missing);
    g_nccl.get_error_string = (fn_get_error_string)sym(lib, "ncclGetErrorString", &missing);
    g_nccl.get_last_error = (fn_get_last_error)dlsym(lib, "ncclGetLastError");
    if (missing) {
        memset(&g_nccl, 0, sizeof g_nccl);
        return ssmtp_fail(SSMTP_ERR_NCCL, "nccl_load: %s lacks NCCL entry points (not an NCCL library?)", where);
    }
    int v = 0;
    if (g_nccl.get_version(&v) != 0 || v < 20700) {
        memset(&g_nccl, 0, sizeof g_nccl);
        return ssmtp_fail(SSMTP_ERR_NCCL, "nccl_load: NCCL version %d from %s is older than 2.7", v, where);
    }
    g_nccl.lib = lib;
    g_nccl.source = source;
    g_nccl.version = v;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_load(const char *path) {
    ssmtp_status_t st = SSMTP_OK;
    pthread_mutex_lock(&g_nccl_lock);
    if (g_nccl.source) goto done;
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
    if (lib) {
        st = bind_symbols(lib, 1, "the libnccl.so.2 already loaded");
        if (st != SSMTP_OK) dlclose(lib);
        goto done;
    }
    if (!path || !path[0]) {
        st = ssmtp_fail(SSMTP_ERR_NCCL,
                        "nccl_load: no libnccl.so.2 is loaded in this process (import torch with CUDA first) and no "
                        "fallback path was given");
        goto done;
    }
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *e = dlerror();
        st = ssmtp_fail(SSMTP_ERR_NCCL, "nccl_load: dlopen(%s) failed: %s", path, e ? e : "?");
        goto done;
    }
    st = bind_symbols(lib, 2, path);
    if (st != SSMTP_OK) dlclose(lib);
done:
    pthread_mutex_unlock(&g_nccl_lock);
    return st;
}

int ssmtp_nccl_source(void) { return g_nccl.source; }

static ssmtp_status_t need_loaded(const char *op) {
    if (!g_nccl.source) return ssmtp_fail(SSMTP_ERR_NCCL, "%s: NCCL is not loaded (call nccl_load first)", op);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_version(int32_t *version) {
    if (!version) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_version: version is NULL");
    SSMTP_TRY(need_loaded("nccl_version"));
    *version = g_nccl.version;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_unique_id(uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES]) {
    if (!id) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_unique_id: id is NULL");
    SSMTP_TRY(need_loaded("nccl_unique_id"));
    ncclUniqueId u;
    NCCL_TRY("nccl_unique_id", g_nccl.get_unique_id(&u), NULL);
    memcpy(id, u.internal, SSMTP_NCCL_UNIQUE_ID_BYTES);
    return SSMTP_OK;
}

static ssmtp_status_t fill_info(ssmtp_nccl_t *c, const char *op) {
    int n = 0, r = 0, d = 0;
    NCCL_TRY(op, g_nccl.comm_count(c->comm, &n), c->comm);
    NCCL_TRY(op, g_nccl.comm_user_rank(c->comm, &r), c->comm);
    NCCL_TRY(op, g_nccl.comm_cu_device(c->comm, &d), c->comm);
    c->nranks = n;
    c->rank = r;
    c->device = d;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_comm_wrap(ssmtp_nccl_t **out, void *nccl_comm) {
    if (!out) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_wrap: out is NULL");
    *out = NULL;
    if (!nccl_comm) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_wrap: communicator pointer is NULL");
    SSMTP_TRY(need_loaded("nccl_comm_wrap"));
    if (g_nccl.source != 1)
        return ssmtp_fail(SSMTP_ERR_INVALID,
                          "nccl_comm_wrap: NCCL was loaded from an explicit path, not the copy that made this "
                          "communicator; use nccl_comm_init instead");
    ssmtp_nccl_t *c = calloc(1, sizeof *c);
    if (!c) return ssmtp_fail(SSMTP_ERR_NOMEM, "nccl_comm_wrap: out of host memory");
    c->comm = (ncclComm_t)nccl_comm;
    c->owned = 0;
    ssmtp_status_t st = fill_info(c, "nccl_comm_wrap");
    if (st != SSMTP_OK) goto fail;
    *out = c;
    return SSMTP_OK;
fail:
    free(c);
    return st;
}

ssmtp_status_t ssmtp_nccl_comm_init(ssmtp_nccl_t **out, int32_t nranks, int32_t rank,
                                    const uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES]) {
    if (!out) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_init: out is NULL");
    *out = NULL;
    if (!id) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_init: id is NULL");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_init: rank=%d nranks=%d", (int)rank, (int)nranks);
    SSMTP_TRY(need_loaded("nccl_comm_init"));
    ssmtp_status_t st;
    ssmtp_nccl_t *c = calloc(1, sizeof *c);
    if (!c) return ssmtp_fail(SSMTP_ERR_NOMEM, "nccl_comm_init: out of host memory");
    ncclUniqueId u;
    memcpy(u.internal, id, SSMTP_NCCL_UNIQUE_ID_BYTES);
    ncclResult_t r = g_nccl.comm_init_rank(&c->comm, nranks, u, rank);
    if (r != 0) {
        st = nccl_fail("nccl_comm_init", r, NULL);
        goto fail;
    }
    c->owned = 1;
    st = fill_info(c, "nccl_comm_init");
    if (st != SSMTP_OK) {
        g_nccl.comm_destroy(c->comm);
        goto fail;
    }
    *out = c;
    return SSMTP_OK;
fail:
    free(c);
    return st;
}

ssmtp_status_t ssmtp_nccl_comm_info(const ssmtp_nccl_t *c, int32_t *rank, int32_t *nranks, int32_t *device) {
    if (!c) return ssmtp_fail(SSMTP_ERR_INVALID, "nccl_comm_info: communicator is NULL");
    if (rank) *rank = c->rank;
    if (nranks) *nranks = c->nranks;
    if (device) *device = c->device;
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_comm_free(ssmtp_nccl_t *c) {
    if (!c) return SSMTP_OK;
    ssmtp_status_t st = SSMTP_OK;
    if (c->owned && g_nccl.source) {
        ncclResult_t r = g_nccl.comm_destroy(c->comm);
        if (r != 0) st = nccl_fail("nccl_comm_free", r, NULL);
    }
    free(c);
    return st;
}

static ssmtp_status_t nccl_dtype(const char *op, int32_t dtype, int *out) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: *out = nccl_float32; return SSMTP_OK;
    case SSMTP_DTYPE_F16: *out = nccl_float16; return SSMTP_OK;
    case SSMTP_DTYPE_BF16: *out = nccl_bfloat16; return SSMTP_OK;
    case SSMTP_DTYPE_I8: *out = nccl_int8; return SSMTP_OK;
    case SSMTP_DTYPE_U8: *out = nccl_uint8; return SSMTP_OK;
    case SSMTP_DTYPE_I32: *out = nccl_int32; return SSMTP_OK;
    case SSMTP_DTYPE_I64: *out = nccl_int64; return SSMTP_OK;
    case SSMTP_DTYPE_F8E4M3:
        if (g_nccl.version >= 22400) {
            *out = nccl_float8e4m3;
            return SSMTP_OK;
        }
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: float8_e4m3fn needs NCCL >= 2.24 (have %d)", op, g_nccl.version);
    default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: dtype %s unsupported", op, ssmtp_dtype_name(dtype));
    }
}

/* Elements of a tensor that must be dense (row-major contiguous); -1 and a message when it is not. */
static int64_t dense_numel(const char *op, const char *name, const ssmtp_tensor_t *t, ssmtp_status_t *st) {
    int64_t n = -1;
    *st = ssmtp_check_dense(op, name, t, &n);
    if (*st != SSMTP_OK) return -1;
    if (ssmtp_dtype_size(t->dtype) == 0) {
        *st = ssmtp_fail(SSMTP_ERR_INVALID, "%s: %s has unknown dtype code %d", op, name, (int)t->dtype);
        return -1;
    }
    return n;
}

static ssmtp_status_t check_comm_device(const char *op, const ssmtp_nccl_t *c, const ssmtp_tensor_t *x,
                                        const ssmtp_tensor_t *out) {
    if (x->device != c->device || out->device != c->device)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: tensors are on devices %d/%d, the communicator on cuda:%d", op,
                          (int)x->device, (int)out->device, (int)c->device);
    if (x->dtype != out->dtype)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: x is %s but out is %s", op, ssmtp_dtype_name(x->dtype),
                          ssmtp_dtype_name(out->dtype));
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_all_reduce(ssmtp_nccl_t *c, const ssmtp_tensor_t *x, ssmtp_tensor_t *out, void *stream) {
    const char *op = "nccl_all_reduce";
    if (!c) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: communicator is NULL", op);
    SSMTP_TRY(need_loaded(op));
    ssmtp_status_t st;
    const int64_t n = dense_numel(op, "x", x, &st);
    if (n < 0) return st;
    const int64_t m = dense_numel(op, "out", out, &st);
    if (m < 0) return st;
    if (m != n) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: x has %lld elements, out %lld", op, (long long)n, (long long)m);
    SSMTP_TRY(check_comm_device(op, c, x, out));
    int dt;
    SSMTP_TRY(nccl_dtype(op, x->dtype, &dt));
    if (x->dtype == SSMTP_DTYPE_F8E4M3 || x->dtype == SSMTP_DTYPE_I8 || x->dtype == SSMTP_DTYPE_U8)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "%s: summing %s is not meaningful here", op,
                          ssmtp_dtype_name(x->dtype));
    if (n == 0) return SSMTP_OK;
    NCCL_TRY(op, g_nccl.all_reduce(x->data, out->data, (size_t)n, dt, nccl_sum, c->comm, stream), c->comm);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_nccl_all_gather(ssmtp_nccl_t *c, const ssmtp_tensor_t *x, ssmtp_tensor_t *out, void *stream) {
    const char *op = "nccl_all_gather";
    if (!c) return ssmtp_fail(SSMTP_ERR_INVALID, "%s: communicator is NULL", op);
    SSMTP_TRY(need_loaded(op));
    ssmtp_status_t st;
    const int64_t n = dense_numel(op, "x", x, &st);
    if (n < 0) return st;
    const int64_t m = dense_numel(op, "out", out, &st);
    if (m < 0) return st;
    if (m != n * c->nranks)
        return ssmtp_fail(SSMTP_ERR_INVALID, "%s: out has %lld elements, expected %d x %lld", op, (long long)m,
                          (int)c->nranks, (long long)n);
    SSMTP_TRY(check_comm_device(op, c, x, out));
    /* a gather only moves bytes: send everything as uint8 so any dtype (fp8 on older NCCL too) works */
    const int dt = nccl_uint8;
    const size_t bytes = (size_t)n * ssmtp_dtype_size(x->dtype);
    if (bytes == 0) return SSMTP_OK;
    NCCL_TRY(op, g_nccl.all_gather(x->data, out->data, bytes, dt, c->comm, stream), c->comm);
    return SSMTP_OK;
}
