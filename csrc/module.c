/*
 * module.c - the CPython binding `ssmtp._C`, the only file that includes Python.h.
 *
 * It knows nothing of torch: a tensor arrives as a tuple (data_ptr, dtype_code, device, shape, strides) built by
 * ssmtp/ops.py, or None for an absent optional argument; a stream arrives as an integer (0 = default/none). A non-OK
 * status becomes a Python exception carrying ssmtp_last_error(). The GIL is released around every call into C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "internal.h"

static int parse_tensor(PyObject *obj, ssmtp_tensor_t *t, const char *name) {
    memset(t, 0, sizeof *t);
    if (obj == Py_None) return 1;
    PyObject *shape = NULL, *strides = NULL;
    unsigned long long ptr = 0;
    int dtype = 0, device = 0;
    if (!PyArg_ParseTuple(obj, "KiiOO", &ptr, &dtype, &device, &shape, &strides)) {
        PyErr_Format(PyExc_TypeError, "%s: expected (ptr, dtype, device, shape, strides) or None", name);
        return 0;
    }
    Py_ssize_t nd = PySequence_Size(shape);
    if (nd < 0 || nd > SSMTP_MAX_DIMS || PySequence_Size(strides) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: rank must be 0..%d with one stride per dim", name, SSMTP_MAX_DIMS);
        return 0;
    }
    t->data = (void *)(uintptr_t)ptr;
    t->dtype = dtype;
    t->device = device;
    t->ndim = (int32_t)nd;
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *a = PySequence_GetItem(shape, i), *b = PySequence_GetItem(strides, i);
        t->shape[i] = a ? PyLong_AsLongLong(a) : -1;
        t->stride[i] = b ? PyLong_AsLongLong(b) : -1;
        Py_XDECREF(a);
        Py_XDECREF(b);
        if (PyErr_Occurred()) return 0;
    }
    if (t->data == NULL) { /* an empty tensor may have a null pointer: mark it present with a dummy address */
        static char empty_sentinel;
        t->data = &empty_sentinel;
    }
    return 1;
}

static PyObject *raise_status(ssmtp_status_t st) {
    PyObject *exc;
    switch (st) {
    case SSMTP_ERR_INVALID: exc = PyExc_ValueError; break;
    case SSMTP_ERR_UNSUPPORTED: exc = PyExc_NotImplementedError; break;
    case SSMTP_ERR_TIMEOUT: exc = PyExc_TimeoutError; break;
    case SSMTP_ERR_NOMEM: exc = PyExc_MemoryError; break;
    default: exc = PyExc_RuntimeError; break;
    }
    const char *msg = ssmtp_last_error();
    PyErr_Format(exc, "%s (%s)", msg[0] ? msg : "ssmtp error", ssmtp_status_name(st));
    return NULL;
}

#define CALL_C(expr)                                                                                                 \
    do {                                                                                                             \
        ssmtp_status_t st_;                                                                                          \
        ssmtp_clear_error();                                                                                         \
        Py_BEGIN_ALLOW_THREADS st_ = (expr);                                                                         \
        Py_END_ALLOW_THREADS if (st_ != SSMTP_OK) return raise_status(st_);                                          \
    } while (0)

static int parse_tensors(PyObject *const *o, ssmtp_tensor_t *const *t, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!parse_tensor(o[i], t[i], names[i])) return 0;
    return 1;
}

static PyObject *py_conv1d_fwd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[9];
    int silu = 0, load_state = 0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOiiK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &silu,
                          &load_state, &stream))
        return NULL;
    ssmtp_conv1d_params_t p;
    static const char *const names[] = {"x", "weight", "bias", "state", "state_idx", "seq_lens", "out", "save_pos",
                                        "save_idx"};
    ssmtp_tensor_t *const t[] = {&p.x,        &p.weight, &p.bias,     &p.state,   &p.state_idx,
                                 &p.seq_lens, &p.out,    &p.save_pos, &p.save_idx};
    if (!parse_tensors(o, t, names, 9)) return NULL;
    p.silu = silu;
    p.load_state = load_state;
    CALL_C(ssmtp_conv1d_fwd(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

/* The SSM ops' tensor arguments, in the order ssmtp.ops passes them (scan and ssd: SSM_TENSORS; the decode steps:
 * STEP_TENSORS, without seq_lens). The param structs share these member names. */
static const char *const SSM_NAMES[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx",
                                        "seq_lens", "out"};
static const char *const STEP_NAMES[] = {"x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx", "out"};
#define SSM_TENSORS(p)                                                                                               \
    {&(p).x, &(p).dt, &(p).A, &(p).B, &(p).C, &(p).D, &(p).z, &(p).dt_bias, &(p).state, &(p).state_idx,            \
     &(p).seq_lens, &(p).out}
#define STEP_TENSORS(p)                                                                                              \
    {&(p).x, &(p).dt, &(p).A, &(p).B, &(p).C, &(p).D, &(p).z, &(p).dt_bias, &(p).state, &(p).state_idx, &(p).out}


static PyObject *py_scan_fwd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[14];
    int softplus = 0, load_state = 0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOiiK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &o[11], &o[12], &o[13], &softplus, &load_state, &stream))
        return NULL;
    ssmtp_scan_params_t p;
    ssmtp_tensor_t *const t[] = SSM_TENSORS(p);
    if (!parse_tensors(o, t, SSM_NAMES, 12) || !parse_tensor(o[12], &p.save_pos, "save_pos") ||
        !parse_tensor(o[13], &p.save_idx, "save_idx"))
        return NULL;
    p.dt_softplus = softplus;
    p.load_state = load_state;
    CALL_C(ssmtp_scan_fwd(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

static PyObject *py_step_fwd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[12];
    int softplus = 0, early = 0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOiK|i", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &o[11], &softplus, &stream, &early))
        return NULL;
    ssmtp_step_params_t p;
    ssmtp_tensor_t *const t[] = STEP_TENSORS(p);
    if (!parse_tensors(o, t, STEP_NAMES, 11) || !parse_tensor(o[11], &p.dt_proj, "dt_proj")) return NULL;
    p.dt_softplus = softplus;
    p.state_early = early;
    CALL_C(ssmtp_step_fwd(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

static PyObject *py_ssd_fwd(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[12];
    int softplus = 0, load_state = 0, chunk = 0;
    float dt_min = 0.0f, dt_max = 0.0f;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOiiiffK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &o[11], &softplus, &load_state, &chunk, &dt_min, &dt_max, &stream))
        return NULL;
    ssmtp_ssd_params_t p;
    ssmtp_tensor_t *const t[] = SSM_TENSORS(p);
    if (!parse_tensors(o, t, SSM_NAMES, 12)) return NULL;
    p.dt_softplus = softplus;
    p.load_state = load_state;
    p.chunk_size = chunk;
    p.dt_min = dt_min;
    p.dt_max = dt_max;
    CALL_C(ssmtp_ssd_fwd(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

static PyObject *py_ssd_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[11];
    int softplus = 0;
    float dt_min = 0.0f, dt_max = 0.0f;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOiffK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &softplus, &dt_min, &dt_max, &stream))
        return NULL;
    ssmtp_ssd_step_params_t p;
    ssmtp_tensor_t *const t[] = STEP_TENSORS(p);
    if (!parse_tensors(o, t, STEP_NAMES, 11)) return NULL;
    p.dt_softplus = softplus;
    p.dt_min = dt_min;
    p.dt_max = dt_max;
    CALL_C(ssmtp_ssd_step(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

static PyObject *quant_common(PyObject *args, int dequant) {
    PyObject *o[3];
    int block = 0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOiK", &o[0], &o[1], &o[2], &block, &stream)) return NULL;
    ssmtp_quant_params_t p;
    if (!parse_tensor(o[0], &p.x, "x") || !parse_tensor(o[1], &p.q, "q") || !parse_tensor(o[2], &p.scales, "scales"))
        return NULL;
    p.block = block;
    if (dequant)
        CALL_C(ssmtp_dequantize(&p, (void *)(uintptr_t)stream));
    else
        CALL_C(ssmtp_quantize(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_linear_small(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[4];
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOK", &o[0], &o[1], &o[2], &o[3], &stream)) return NULL;
    ssmtp_linear_params_t p;
    ssmtp_tensor_t *const t[] = {&p.x, &p.weight, &p.bias, &p.out};
    static const char *const names[] = {"x", "weight", "bias", "out"};
    if (!parse_tensors(o, t, names, 4)) return NULL;
    CALL_C(ssmtp_linear_small(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_gated_norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[4];
    long long group = 0;
    double eps = 0.0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOLdK", &o[0], &o[1], &o[2], &o[3], &group, &eps, &stream)) return NULL;
    ssmtp_gated_norm_params_t p;
    ssmtp_tensor_t *const t[] = {&p.y, &p.gate, &p.weight, &p.out};
    static const char *const names[] = {"y", "gate", "weight", "out"};
    if (!parse_tensors(o, t, names, 4)) return NULL;
    p.group = (int64_t)group;
    p.eps = (float)eps;
    CALL_C(ssmtp_gated_norm(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_add_rms_norm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[5];
    double eps = 0.0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOdK", &o[0], &o[1], &o[2], &o[3], &o[4], &eps, &stream)) return NULL;
    ssmtp_add_norm_params_t p;
    ssmtp_tensor_t *const t[] = {&p.res, &p.add, &p.res_out, &p.norm_w, &p.out};
    static const char *const names[] = {"res", "add", "res_out", "norm_w", "out"};
    if (!parse_tensors(o, t, names, 5)) return NULL;
    p.eps = (float)eps;
    CALL_C(ssmtp_add_rms_norm(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_rms_segments(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[2], *lens = NULL;
    double eps = 0.0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOdK", &o[0], &o[1], &lens, &eps, &stream)) return NULL;
    ssmtp_rms_segments_params_t p;
    memset(&p, 0, sizeof(p));
    ssmtp_tensor_t *const t[] = {&p.x, &p.out};
    static const char *const names[] = {"x", "out"};
    if (!parse_tensors(o, t, names, 2)) return NULL;
    PyObject *seq = PySequence_Fast(lens, "rms_segments: lens must be a sequence of ints");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    p.nseg = (int64_t)n;
    for (Py_ssize_t i = 0; i < n && i < SSMTP_RMS_MAX_SEGMENTS; i++) {
        p.len[i] = (int64_t)PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    p.eps = (float)eps;
    CALL_C(ssmtp_rms_segments(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_mamba_decode_in(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[12];
    double eps = 0.0;
    long long conv_lo = 0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOdLK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &o[11], &eps, &conv_lo, &stream))
        return NULL;
    ssmtp_decode_in_params_t p;
    ssmtp_tensor_t *const t[] = {&p.res,    &p.add,    &p.res_out,    &p.norm_w,    &p.weight, &p.bias,
                                 &p.conv_w, &p.conv_b, &p.conv_state, &p.state_idx, &p.xc,     &p.z};
    static const char *const names[] = {"res",    "add",    "res_out",    "norm_w",    "weight", "bias",
                                        "conv_w", "conv_b", "conv_state", "state_idx", "xc",     "z"};
    if (!parse_tensors(o, t, names, 12)) return NULL;
    p.eps = (float)eps;
    p.conv_lo = (int64_t)conv_lo;
    CALL_C(ssmtp_mamba_decode_in(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_decode_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[6];
    double scale = 1.0;
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOdK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &scale, &stream)) return NULL;
    ssmtp_attn_params_t p;
    ssmtp_tensor_t *const t[] = {&p.q, &p.k, &p.v, &p.state_idx, &p.lengths, &p.out};
    static const char *const names[] = {"q", "k", "v", "state_idx", "lengths", "out"};
    if (!parse_tensors(o, t, names, 6)) return NULL;
    p.scale = (float)scale;
    CALL_C(ssmtp_decode_attention(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    (void)self;
    return quant_common(args, 0);
}
static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    return quant_common(args, 1);
}

static PyObject *py_sample(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[7];
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOK", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &stream)) return NULL;
    ssmtp_sample_params_t p;
    ssmtp_tensor_t *const t[] = {&p.logits, &p.temperature, &p.top_k, &p.top_p, &p.seed, &p.step, &p.out};
    static const char *const names[] = {"logits", "temperature", "top_k", "top_p", "seed", "step", "out"};
    if (!parse_tensors(o, t, names, 7)) return NULL;
    CALL_C(ssmtp_sample(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

static PyObject *py_argmax(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[2];
    unsigned long long stream = 0;
    if (!PyArg_ParseTuple(args, "OOK", &o[0], &o[1], &stream)) return NULL;
    ssmtp_argmax_params_t p;
    ssmtp_tensor_t *const t[] = {&p.logits, &p.out};
    static const char *const names[] = {"logits", "out"};
    if (!parse_tensors(o, t, names, 2)) return NULL;
    CALL_C(ssmtp_argmax(&p, (void *)(uintptr_t)stream));
    Py_RETURN_NONE;
}

/* token_ids(seq) -> bytearray of len(seq) native int64 values when seq is a list or tuple of exact Python ints in
   int64 range; None for anything else (a bool, a numpy integer, a float, a number out of range: the engine's slower
   path then converts it or names the element). One C loop over the items: the prompt's ids are on the time to first
   token (an 8k-token list took ~0.13-0.2 ms through array("q"), which parses every item through a format string). */
static PyObject *py_token_ids(PyObject *self, PyObject *seq) {
    (void)self;
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) Py_RETURN_NONE;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > PY_SSIZE_T_MAX / 8) Py_RETURN_NONE;
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (!out) return NULL;
    long long *dst = (long long *)PyByteArray_AS_STRING(out);
    PyObject **items = PySequence_Fast_ITEMS(seq); /* no Python code runs in the loop: the list cannot change */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        int overflow = 0;
        if (!PyLong_CheckExact(t)) goto other;
        const long long v = PyLong_AsLongLongAndOverflow(t, &overflow);
        if (overflow) goto other;
        dst[i] = v;
    }
    return out;
other:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyObject *py_cuda_built(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(ssmtp_cuda_built());
}
static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(ssmtp_build_info());
}

/* @@COMM-BINDINGS@@ (communication functions are defined below this line) */

/* Communication. Handles (ssmtp_nccl_t *, ssmtp_ar_t *) cross into Python as integers owned by ssmtp/parallel/. */
#define HANDLE(h) ((void *)(uintptr_t)(h))

static PyObject *py_nccl_load(PyObject *self, PyObject *args) {
    (void)self;
    const char *path = NULL;
    if (!PyArg_ParseTuple(args, "z", &path)) return NULL;
    CALL_C(ssmtp_nccl_load(path));
    return PyLong_FromLong(ssmtp_nccl_source());
}
static PyObject *py_nccl_version(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    int32_t v = 0;
    CALL_C(ssmtp_nccl_version(&v));
    return PyLong_FromLong(v);
}
static PyObject *py_nccl_unique_id(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES];
    CALL_C(ssmtp_nccl_unique_id(id));
    return PyBytes_FromStringAndSize((const char *)id, SSMTP_NCCL_UNIQUE_ID_BYTES);
}
static PyObject *py_nccl_comm_wrap(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ptr = 0;
    if (!PyArg_ParseTuple(args, "K", &ptr)) return NULL;
    ssmtp_nccl_t *c = NULL;
    CALL_C(ssmtp_nccl_comm_wrap(&c, HANDLE(ptr)));
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)c);
}
static PyObject *py_nccl_comm_init(PyObject *self, PyObject *args) {
    (void)self;
    int nranks = 0, rank = 0;
    const char *id = NULL;
    Py_ssize_t idlen = 0;
    if (!PyArg_ParseTuple(args, "iiy#", &nranks, &rank, &id, &idlen)) return NULL;
    if (idlen != SSMTP_NCCL_UNIQUE_ID_BYTES) {
        PyErr_Format(PyExc_ValueError, "nccl_comm_init: unique id must be %d bytes, got %zd", SSMTP_NCCL_UNIQUE_ID_BYTES,
                     idlen);
        return NULL;
    }
    ssmtp_nccl_t *c = NULL;
    CALL_C(ssmtp_nccl_comm_init(&c, nranks, rank, (const uint8_t *)id));
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)c);
}
static PyObject *py_nccl_comm_info(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    if (!PyArg_ParseTuple(args, "K", &h)) return NULL;
    int32_t r = 0, n = 0, d = 0;
    CALL_C(ssmtp_nccl_comm_info((const ssmtp_nccl_t *)HANDLE(h), &r, &n, &d));
    return Py_BuildValue("(iii)", (int)r, (int)n, (int)d);
}
static PyObject *py_nccl_comm_free(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    if (!PyArg_ParseTuple(args, "K", &h)) return NULL;
    CALL_C(ssmtp_nccl_comm_free((ssmtp_nccl_t *)HANDLE(h)));
    Py_RETURN_NONE;
}
static PyObject *nccl_collective(PyObject *args, int gather) {
    unsigned long long h = 0, stream = 0;
    PyObject *ox, *oo;
    if (!PyArg_ParseTuple(args, "KOOK", &h, &ox, &oo, &stream)) return NULL;
    ssmtp_tensor_t x, out;
    if (!parse_tensor(ox, &x, "x") || !parse_tensor(oo, &out, "out")) return NULL;
    if (gather)
        CALL_C(ssmtp_nccl_all_gather((ssmtp_nccl_t *)HANDLE(h), &x, &out, HANDLE(stream)));
    else
        CALL_C(ssmtp_nccl_all_reduce((ssmtp_nccl_t *)HANDLE(h), &x, &out, HANDLE(stream)));
    Py_RETURN_NONE;
}
static PyObject *py_nccl_all_reduce(PyObject *self, PyObject *args) {
    (void)self;
    return nccl_collective(args, 0);
}
static PyObject *py_nccl_all_gather(PyObject *self, PyObject *args) {
    (void)self;
    return nccl_collective(args, 1);
}

static PyObject *py_ar_init(PyObject *self, PyObject *args) {
    (void)self;
    ssmtp_ar_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    int rank = 0, ws = 0, device = 0, max_blocks = 0;
    long long buffer = 0, oneshot = 0;
    double timeout = 0;
    if (!PyArg_ParseTuple(args, "iiiLdiL", &rank, &ws, &device, &buffer, &timeout, &max_blocks, &oneshot))
        return NULL;
    cfg.rank = rank;
    cfg.world_size = ws;
    cfg.device = device;
    cfg.buffer_bytes = buffer;
    cfg.timeout_s = timeout;
    cfg.max_blocks = max_blocks;
    cfg.oneshot_max_bytes = oneshot;
    ssmtp_ar_t *ar = NULL;
    CALL_C(ssmtp_ar_init(&ar, &cfg));
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)ar);
}
static PyObject *py_ar_ipc_handle(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    if (!PyArg_ParseTuple(args, "K", &h)) return NULL;
    char buf[SSMTP_AR_IPC_HANDLE_BYTES];
    CALL_C(ssmtp_ar_ipc_handle((const ssmtp_ar_t *)HANDLE(h), buf, sizeof buf));
    return PyBytes_FromStringAndSize(buf, sizeof buf);
}
static PyObject *py_ar_open_peers(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    const char *hs = NULL;
    Py_ssize_t len = 0;
    if (!PyArg_ParseTuple(args, "Ky#", &h, &hs, &len)) return NULL;
    CALL_C(ssmtp_ar_open_peers((ssmtp_ar_t *)HANDLE(h), hs, (size_t)len));
    Py_RETURN_NONE;
}
static PyObject *py_ar_chunk_elems(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    int dtype = 0, qdtype = -1, block = 0, algo = 0;
    if (!PyArg_ParseTuple(args, "Kiiii", &h, &dtype, &qdtype, &block, &algo)) return NULL;
    int64_t n = 0;
    CALL_C(ssmtp_ar_chunk_elems((const ssmtp_ar_t *)HANDLE(h), dtype, qdtype, block, algo, &n));
    return PyLong_FromLongLong((long long)n);
}
static PyObject *py_ar_all_reduce(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0, stream = 0;
    PyObject *oi, *oo;
    int algo = 0;
    if (!PyArg_ParseTuple(args, "KOOiK", &h, &oi, &oo, &algo, &stream)) return NULL;
    ssmtp_tensor_t in, out;
    if (!parse_tensor(oi, &in, "in") || !parse_tensor(oo, &out, "out")) return NULL;
    CALL_C(ssmtp_ar_all_reduce((ssmtp_ar_t *)HANDLE(h), &in, &out, algo, HANDLE(stream)));
    Py_RETURN_NONE;
}
static PyObject *py_ar_quant_all_reduce(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0, stream = 0;
    PyObject *oi, *oo;
    int qdtype = 0, block = 0, algo = 0;
    if (!PyArg_ParseTuple(args, "KOOiiiK", &h, &oi, &oo, &qdtype, &block, &algo, &stream)) return NULL;
    ssmtp_tensor_t in, out;
    if (!parse_tensor(oi, &in, "in") || !parse_tensor(oo, &out, "out")) return NULL;
    CALL_C(ssmtp_ar_quant_all_reduce((ssmtp_ar_t *)HANDLE(h), &in, &out, qdtype, block, algo, HANDLE(stream)));
    Py_RETURN_NONE;
}
static PyObject *py_ar_check(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    int sync = 0;
    if (!PyArg_ParseTuple(args, "Ki", &h, &sync)) return NULL;
    CALL_C(ssmtp_ar_check((ssmtp_ar_t *)HANDLE(h), sync));
    Py_RETURN_NONE;
}
static PyObject *py_ar_probe(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0, stream = 0;
    int mode = 0;
    long long bytes = 0;
    if (!PyArg_ParseTuple(args, "KiLK", &h, &mode, &bytes, &stream)) return NULL;
    CALL_C(ssmtp_ar_probe((ssmtp_ar_t *)HANDLE(h), mode, (int64_t)bytes, HANDLE(stream)));
    Py_RETURN_NONE;
}
static PyObject *py_ar_free(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long h = 0;
    if (!PyArg_ParseTuple(args, "K", &h)) return NULL;
    CALL_C(ssmtp_ar_free((ssmtp_ar_t *)HANDLE(h)));
    Py_RETURN_NONE;
}


static PyMethodDef methods[] = {
    {"conv1d_fwd", py_conv1d_fwd, METH_VARARGS,
     "conv1d_fwd(x, weight, bias, state, state_idx, seq_lens, out, save_pos, save_idx, silu, load_state, stream)"},
    {"scan_fwd", py_scan_fwd, METH_VARARGS,
     "scan_fwd(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, out, save_pos, save_idx, dt_softplus, "
     "load_state, stream)"},
    {"step_fwd", py_step_fwd, METH_VARARGS,
     "step_fwd(x, dt, A, B, C, D, z, dt_bias, state, state_idx, out, dt_proj, dt_softplus, stream)"},
    {"ssd_fwd", py_ssd_fwd, METH_VARARGS,
     "ssd_fwd(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, out, dt_softplus, load_state, chunk_size, "
     "dt_min, dt_max, stream)"},
    {"ssd_step", py_ssd_step, METH_VARARGS,
     "ssd_step(x, dt, A, B, C, D, z, dt_bias, state, state_idx, out, dt_softplus, dt_min, dt_max, stream)"},
    {"quantize", py_quantize, METH_VARARGS, "quantize(x, q, scales, block, stream)"},
    {"dequantize", py_dequantize, METH_VARARGS, "dequantize(x, q, scales, block, stream)"},
    {"sample", py_sample, METH_VARARGS, "sample(logits, temperature, top_k, top_p, seed, step, out, stream)"},
    {"argmax", py_argmax, METH_VARARGS, "argmax(logits, out, stream): greedy token per row"},
    {"linear_small", py_linear_small, METH_VARARGS, "linear_small(x, weight, bias, out, stream)"},
    {"gated_norm", py_gated_norm, METH_VARARGS, "gated_norm(y, gate, weight, out, group, eps, stream)"},
    {"add_rms_norm", py_add_rms_norm, METH_VARARGS, "add_rms_norm(res, add, res_out, norm_w, out, eps, stream)"},
    {"rms_segments", py_rms_segments, METH_VARARGS, "rms_segments(x, out, lens, eps, stream)"},
    {"mamba_decode_in", py_mamba_decode_in, METH_VARARGS,
     "mamba_decode_in(res, add, res_out, norm_w, weight, bias, conv_w, conv_b, conv_state, state_idx, xc, z, eps, "
     "conv_lo, stream): residual add + RMSNorm + in_proj + conv decode step, fused"},
    {"decode_attention", py_decode_attention, METH_VARARGS,
     "decode_attention(q, k, v, state_idx, lengths, out, scale, stream)"},
    {"token_ids", py_token_ids, METH_O,
     "token_ids(list or tuple) -> bytearray of int64, or None unless every item is an exact int in int64 range"},
    {"cuda_built", py_cuda_built, METH_NOARGS, "True when the CUDA kernels were compiled in"},
    {"build_info", py_build_info, METH_NOARGS, "what was built"},
    /* @@COMM-METHODS@@ */
    {"nccl_load", py_nccl_load, METH_VARARGS, "nccl_load(path or None) -> source (1 = torch's loaded copy, 2 = path)"},
    {"nccl_version", py_nccl_version, METH_NOARGS, "NCCL version code of the loaded library"},
    {"nccl_unique_id", py_nccl_unique_id, METH_NOARGS, "a fresh ncclUniqueId (bytes)"},
    {"nccl_comm_wrap", py_nccl_comm_wrap, METH_VARARGS, "nccl_comm_wrap(ncclComm_t as int) -> handle (borrowed)"},
    {"nccl_comm_init", py_nccl_comm_init, METH_VARARGS, "nccl_comm_init(nranks, rank, unique_id) -> handle (owned)"},
    {"nccl_comm_info", py_nccl_comm_info, METH_VARARGS, "nccl_comm_info(handle) -> (rank, nranks, device)"},
    {"nccl_comm_free", py_nccl_comm_free, METH_VARARGS, "nccl_comm_free(handle)"},
    {"nccl_all_reduce", py_nccl_all_reduce, METH_VARARGS, "nccl_all_reduce(handle, x, out, stream): sum"},
    {"nccl_all_gather", py_nccl_all_gather, METH_VARARGS, "nccl_all_gather(handle, x, out, stream)"},
    {"ar_init", py_ar_init, METH_VARARGS,
     "ar_init(rank, world_size, device, buffer_bytes, timeout_s, max_blocks, oneshot_max_bytes) -> handle"},
    {"ar_ipc_handle", py_ar_ipc_handle, METH_VARARGS, "ar_ipc_handle(handle) -> bytes"},
    {"ar_open_peers", py_ar_open_peers, METH_VARARGS, "ar_open_peers(handle, all ranks' IPC handles concatenated)"},
    {"ar_chunk_elems", py_ar_chunk_elems, METH_VARARGS, "ar_chunk_elems(handle, dtype, qdtype or -1, block, algo)"},
    {"ar_all_reduce", py_ar_all_reduce, METH_VARARGS, "ar_all_reduce(handle, in, out, algo, stream)"},
    {"ar_quant_all_reduce", py_ar_quant_all_reduce, METH_VARARGS,
     "ar_quant_all_reduce(handle, in, out, qdtype, block, algo, stream)"},
    {"ar_check", py_ar_check, METH_VARARGS, "ar_check(handle, sync): raise the recorded timeout/mismatch"},
    {"ar_probe", py_ar_probe, METH_VARARGS, "ar_probe(handle, mode, bytes, stream): NVLink bandwidth probe (benchmarks)"},
    {"ar_free", py_ar_free, METH_VARARGS, "ar_free(handle)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_C", "ssmtp C core (CPU ops, CUDA kernels, comm)", -1,
                                       methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&moduledef); }
