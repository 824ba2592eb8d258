/*
 * fuzz_c_api.c - a seeded fuzz driver for the argument checks of the public C API (csrc/ssmtp.h), CPU build.
 *
 * Built with the csrc C sources except module.c (no Python), under AddressSanitizer + UBSan (tests/fuzz/run.sh):
 *   fuzz_c_api [-s SEED] [-n ITERS] [-t SECONDS] [-l FAKE_NCCL.so] [-v]
 *
 * Each iteration picks an op (conv1d, scan, step with or without dt_proj, ssd, ssd_step, quantize, dequantize,
 * linear_small, decode_attention, mamba_decode_in, gated_norm, argmax), draws a valid call (random dtypes, small shapes
 * including 0,
 * padded / broadcast strides, optional tensors present or absent, slot indices including -1 padding rows,
 * right-padded seq_lens) with every buffer allocated to exactly the bytes its descriptor
 * claims, then, most of the time, breaks it in one or two ways chosen to be invalid for certain: NULL required
 * tensors, wrong ndim, unknown or mismatched dtypes, negative / mismatched / huge shapes, negative strides, strides
 * whose extent overflows, mixed or CUDA devices, d_state > 256, bad conv width / state length, groups that do not
 * divide, slot indices and sequence lengths out of range, chunk_size < 1, dt_min > dt_max or NaN, bad quant blocks.
 *   a valid call     must return SSMTP_OK; it is then replayed on the restored inputs and must give the same bits;
 *   an invalid call  must return an error status with a message that names the op, and must leave every buffer
 *                    (outputs and states included) untouched.
 * The sanitizers catch any read or write outside the buffers, and any undefined behaviour (integer overflow in index
 * arithmetic, bad shifts, float-to-int overflow) on the way. The communication entry points are called too: the
 * custom all-reduce (a CPU build answers SSMTP_ERR_NOT_BUILT after its checks) and NCCL, before loading, with bad
 * libraries, and through a stand-in libnccl (tests/fuzz/fake_nccl.c, -l) that copies host memory, so the byte
 * counts csrc/nccl.c passes are checked against the buffers.
 * Exit status 0 when every call behaved; 1 with the seed, iteration and call on the first violation.
 */
#include "ssmtp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------------------- random */

static uint64_t g_rng;
static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int64_t rint_in(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1)); }
static int chance(int percent) { return (int)(rnd() % 100) < percent; }
static float rfloat(void) { return (float)((double)(rnd() >> 11) * (1.0 / 9007199254740992.0)) * 4.0f - 2.0f; }

/* ---------------------------------------------------------------------------------------------------- report */

static uint64_t g_seed, g_iter;
static int g_verbose;
static char g_call[256];

static void die(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "fuzz_c_api: FAIL seed=%llu iter=%llu call=%s: ", (unsigned long long)g_seed,
            (unsigned long long)g_iter, g_call);
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    exit(1);
}

/* ---------------------------------------------------------------------------------------------------- buffers */

#define MAX_BUFS 32
typedef struct {
    unsigned char *mem, *snap, *after;
    size_t bytes;
} buf_t;
static buf_t g_bufs[MAX_BUFS];
static int g_nbufs;

static size_t dsize(int32_t dt) {
    switch (dt) {
    case SSMTP_DTYPE_F32: case SSMTP_DTYPE_I32: return 4;
    case SSMTP_DTYPE_F16: case SSMTP_DTYPE_BF16: return 2;
    case SSMTP_DTYPE_I8: case SSMTP_DTYPE_F8E4M3: case SSMTP_DTYPE_U8: return 1;
    case SSMTP_DTYPE_I64: return 8;
    default: return 0;
    }
}

static void fill_float(unsigned char *mem, size_t bytes, int32_t dt) {
    size_t es = dsize(dt), n = bytes / es;
    for (size_t i = 0; i < n; i++) {
        float v = rfloat();
        if (chance(2)) { /* specials: conversions and the math must stay defined on them */
            const float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f, 1e-40f, 65504.0f, 70000.0f};
            v = sp[rnd() % (sizeof sp / sizeof sp[0])];
        }
        if (dt == SSMTP_DTYPE_F32) {
            memcpy(mem + i * 4, &v, 4);
        } else { /* 16-bit: random bit patterns now and then, else the top half of the fp32 bits */
            uint32_t u;
            memcpy(&u, &v, 4);
            uint16_t h = chance(5) ? (uint16_t)rnd() : (uint16_t)(u >> 16);
            if (dt == SSMTP_DTYPE_F16 && !chance(5)) h &= 0xbfffu; /* mostly moderate f16 exponents */
            memcpy(mem + i * 2, &h, 2);
        }
    }
    for (size_t i = n * es; i < bytes; i++) mem[i] = (unsigned char)rnd();
}

enum { ROLE_IN, ROLE_OUT };

static int64_t numel(const ssmtp_tensor_t *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* A present tensor of the given shape on the CPU with a random layout, allocated to exactly its extent. dense = 0:
 * ROLE_IN tensors may broadcast (stride 0) along a dim, rows may be padded and the innermost stride may be 2;
 * dense = 2: the same with a unit innermost stride; dense = 1: row-major contiguous (any stride on size-1 dims). */
static void mk(ssmtp_tensor_t *t, int32_t dt, int ndim, const int64_t *shape, int role, int dense) {
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->device = SSMTP_DEVICE_CPU;
    t->ndim = ndim;
    int64_t run = (dense == 0 && chance(10)) ? 2 : 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t->shape[d] = shape[d];
        if (role == ROLE_IN && (dense == 0 || (dense == 2 && d < ndim - 1)) && chance(8)) {
            t->stride[d] = 0;
            continue;
        }
        t->stride[d] = run;
        run *= shape[d] + ((dense != 1 && chance(15)) ? rint_in(1, 2) : 0);
        if (run == 0) run = 1;
        if (dense == 1 && shape[d] <= 1 && chance(30)) t->stride[d] = rint_in(0, 7); /* free at size 1 */
    }
    int64_t extent = 0;
    for (int d = 0; d < ndim; d++) extent += (shape[d] - 1) * t->stride[d];
    size_t bytes = numel(t) == 0 ? 1 : (size_t)(extent + 1) * dsize(dt);
    if (g_nbufs == MAX_BUFS) die("%s%s", "too many buffers", "");
    buf_t *b = &g_bufs[g_nbufs++];
    b->mem = malloc(bytes);
    b->snap = malloc(bytes);
    b->after = malloc(bytes);
    b->bytes = bytes;
    if (!b->mem || !b->snap || !b->after) die("%s%s", "out of memory", "");
    if (dt == SSMTP_DTYPE_F32 || dt == SSMTP_DTYPE_F16 || dt == SSMTP_DTYPE_BF16)
        fill_float(b->mem, bytes, dt);
    else
        for (size_t i = 0; i < bytes; i++) b->mem[i] = (unsigned char)rnd();
    t->data = b->mem;
}

static void set_i32(ssmtp_tensor_t *t, int64_t i, int32_t v) { ((int32_t *)t->data)[i * t->stride[0]] = v; }
static int32_t get_i32(const ssmtp_tensor_t *t, int64_t i) { return ((const int32_t *)t->data)[i * t->stride[0]]; }

static void free_bufs(void) {
    for (int i = 0; i < g_nbufs; i++) {
        free(g_bufs[i].mem);
        free(g_bufs[i].snap);
        free(g_bufs[i].after);
    }
    g_nbufs = 0;
}
static void snapshot(void) {
    for (int i = 0; i < g_nbufs; i++) memcpy(g_bufs[i].snap, g_bufs[i].mem, g_bufs[i].bytes);
}
static int unchanged(void) {
    for (int i = 0; i < g_nbufs; i++)
        if (memcmp(g_bufs[i].snap, g_bufs[i].mem, g_bufs[i].bytes)) return 0;
    return 1;
}
static void keep_after_restore(void) {
    for (int i = 0; i < g_nbufs; i++) {
        memcpy(g_bufs[i].after, g_bufs[i].mem, g_bufs[i].bytes);
        memcpy(g_bufs[i].mem, g_bufs[i].snap, g_bufs[i].bytes);
    }
}
static int same_as_after(void) {
    for (int i = 0; i < g_nbufs; i++)
        if (memcmp(g_bufs[i].after, g_bufs[i].mem, g_bufs[i].bytes)) return 0;
    return 1;
}

static int32_t float_dtype(void) {
    const int32_t f[] = {SSMTP_DTYPE_F32, SSMTP_DTYPE_F16, SSMTP_DTYPE_BF16};
    return f[rnd() % 3];
}

/* ---------------------------------------------------------------------------------------------------- mutations */

/* The tensors of one call, for the generic mutations. */
typedef struct {
    ssmtp_tensor_t *t;
    const char *name;
    int required;
    int free_dims;  /* bit d: dim d is defined by this tensor alone (changing it need not be invalid) */
    int any_float;  /* dtype may be any float dtype (x, D, dt_bias): mutate to a non-float one */
    int contiguous; /* the op requires a contiguous innermost dim on the CPU too */
} slot_t;

static const int32_t BAD_DTYPES[] = {8, 9, 42, -1, -100, 0x7fffffff};

/* Break one present tensor so that the call is invalid for certain. Returns 0 when nothing applicable was found. */
static int mutate_generic(slot_t *s, int n, char *what, size_t wn) {
    for (int tries = 0; tries < 20; tries++) {
        slot_t *c = &s[rnd() % (unsigned)n];
        ssmtp_tensor_t *t = c->t;
        if (!t->data) continue;
        const int nd = t->ndim, d = nd > 0 ? (int)(rnd() % (unsigned)nd) : 0;
        switch (rnd() % 9) {
        case 0:
            if (!c->required) break;
            t->data = NULL;
            snprintf(what, wn, "%s=NULL", c->name);
            return 1;
        case 1: {
            const int32_t alt[] = {-1, 0, nd - 1, nd + 1, 6, 100, -2147483647 - 1};
            int32_t v = alt[rnd() % 7];
            if (v == nd) break;
            t->ndim = v;
            snprintf(what, wn, "%s.ndim=%d", c->name, (int)v);
            return 1;
        }
        case 2:
            if (chance(50)) {
                t->dtype = BAD_DTYPES[rnd() % 6];
            } else {
                int32_t v = (int32_t)rint_in(0, 7);
                const int isfloat = v <= SSMTP_DTYPE_BF16;
                if (v == t->dtype || (c->any_float && isfloat)) break;
                if (!strcmp(c->name, "q") && (v == SSMTP_DTYPE_I8 || v == SSMTP_DTYPE_F8E4M3)) break; /* both valid */
                t->dtype = v;
            }
            snprintf(what, wn, "%s.dtype=%d", c->name, (int)t->dtype);
            return 1;
        case 3:
            if (nd < 1) break;
            t->shape[d] = chance(50) ? -1 : INT64_MIN;
            snprintf(what, wn, "%s.shape[%d]=%lld", c->name, d, (long long)t->shape[d]);
            return 1;
        case 4: {
            if (nd < 1 || (c->free_dims >> d) & 1) break;
            const int64_t alt[] = {t->shape[d] + 1, t->shape[d] + 3, t->shape[d] - 1, (int64_t)1 << 40, INT64_MAX};
            int64_t v = alt[rnd() % 5];
            if (v < 0 || v == t->shape[d]) break;
            t->shape[d] = v;
            snprintf(what, wn, "%s.shape[%d]=%lld", c->name, d, (long long)v);
            return 1;
        }
        case 5:
            if (nd < 1) break;
            t->stride[d] = chance(50) ? -1 : INT64_MIN;
            snprintf(what, wn, "%s.stride[%d]=%lld", c->name, d, (long long)t->stride[d]);
            return 1;
        case 6: /* an extent past the address space: only invalid when the tensor has elements */
            if (nd < 1 || t->shape[d] < 2 || numel(t) == 0) break;
            t->stride[d] = chance(50) ? INT64_MAX / 2 : INT64_MAX;
            snprintf(what, wn, "%s.stride[%d]=%lld", c->name, d, (long long)t->stride[d]);
            return 1;
        case 7:
            t->device = chance(50) ? 0 : (chance(50) ? -2 : -2147483647 - 1);
            if (t->device == 0) { /* all others on CUDA too, half of the time: not built / unsupported */
                if (chance(50))
                    for (int i = 0; i < n; i++) s[i].t->device = 0;
                else {
                    int others = 0;
                    for (int i = 0; i < n; i++) others += s[i].t != t && s[i].t->data != NULL;
                    if (!others) break;
                }
            }
            snprintf(what, wn, "%s.device=%d", c->name, (int)t->device);
            return 1;
        case 8:
            if (!c->contiguous || nd < 1 || t->shape[nd - 1] < 2 || !numel(t)) break;
            t->stride[nd - 1] = 2;
            snprintf(what, wn, "%s innermost stride 2", c->name);
            return 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- ops */

typedef struct {
    const char *op;     /* prefix expected in the message */
    slot_t s[16];
    int ns;
} call_t;

static void add(call_t *c, ssmtp_tensor_t *t, const char *name, int required, int free_dims, int any_float,
                int contiguous) {
    c->s[c->ns++] = (slot_t){t, name, required, free_dims, any_float, contiguous};
}

/* Fill an index vector: slots in -1..nslots-1 (distinct non-negative ones), lengths in 0..len. */
static void fill_slots(ssmtp_tensor_t *idx, int64_t batch, int64_t nslots) {
    int64_t next = rint_in(0, nslots > 0 ? nslots - 1 : 0);
    for (int64_t b = 0; b < batch; b++) {
        int32_t v = chance(20) ? -1 : (int32_t)((next + b) % nslots);
        set_i32(idx, b, v);
    }
}
static void fill_lens(ssmtp_tensor_t *lens, int64_t batch, int64_t len) {
    for (int64_t b = 0; b < batch; b++) set_i32(lens, b, (int32_t)rint_in(chance(80) ? (len > 0) : 0, len));
}

/* Index-value mutations shared by the ops (state_idx out of range, seq_lens out of range). */
static int mutate_indices(ssmtp_tensor_t *idx, ssmtp_tensor_t *lens, int64_t batch, int64_t nslots, int64_t len,
                          char *what, size_t wn) {
    if (batch < 1) return 0;
    const int64_t b = rint_in(0, batch - 1);
    if (idx && idx->data && chance(50)) {
        const int64_t alt[] = {nslots, nslots + 1, 0x7fffffff};
        set_i32(idx, b, (int32_t)alt[rnd() % 3]);
        snprintf(what, wn, "state_idx[%lld]=%d (nslots %lld)", (long long)b, (int)get_i32(idx, b), (long long)nslots);
        return 1;
    }
    if (lens && lens->data) {
        const int64_t alt[] = {len + 1, -1, -2147483647 - 1, 0x7fffffff};
        int64_t v = alt[rnd() % 4];
        set_i32(lens, b, (int32_t)v);
        snprintf(what, wn, "seq_lens[%lld]=%lld (len %lld)", (long long)b, (long long)v, (long long)len);
        return 1;
    }
    return 0;
}


/* Intermediate-state saves (conv1d, scan): (batch, nsave) int32 positions and slots, valid by construction: per row
 * ascending positions in 1..n, holes (-1), slots no row of the call uses. Returns 1 when saves were made. */
static int32_t *at2(ssmtp_tensor_t *t, int64_t i, int64_t j) {
    return (int32_t *)t->data + i * t->stride[0] + j * t->stride[1];
}
static int64_t row_slot(const ssmtp_tensor_t *idx, int64_t b) { return idx->data ? get_i32(idx, b) : b; }
static int64_t row_len(const ssmtp_tensor_t *lens, int64_t b, int64_t len) { return lens->data ? get_i32(lens, b) : len; }
static int make_saves(ssmtp_tensor_t *pos, ssmtp_tensor_t *sidx, int64_t batch, int64_t nslots,
                      const ssmtp_tensor_t *idx, const ssmtp_tensor_t *lens, int64_t len) {
    const int64_t nsave = rint_in(0, 4);
    mk(pos, SSMTP_DTYPE_I32, 2, (int64_t[]){batch, nsave}, ROLE_OUT, 0);
    mk(sidx, SSMTP_DTYPE_I32, 2, (int64_t[]){batch, nsave}, ROLE_OUT, 0);
    int32_t spare[8];
    int nspare = 0;
    for (int64_t sv = 0; sv < nslots && nspare < 8; sv++) {
        int used = 0;
        for (int64_t b = 0; b < batch; b++) used |= row_slot(idx, b) == sv;
        if (!used) spare[nspare++] = (int32_t)sv;
    }
    for (int64_t b = 0; b < batch; b++) {
        const int64_t n = row_len(lens, b, len);
        int64_t p = 0;
        for (int64_t j = 0; j < nsave; j++) {
            *at2(pos, b, j) = (int32_t)rint_in(-2, 9);
            *at2(sidx, b, j) = -1;
            if (nspare == 0 || p >= n || chance(25)) continue;
            p = rint_in(p + 1, n);
            *at2(pos, b, j) = (int32_t)p;
            *at2(sidx, b, j) = spare[rnd() % (uint64_t)nspare];
        }
    }
    return 1;
}
/* Break the saves of a row that has a slot (padding rows are not checked). */
static int mutate_saves(ssmtp_tensor_t *pos, ssmtp_tensor_t *sidx, int64_t batch, int64_t nslots,
                        const ssmtp_tensor_t *idx, const ssmtp_tensor_t *lens, int64_t len, char *what, size_t wn) {
    if (!pos->data) return 0;
    if (chance(20)) {
        sidx->data = NULL;
        snprintf(what, wn, "save_pos without save_idx");
        return 1;
    }
    const int64_t nsave = pos->shape[1];
    for (int64_t b = 0; b < batch && nsave > 0; b++) {
        const int64_t own = row_slot(idx, b), n = row_len(lens, b, len);
        if (own < 0) continue;
        const int64_t j = rint_in(0, nsave - 1);
        switch (rnd() % 4) {
        case 0: *at2(sidx, b, j) = (int32_t)nslots; *at2(pos, b, j) = 1; break;
        case 1: *at2(sidx, b, j) = (int32_t)own; *at2(pos, b, j) = 1; break;
        case 2: *at2(sidx, b, j) = 0; *at2(pos, b, j) = chance(50) ? 0 : (int32_t)(n + 1); break;
        default:
            if (nsave < 2) return 0;
            *at2(sidx, b, 0) = *at2(sidx, b, 1) = (int32_t)(own == 0 ? 1 : 0);
            *at2(pos, b, 0) = *at2(pos, b, 1) = 1;
            break;
        }
        snprintf(what, wn, "bad save in row %lld", (long long)b);
        return 1;
    }
    return 0;
}

static ssmtp_conv1d_params_t g_conv;
static ssmtp_scan_params_t g_scan;
static ssmtp_tensor_t g_dt_proj; /* the step's optional fused dt_proj (the scan has none) */
static ssmtp_ssd_params_t g_ssd;
static ssmtp_quant_params_t g_quant;

static void prep_conv1d(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_conv, 0, sizeof g_conv);
    const int32_t dt = float_dtype();
    const int64_t batch = rint_in(0, 3), dim = rint_in(0, 6), len = rint_in(0, 9), width = rint_in(2, 4);
    const int alias = chance(10);
    mk(&g_conv.x, dt, 3, (int64_t[]){batch, dim, len}, alias ? ROLE_OUT : ROLE_IN, 0);
    mk(&g_conv.weight, dt, 2, (int64_t[]){dim, width}, ROLE_IN, 0);
    if (chance(50)) mk(&g_conv.bias, dt, 1, (int64_t[]){dim}, ROLE_IN, 0);
    int64_t nslots = 0, slen = 0;
    if (chance(70)) {
        const int with_idx = chance(60);
        nslots = with_idx ? rint_in(1, 4) : batch + rint_in(0, 2);
        slen = chance(3) ? 256 : width - 1 + rint_in(0, 3);
        if (slen == 256 && dim * nslots > 8) slen = width - 1; /* keep buffers small */
        mk(&g_conv.state, dt, 3, (int64_t[]){nslots, dim, slen}, ROLE_OUT, 0);
        g_conv.load_state = chance(60);
        if (with_idx) {
            mk(&g_conv.state_idx, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
            fill_slots(&g_conv.state_idx, batch, nslots);
        }
    }
    if (chance(40)) {
        mk(&g_conv.seq_lens, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
        fill_lens(&g_conv.seq_lens, batch, len);
    }
    if (g_conv.state.data && chance(40))
        make_saves(&g_conv.save_pos, &g_conv.save_idx, batch, nslots, &g_conv.state_idx, &g_conv.seq_lens, len);
    if (alias)
        g_conv.out = g_conv.x;
    else
        mk(&g_conv.out, dt, 3, (int64_t[]){batch, dim, len}, ROLE_OUT, 0);
    g_conv.silu = (int32_t)rint_in(0, 1);
    add(c, &g_conv.x, "x", 1, 0, 1, 0);
    add(c, &g_conv.weight, "weight", 1, 2, 0, 0);
    add(c, &g_conv.bias, "bias", 0, 0, 0, 0);
    add(c, &g_conv.state, "state", 0, 1 | 4, 0, 0);
    add(c, &g_conv.state_idx, "state_idx", 0, 0, 0, 0);
    add(c, &g_conv.seq_lens, "seq_lens", 0, 0, 0, 0);
    if (!alias) add(c, &g_conv.out, "out", 1, 0, 0, 0);
    add(c, &g_conv.save_pos, "save_pos", 0, 0, 0, 0);
    add(c, &g_conv.save_idx, "save_idx", 0, 0, 0, 0);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 9) {
            case 8:
                ok = mutate_saves(&g_conv.save_pos, &g_conv.save_idx, batch, nslots, &g_conv.state_idx,
                                  &g_conv.seq_lens, len, what, wn);
                break;
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1: {
                const int64_t alt[] = {0, 1, 5, (int64_t)1 << 40};
                g_conv.weight.shape[1] = alt[rnd() % 4];
                snprintf(what, wn, "width=%lld", (long long)g_conv.weight.shape[1]);
                ok = 1;
                break;
            }
            case 2:
                if (!g_conv.state.data) break;
                g_conv.state.shape[2] = chance(50) ? width - 2 : 300;
                snprintf(what, wn, "state_len=%lld (width %lld)", (long long)g_conv.state.shape[2], (long long)width);
                ok = 1;
                break;
            case 3:
                g_conv.state.data = NULL;
                g_conv.state_idx.data = NULL;
                g_conv.load_state = 1;
                snprintf(what, wn, "load_state=1 without state");
                ok = 1;
                break;
            case 4:
                if (!g_conv.state_idx.data) break;
                g_conv.state.data = NULL;
                snprintf(what, wn, "state_idx without state");
                ok = 1;
                break;
            case 5:
                if (!g_conv.state.data || g_conv.state_idx.data || batch < 1) break;
                g_conv.state.shape[0] = batch - 1;
                snprintf(what, wn, "nslots=%lld < batch, no state_idx", (long long)(batch - 1));
                ok = 1;
                break;
            default:
                ok = mutate_indices(&g_conv.state_idx, &g_conv.seq_lens, batch, nslots, len, what, wn);
                break;
            }
        }
        if (!ok) *invalid = 0;
    }
    (void)slen;
}

/* The scan and the step share their tensors; has_time selects the scan. */
static void prep_scan(call_t *c, int has_time, int *invalid, char *what, size_t wn) {
    memset(&g_scan, 0, sizeof g_scan);
    memset(&g_dt_proj, 0, sizeof g_dt_proj);
    const int32_t dt = float_dtype();
    const int64_t groups = rint_in(1, 3), batch = rint_in(0, 3), dim = groups * rint_in(0, 3);
    const int64_t len = has_time ? rint_in(0, 7) : 1;
    int64_t dstate = chance(5) ? SSMTP_MAX_DSTATE : rint_in(1, 9);
    if (dstate == SSMTP_MAX_DSTATE && batch * groups * len > 12) dstate = 5;
    const int nd = has_time ? 3 : 2;
    const int64_t xs[3] = {batch, dim, len}, bs[4] = {batch, groups, dstate, len};
    mk(&g_scan.x, dt, nd, xs, ROLE_IN, 0);
    if (!has_time && chance(40)) { /* the step with dt_proj (dim, R) fused: dt is (batch, R) or (batch, groups, R) */
        const int64_t R = rint_in(0, 5);
        mk(&g_dt_proj, dt, 2, (int64_t[]){dim, R}, ROLE_IN, 0);
        if (R != groups && chance(50)) /* (R == groups: dropping the last dim would be a valid (batch, R) dt) */
            mk(&g_scan.dt, dt, 3, (int64_t[]){batch, groups, R}, ROLE_IN, 0);
        else
            mk(&g_scan.dt, dt, 2, (int64_t[]){batch, R}, ROLE_IN, 0);
    } else if (!has_time && groups < dim && chance(25)) { /* the step's dt per group of channels: (batch, G, dim / G) */
        /* dim / groups >= 2: dropping the last dim cannot make it a valid (batch, dim) */
        mk(&g_scan.dt, dt, 3, (int64_t[]){batch, groups, dim / groups}, ROLE_IN, 0);
    } else {
        mk(&g_scan.dt, dt, nd, xs, ROLE_IN, 0);
    }
    mk(&g_scan.A, SSMTP_DTYPE_F32, 2, (int64_t[]){dim, dstate}, ROLE_IN, 0);
    mk(&g_scan.B, dt, nd + 1, bs, ROLE_IN, 0);
    mk(&g_scan.C, dt, nd + 1, bs, ROLE_IN, 0);
    if (chance(60)) mk(&g_scan.D, chance(50) ? SSMTP_DTYPE_F32 : dt, 1, (int64_t[]){dim}, ROLE_IN, 0);
    if (chance(50)) mk(&g_scan.z, dt, nd, xs, ROLE_IN, 0);
    if (chance(60)) mk(&g_scan.dt_bias, chance(50) ? SSMTP_DTYPE_F32 : dt, 1, (int64_t[]){dim}, ROLE_IN, 0);
    int64_t nslots = 0;
    if (!has_time || chance(70)) {
        const int with_idx = chance(60);
        nslots = with_idx ? rint_in(1, 4) : batch + rint_in(0, 2);
        mk(&g_scan.state, SSMTP_DTYPE_F32, 3, (int64_t[]){nslots, dim, dstate}, ROLE_OUT, 0);
        g_scan.load_state = has_time ? (int32_t)chance(60) : 1;
        if (with_idx) {
            mk(&g_scan.state_idx, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
            fill_slots(&g_scan.state_idx, batch, nslots);
        }
    }
    if (has_time && chance(40)) {
        mk(&g_scan.seq_lens, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
        fill_lens(&g_scan.seq_lens, batch, len);
    }
    if (has_time && g_scan.state.data && chance(40))
        make_saves(&g_scan.save_pos, &g_scan.save_idx, batch, nslots, &g_scan.state_idx, &g_scan.seq_lens, len);
    mk(&g_scan.out, dt, nd, xs, ROLE_OUT, 0);
    g_scan.dt_softplus = (int32_t)rint_in(0, 1);
    add(c, &g_scan.x, "x", 1, 0, 1, 0);
    add(c, &g_scan.dt, "dt", 1, 0, 0, 0);
    add(c, &g_scan.A, "A", 1, 0, 0, 0);
    add(c, &g_scan.B, "B", 1, 0, 0, 0);
    add(c, &g_scan.C, "C", 1, 0, 0, 0);
    add(c, &g_scan.D, "D", 0, 0, 1, 0);
    add(c, &g_scan.z, "z", 0, 0, 0, 0);
    add(c, &g_scan.dt_bias, "dt_bias", 0, 0, 1, 0);
    add(c, &g_scan.state, "state", !has_time, 1, 0, 0);
    add(c, &g_scan.state_idx, "state_idx", 0, 0, 0, 0);
    if (has_time) add(c, &g_scan.seq_lens, "seq_lens", 0, 0, 0, 0);
    add(c, &g_scan.out, "out", 1, 0, 0, 0);
    if (!has_time) add(c, &g_dt_proj, "dt_proj", 0, 0, 0, 0);
    if (has_time) {
        add(c, &g_scan.save_pos, "save_pos", 0, 0, 0, 0);
        add(c, &g_scan.save_idx, "save_idx", 0, 0, 0, 0);
    }
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 8) {
            case 7:
                ok = mutate_saves(&g_scan.save_pos, &g_scan.save_idx, batch, nslots, &g_scan.state_idx,
                                  &g_scan.seq_lens, len, what, wn);
                break;
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1: {
                const int64_t alt[] = {0, SSMTP_MAX_DSTATE + 1, 300, (int64_t)1 << 40};
                const int64_t v = alt[rnd() % 4];
                g_scan.A.shape[1] = g_scan.B.shape[2] = g_scan.C.shape[2] = g_scan.state.shape[2] = v;
                snprintf(what, wn, "d_state=%lld", (long long)v);
                ok = 1;
                break;
            }
            case 2: {
                const int64_t v = chance(50) || dim == 0 ? 0 : dim + 1;
                g_scan.B.shape[1] = g_scan.C.shape[1] = v;
                snprintf(what, wn, "ngroups=%lld, dim %lld", (long long)v, (long long)dim);
                ok = 1;
                break;
            }
            case 3:
                if (!has_time) break;
                g_scan.state.data = NULL;
                g_scan.state_idx.data = NULL;
                g_scan.load_state = 1;
                snprintf(what, wn, "load_state=1 without state");
                ok = 1;
                break;
            case 4:
                if (!g_scan.state_idx.data) break;
                g_scan.state.data = NULL;
                snprintf(what, wn, "state_idx without state");
                ok = 1;
                break;
            case 5:
                if (!g_scan.state.data || g_scan.state_idx.data || batch < 1) break;
                g_scan.state.shape[0] = batch - 1;
                snprintf(what, wn, "nslots=%lld < batch, no state_idx", (long long)(batch - 1));
                ok = 1;
                break;
            default:
                ok = mutate_indices(&g_scan.state_idx, has_time ? &g_scan.seq_lens : NULL, batch, nslots, len, what, wn);
                break;
            }
        }
        if (!ok) *invalid = 0;
    }
}

static void prep_ssd(call_t *c, int has_time, int *invalid, char *what, size_t wn) {
    memset(&g_ssd, 0, sizeof g_ssd);
    const int32_t dt = float_dtype();
    const int64_t groups = rint_in(1, 2), nheads = groups * rint_in(0, 2), headdim = rint_in(0, 4);
    const int64_t batch = rint_in(0, 3), len = has_time ? rint_in(0, 9) : 1;
    int64_t dstate = chance(5) ? SSMTP_MAX_DSTATE : rint_in(1, 7);
    if (dstate == SSMTP_MAX_DSTATE && batch * groups * len > 12) dstate = 3;
    const int nd = has_time ? 4 : 3;
    const int64_t xs4[4] = {batch, len, nheads, headdim}, xs3[3] = {batch, nheads, headdim};
    const int64_t *xs = has_time ? xs4 : xs3;
    mk(&g_ssd.x, dt, nd, xs, ROLE_IN, 0);
    mk(&g_ssd.dt, dt, nd - 1, has_time ? (int64_t[]){batch, len, nheads} : (int64_t[]){batch, nheads}, ROLE_IN, 0);
    mk(&g_ssd.A, SSMTP_DTYPE_F32, 1, (int64_t[]){nheads}, ROLE_IN, 0);
    const int64_t bs4[4] = {batch, len, groups, dstate}, bs3[3] = {batch, groups, dstate};
    mk(&g_ssd.B, dt, nd, has_time ? bs4 : bs3, ROLE_IN, 0);
    mk(&g_ssd.C, dt, nd, has_time ? bs4 : bs3, ROLE_IN, 0);
    if (chance(60)) mk(&g_ssd.D, chance(50) ? SSMTP_DTYPE_F32 : dt, 1, (int64_t[]){nheads}, ROLE_IN, 0);
    if (chance(50)) mk(&g_ssd.z, dt, nd, xs, ROLE_IN, 0);
    if (chance(60)) mk(&g_ssd.dt_bias, chance(50) ? SSMTP_DTYPE_F32 : dt, 1, (int64_t[]){nheads}, ROLE_IN, 0);
    int64_t nslots = 0;
    if (!has_time || chance(70)) {
        const int with_idx = chance(60);
        nslots = with_idx ? rint_in(1, 4) : batch + rint_in(0, 2);
        mk(&g_ssd.state, SSMTP_DTYPE_F32, 4, (int64_t[]){nslots, nheads, headdim, dstate}, ROLE_OUT, 0);
        g_ssd.load_state = has_time ? (int32_t)chance(60) : 1;
        if (with_idx) {
            mk(&g_ssd.state_idx, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
            fill_slots(&g_ssd.state_idx, batch, nslots);
        }
    }
    if (has_time && chance(40)) {
        mk(&g_ssd.seq_lens, SSMTP_DTYPE_I32, 1, (int64_t[]){batch}, ROLE_OUT, 0);
        fill_lens(&g_ssd.seq_lens, batch, len);
    }
    mk(&g_ssd.out, dt, nd, xs, ROLE_OUT, 0);
    g_ssd.dt_softplus = (int32_t)rint_in(0, 1);
    g_ssd.chunk_size = chance(10) ? 1 << 30 : (int32_t)rint_in(1, 8);
    g_ssd.dt_min = chance(50) ? 0.0f : 1e-3f;
    g_ssd.dt_max = chance(50) ? INFINITY : 0.5f;
    add(c, &g_ssd.x, "x", 1, 0, 1, 0);
    add(c, &g_ssd.dt, "dt", 1, 0, 0, 0);
    add(c, &g_ssd.A, "A", 1, 0, 0, 0);
    add(c, &g_ssd.B, "B", 1, 0, 0, 0);
    add(c, &g_ssd.C, "C", 1, 0, 0, 0);
    add(c, &g_ssd.D, "D", 0, 0, 1, 0);
    add(c, &g_ssd.z, "z", 0, 0, 0, 0);
    add(c, &g_ssd.dt_bias, "dt_bias", 0, 0, 1, 0);
    add(c, &g_ssd.state, "state", !has_time, 1, 0, 0);
    add(c, &g_ssd.state_idx, "state_idx", 0, 0, 0, 0);
    if (has_time) add(c, &g_ssd.seq_lens, "seq_lens", 0, 0, 0, 0);
    add(c, &g_ssd.out, "out", 1, 0, 0, 0);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 8) {
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1: {
                const int64_t alt[] = {0, SSMTP_MAX_DSTATE + 1, (int64_t)1 << 40};
                const int64_t v = alt[rnd() % 3];
                g_ssd.B.shape[nd - 1] = g_ssd.C.shape[nd - 1] = g_ssd.state.shape[3] = v;
                snprintf(what, wn, "d_state=%lld", (long long)v);
                ok = 1;
                break;
            }
            case 2: {
                const int64_t v = chance(50) || nheads == 0 ? 0 : nheads + 1;
                g_ssd.B.shape[nd - 2] = g_ssd.C.shape[nd - 2] = v;
                snprintf(what, wn, "ngroups=%lld, nheads %lld", (long long)v, (long long)nheads);
                ok = 1;
                break;
            }
            case 3:
                if (!has_time) break;
                g_ssd.chunk_size = chance(50) ? 0 : -2147483647 - 1;
                snprintf(what, wn, "chunk_size=%d", (int)g_ssd.chunk_size);
                ok = 1;
                break;
            case 4:
                if (chance(50)) {
                    g_ssd.dt_min = 1.0f;
                    g_ssd.dt_max = 0.5f;
                } else if (chance(50)) {
                    g_ssd.dt_min = NAN;
                } else {
                    g_ssd.dt_max = NAN;
                }
                snprintf(what, wn, "dt_min=%g dt_max=%g", (double)g_ssd.dt_min, (double)g_ssd.dt_max);
                ok = 1;
                break;
            case 5:
                if (!g_ssd.state_idx.data) break;
                g_ssd.state.data = NULL;
                snprintf(what, wn, "state_idx without state");
                ok = 1;
                break;
            case 6:
                if (!g_ssd.state.data || g_ssd.state_idx.data || batch < 1) break;
                g_ssd.state.shape[0] = batch - 1;
                snprintf(what, wn, "nslots=%lld < batch, no state_idx", (long long)(batch - 1));
                ok = 1;
                break;
            default:
                ok = mutate_indices(&g_ssd.state_idx, has_time ? &g_ssd.seq_lens : NULL, batch, nslots, len, what, wn);
                break;
            }
        }
        if (!ok) *invalid = 0;
    }
}

static void prep_quant(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_quant, 0, sizeof g_quant);
    const int64_t n = chance(10) ? 0 : rint_in(1, 700);
    const int32_t block = (int32_t)(32 * rint_in(1, 8));
    const int64_t nb = (n + block - 1) / block;
    mk(&g_quant.x, float_dtype(), 1, (int64_t[]){n}, ROLE_OUT, 1);
    mk(&g_quant.q, chance(50) ? SSMTP_DTYPE_I8 : SSMTP_DTYPE_F8E4M3, 1, (int64_t[]){n}, ROLE_OUT, 1);
    mk(&g_quant.scales, SSMTP_DTYPE_F32, 1, (int64_t[]){nb}, ROLE_OUT, 1);
    g_quant.block = block;
    add(c, &g_quant.x, "x", 1, 0, 1, 1);
    add(c, &g_quant.q, "q", 1, 0, 0, 1);
    add(c, &g_quant.scales, "scales", 1, 0, 0, 1);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 3) {
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1: {
                const int32_t alt[] = {0, 16, 33, 288, 512, -32, -2147483647 - 1, 0x7fffffff};
                g_quant.block = alt[rnd() % 8];
                snprintf(what, wn, "block=%d", (int)g_quant.block);
                ok = 1;
                break;
            }
            default: {
                const int32_t alt[] = {SSMTP_DTYPE_F32, SSMTP_DTYPE_U8, SSMTP_DTYPE_I32, SSMTP_DTYPE_BF16};
                g_quant.q.dtype = alt[rnd() % 4];
                snprintf(what, wn, "q.dtype=%d", (int)g_quant.q.dtype);
                ok = 1;
                break;
            }
            }
        }
        if (!ok) *invalid = 0;
    }
}


#ifdef SSMTP_LINEAR_SMALL_MAX_M
static ssmtp_linear_params_t g_linear;

static void prep_linear(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_linear, 0, sizeof g_linear);
    const int32_t dt = float_dtype();
    const int64_t M = rint_in(0, 4), K = rint_in(0, 9), N = rint_in(0, 6);
    mk(&g_linear.x, dt, 2, (int64_t[]){M, K}, ROLE_IN, 2);
    mk(&g_linear.weight, dt, 2, (int64_t[]){N, K}, ROLE_IN, 1);
    if (chance(50)) mk(&g_linear.bias, dt, 1, (int64_t[]){N}, ROLE_IN, 1);
    /* out: x's dtype, or f32 for 16-bit x (the widened logits); with 16-bit x both float codes are valid there, so
     * its dtype mutations go to non-float codes only */
    const int wide = dt != SSMTP_DTYPE_F32 && chance(30);
    mk(&g_linear.out, wide ? SSMTP_DTYPE_F32 : dt, 2, (int64_t[]){M, N}, ROLE_OUT, 2);
    add(c, &g_linear.x, "x", 1, 0, 1, 1);
    add(c, &g_linear.weight, "weight", 1, 1, 0, 1);
    add(c, &g_linear.bias, "bias", 0, 0, 0, 1);
    add(c, &g_linear.out, "out", 1, 0, dt != SSMTP_DTYPE_F32, 1);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            if (chance(80)) {
                ok = mutate_generic(c->s, c->ns, what, wn);
            } else if (N > 1 && K > 0) { /* weight rows not packed */
                g_linear.weight.stride[0] = K + 1;
                snprintf(what, wn, "weight.stride[0]=%lld (K %lld)", (long long)(K + 1), (long long)K);
                ok = 1;
            }
        }
        if (!ok) *invalid = 0;
    }
}
#define N_OPS 9
#else
#define N_OPS 7
#endif

static ssmtp_attn_params_t g_attn;

static void prep_attention(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_attn, 0, sizeof g_attn);
    const int32_t dt = float_dtype();
    const int64_t B = rint_in(0, 3), nkv = rint_in(1, 3), H = nkv * rint_in(1, 2), S = rint_in(1, 4), T = rint_in(1, 6);
    const int64_t D = chance(5) ? SSMTP_MAX_HEAD_DIM : rint_in(1, 9);
    mk(&g_attn.q, dt, 3, (int64_t[]){B, H, D}, ROLE_IN, 0);
    mk(&g_attn.k, dt, 4, (int64_t[]){S, T, nkv, D}, ROLE_IN, 0);
    mk(&g_attn.v, dt, 4, (int64_t[]){S, T, nkv, D}, ROLE_IN, 0);
    mk(&g_attn.state_idx, SSMTP_DTYPE_I32, 1, (int64_t[]){B}, ROLE_OUT, 0);
    fill_slots(&g_attn.state_idx, B, S);
    mk(&g_attn.lengths, SSMTP_DTYPE_I32, 1, (int64_t[]){B}, ROLE_OUT, 0);
    for (int64_t b = 0; b < B; b++) set_i32(&g_attn.lengths, b, (int32_t)rint_in(1, T));
    mk(&g_attn.out, dt, 3, (int64_t[]){B, H, D}, ROLE_OUT, 0);
    g_attn.scale = rfloat();
    add(c, &g_attn.q, "q", 1, 0, 1, 0);
    add(c, &g_attn.k, "k", 1, 1 | 2, 0, 0);
    add(c, &g_attn.v, "v", 1, 0, 0, 0);
    add(c, &g_attn.state_idx, "state_idx", 1, 0, 0, 0);
    add(c, &g_attn.lengths, "lengths", 1, 0, 0, 0);
    add(c, &g_attn.out, "out", 1, 0, 0, 0);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            const int64_t b = B > 0 ? rint_in(0, B - 1) : 0;
            switch (rnd() % 4) {
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1:
                if (B == 0) break;
                set_i32(&g_attn.state_idx, b, (int32_t)(S + rint_in(0, 3)));
                snprintf(what, wn, "state_idx[%lld] >= nslots %lld", (long long)b, (long long)S);
                ok = 1;
                break;
            case 2:
                if (B == 0 || get_i32(&g_attn.state_idx, b) < 0) break;
                set_i32(&g_attn.lengths, b, chance(50) ? 0 : (int32_t)(T + 1));
                snprintf(what, wn, "lengths[%lld] outside 1..%lld", (long long)b, (long long)T);
                ok = 1;
                break;
            default:
                if (H < 2) break;
                g_attn.k.shape[2] = g_attn.v.shape[2] = H + 1;
                snprintf(what, wn, "nkv=%lld > nheads %lld", (long long)(H + 1), (long long)H);
                ok = 1;
                break;
            }
        }
        if (!ok) *invalid = 0;
    }
}

#ifdef SSMTP_DECODE_IN_MAX_M
static ssmtp_decode_in_params_t g_dec;

static void prep_decode_in(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_dec, 0, sizeof g_dec);
    const int32_t ty = float_dtype();
    const int64_t M = rint_in(0, 5), H = rint_in(0, 9), dl = rint_in(0, 5), W = rint_in(2, 4);
    const int with_idx = chance(60);
    const int64_t nslots = with_idx ? rint_in(1, 4) : M + rint_in(0, 2), S = W - 1 + rint_in(0, 3);
    mk(&g_dec.res, chance(50) ? SSMTP_DTYPE_F32 : ty, 2, (int64_t[]){M, H}, ROLE_IN, 2);
    if (chance(60)) mk(&g_dec.add, ty, 2, (int64_t[]){M, H}, ROLE_IN, 2);
    mk(&g_dec.res_out, chance(50) ? SSMTP_DTYPE_F32 : ty, 2, (int64_t[]){M, H}, ROLE_OUT, 2);
    mk(&g_dec.norm_w, ty, 1, (int64_t[]){H}, ROLE_IN, 0);
    mk(&g_dec.weight, ty, 2, (int64_t[]){2 * dl, H}, ROLE_IN, 1);
    if (chance(50)) mk(&g_dec.bias, ty, 1, (int64_t[]){2 * dl}, ROLE_IN, 0);
    mk(&g_dec.conv_w, ty, 2, (int64_t[]){dl, W}, ROLE_IN, 0);
    if (chance(50)) mk(&g_dec.conv_b, ty, 1, (int64_t[]){dl}, ROLE_IN, 0);
    mk(&g_dec.conv_state, ty, 3, (int64_t[]){nslots, dl, S}, ROLE_OUT, 0);
    if (with_idx) {
        mk(&g_dec.state_idx, SSMTP_DTYPE_I32, 1, (int64_t[]){M}, ROLE_OUT, 0);
        fill_slots(&g_dec.state_idx, M, nslots);
    }
    mk(&g_dec.xc, ty, 2, (int64_t[]){M, dl}, ROLE_OUT, 2);
    mk(&g_dec.z, ty, 2, (int64_t[]){M, dl}, ROLE_OUT, 2);
    g_dec.eps = chance(90) ? 1e-5f : rfloat();
    g_dec.conv_lo = rint_in(0, dl); /* conv rows [conv_lo, conv_lo + dl) of 2 dl, z the others */
    add(c, &g_dec.res, "res", 1, 0, 1, 1); /* f32 or T: only a non-float dtype is wrong for certain */
    add(c, &g_dec.add, "add", 0, 0, 0, 1);
    add(c, &g_dec.res_out, "res_out", 1, 0, 1, 1);
    add(c, &g_dec.norm_w, "norm_w", 1, 0, 0, 0);
    add(c, &g_dec.weight, "weight", 1, 0, 0, 1);
    add(c, &g_dec.bias, "bias", 0, 0, 0, 0);
    add(c, &g_dec.conv_w, "conv_w", 1, 2, 0, 0);
    add(c, &g_dec.conv_b, "conv_b", 0, 0, 0, 0);
    add(c, &g_dec.conv_state, "conv_state", 1, 1 | 4, 0, 0);
    add(c, &g_dec.state_idx, "state_idx", 0, 0, 0, 0);
    add(c, &g_dec.xc, "xc", 1, 0, 0, 1);
    add(c, &g_dec.z, "z", 1, 0, 0, 1);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 6) {
            case 0: ok = mutate_generic(c->s, c->ns, what, wn); break;
            case 1: {
                const int64_t alt[] = {0, 1, 5, (int64_t)1 << 40};
                g_dec.conv_w.shape[1] = alt[rnd() % 4];
                snprintf(what, wn, "width=%lld", (long long)g_dec.conv_w.shape[1]);
                ok = 1;
                break;
            }
            case 2:
                g_dec.conv_state.shape[2] = W - 2;
                snprintf(what, wn, "conv state length %lld (width %lld)", (long long)(W - 2), (long long)W);
                ok = 1;
                break;
            case 3:
                if (chance(50)) {
                    g_dec.weight.shape[0] = 2 * dl + 1;
                    snprintf(what, wn, "weight rows %lld (z has %lld columns)", (long long)(2 * dl + 1), (long long)dl);
                } else {
                    g_dec.conv_lo = chance(50) ? dl + 1 : -1;
                    snprintf(what, wn, "conv_lo=%lld (conv rows past the weight's)", (long long)g_dec.conv_lo);
                }
                ok = 1;
                break;
            case 4:
                if (with_idx || M < 1) break;
                g_dec.conv_state.shape[0] = M - 1;
                snprintf(what, wn, "nslots=%lld < M, no state_idx", (long long)(M - 1));
                ok = 1;
                break;
            default: ok = mutate_indices(&g_dec.state_idx, NULL, M, nslots, 1, what, wn); break;
            }
        }
        if (!ok) *invalid = 0;
    }
}
#undef N_OPS
#define N_OPS 10
#endif

static ssmtp_gated_norm_params_t g_gnorm;

static void prep_gated_norm(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_gnorm, 0, sizeof g_gnorm);
    const int32_t dt = float_dtype();
    const int64_t M = rint_in(0, 3), G = rint_in(1, 4), D = G * rint_in(0, 3);
    mk(&g_gnorm.y, dt, 2, (int64_t[]){M, D}, ROLE_IN, 2);
    mk(&g_gnorm.gate, dt, 2, (int64_t[]){M, D}, ROLE_IN, 2);
    mk(&g_gnorm.weight, dt, 1, (int64_t[]){D}, ROLE_IN, 1);
    mk(&g_gnorm.out, dt, 2, (int64_t[]){M, D}, ROLE_OUT, 2);
    g_gnorm.group = G;
    g_gnorm.eps = chance(90) ? 1e-5f : (float)rint_in(0, 3);
    add(c, &g_gnorm.y, "y", 1, 0, 0, 1);
    add(c, &g_gnorm.gate, "gate", 1, 0, 0, 1);
    add(c, &g_gnorm.weight, "weight", 1, 0, 0, 1);
    add(c, &g_gnorm.out, "out", 1, 0, 0, 1);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            switch (rnd() % 4) {
            case 0: { /* a group that does not divide D (or < 1) */
                const int64_t alt[] = {0, -1, D + 1, INT64_MIN};
                const int64_t v = alt[rnd() % 4];
                if (v >= 1 && D % v == 0) break;
                g_gnorm.group = v;
                snprintf(what, wn, "group=%lld (D %lld)", (long long)v, (long long)D);
                ok = 1;
                break;
            }
            case 1:
                g_gnorm.eps = chance(50) ? -1e-5f : (chance(50) ? NAN : INFINITY);
                snprintf(what, wn, "eps=%g", (double)g_gnorm.eps);
                ok = 1;
                break;
            default: ok = mutate_generic(c->s, c->ns, what, wn); break;
            }
        }
        if (!ok) *invalid = 0;
    }
}

static ssmtp_argmax_params_t g_argmax;

/* The greedy token per row: logits (n, V) of a float dtype with a unit innermost stride, out (n,) int64. */
static void prep_argmax(call_t *c, int *invalid, char *what, size_t wn) {
    memset(&g_argmax, 0, sizeof g_argmax);
    const int64_t n = rint_in(0, 4), V = rint_in(1, 9);
    mk(&g_argmax.logits, float_dtype(), 2, (int64_t[]){n, V}, ROLE_IN, 2);
    mk(&g_argmax.out, SSMTP_DTYPE_I64, 1, (int64_t[]){n}, ROLE_OUT, 0);
    add(c, &g_argmax.logits, "logits", 1, 2, 1, 1);
    add(c, &g_argmax.out, "out", 1, 0, 0, 0);
    *invalid = chance(75);
    if (*invalid) {
        int ok = 0;
        for (int k = 0; k < 10 && !ok; k++) {
            if (chance(85)) {
                ok = mutate_generic(c->s, c->ns, what, wn);
            } else if (n > 0) { /* a row without columns */
                g_argmax.logits.shape[1] = 0;
                snprintf(what, wn, "logits.shape[1]=0 (n %lld)", (long long)n);
                ok = 1;
            }
        }
        if (!ok) *invalid = 0;
    }
}
#undef N_OPS
#define N_OPS 12

static const char *const OPS[] = {"conv1d_fwd", "scan_fwd", "step_fwd", "ssd_fwd", "ssd_step", "quantize",
                                  "dequantize", "linear_small", "decode_attention", "mamba_decode_in", "gated_norm",
                                  "argmax"};

static ssmtp_status_t call_op(int which, void *stream) {
    switch (which) {
    case 0: return ssmtp_conv1d_fwd(&g_conv, stream);
    case 1: return ssmtp_scan_fwd(&g_scan, stream);
    case 2: {
        ssmtp_step_params_t q;
        memset(&q, 0, sizeof q);
        const ssmtp_scan_params_t *p = &g_scan;
        q.x = p->x, q.dt = p->dt, q.A = p->A, q.B = p->B, q.C = p->C, q.D = p->D, q.z = p->z;
        q.dt_bias = p->dt_bias, q.state = p->state, q.state_idx = p->state_idx, q.out = p->out;
        q.dt_proj = g_dt_proj;
        q.dt_softplus = p->dt_softplus;
        return ssmtp_step_fwd(&q, stream);
    }
    case 3: return ssmtp_ssd_fwd(&g_ssd, stream);
    case 4: {
        ssmtp_ssd_step_params_t q;
        memset(&q, 0, sizeof q);
        const ssmtp_ssd_params_t *p = &g_ssd;
        q.x = p->x, q.dt = p->dt, q.A = p->A, q.B = p->B, q.C = p->C, q.D = p->D, q.z = p->z;
        q.dt_bias = p->dt_bias, q.state = p->state, q.state_idx = p->state_idx, q.out = p->out;
        q.dt_softplus = p->dt_softplus, q.dt_min = p->dt_min, q.dt_max = p->dt_max;
        return ssmtp_ssd_step(&q, stream);
    }
    case 5: return ssmtp_quantize(&g_quant, stream);
#ifdef SSMTP_LINEAR_SMALL_MAX_M
    case 7: return ssmtp_linear_small(&g_linear, stream);
    case 8: return ssmtp_decode_attention(&g_attn, stream);
#endif
#ifdef SSMTP_DECODE_IN_MAX_M
    case 9: return ssmtp_mamba_decode_in(&g_dec, stream);
#endif
    case 10: return ssmtp_gated_norm(&g_gnorm, stream);
    case 11: return ssmtp_argmax(&g_argmax, stream);
    default: return ssmtp_dequantize(&g_quant, stream);
    }
}

static uint64_t g_count[N_OPS][2], g_status[8];

static void check_error(ssmtp_status_t st, const char *prefix) {
    if (st == SSMTP_OK) die("an invalid call returned SSMTP_OK (%s%s)", g_call, "");
    if ((int)st < 0 || (int)st > SSMTP_ERR_NOMEM) die("status %s out of range%s", "?", "");
    const char *msg = ssmtp_last_error();
    if (!msg || !msg[0]) die("error status without a message%s%s", "", "");
    if (prefix && strncmp(msg, prefix, strlen(prefix)))
        die("message '%s' does not start with '%s'", msg, prefix);
    g_status[st]++;
}

static void one_op(int which) {
    call_t c;
    memset(&c, 0, sizeof c);
    c.op = OPS[which];
    char what[160] = "valid";
    int invalid = 0;
    switch (which) {
    case 0: prep_conv1d(&c, &invalid, what, sizeof what); break;
    case 1: prep_scan(&c, 1, &invalid, what, sizeof what); break;
    case 2: prep_scan(&c, 0, &invalid, what, sizeof what); break;
    case 3: prep_ssd(&c, 1, &invalid, what, sizeof what); break;
    case 4: prep_ssd(&c, 0, &invalid, what, sizeof what); break;
#ifdef SSMTP_LINEAR_SMALL_MAX_M
    case 7: prep_linear(&c, &invalid, what, sizeof what); break;
    case 8: prep_attention(&c, &invalid, what, sizeof what); break;
#endif
#ifdef SSMTP_DECODE_IN_MAX_M
    case 9: prep_decode_in(&c, &invalid, what, sizeof what); break;
#endif
    case 10: prep_gated_norm(&c, &invalid, what, sizeof what); break;
    case 11: prep_argmax(&c, &invalid, what, sizeof what); break;
    default: prep_quant(&c, &invalid, what, sizeof what); break;
    }
    snprintf(g_call, sizeof g_call, "%s(%s)", c.op, what);
    if (g_verbose) fprintf(stderr, "[%llu] %s\n", (unsigned long long)g_iter, g_call);
    g_count[which][invalid]++;
    snapshot();
    void *stream = (void *)(uintptr_t)rnd(); /* ignored on the CPU: any value */
    ssmtp_status_t st = call_op(which, stream);
    if (invalid) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%s: ", c.op);
        check_error(st, prefix);
        if (!unchanged()) die("a rejected call wrote into a buffer (%s)%s", ssmtp_last_error(), "");
    } else {
        if (st != SSMTP_OK) die("a valid call failed: %s (%s)", ssmtp_last_error(), ssmtp_status_name(st));
        g_status[0]++;
        keep_after_restore(); /* replay on the same inputs: the same bits */
        st = call_op(which, stream);
        if (st != SSMTP_OK) die("the replay failed: %s%s", ssmtp_last_error(), "");
        if (!same_as_after()) die("the replay gave different bits%s%s", "", "");
    }
    free_bufs();
}

/* ---------------------------------------------------------------------------------------------------- comm */

static unsigned char g_fake_handle[256]; /* never dereferenced by a CPU build: every entry stops at its checks */

/* A random descriptor for the communication entry points: data is a dummy pointer (never read by a CPU build of
 * the custom all-reduce), shapes and strides anything. */
static void random_desc(ssmtp_tensor_t *t) {
    memset(t, 0, sizeof *t);
    t->data = chance(90) ? (void *)g_fake_handle : NULL;
    t->dtype = chance(80) ? (int32_t)rint_in(0, 7) : BAD_DTYPES[rnd() % 6];
    t->device = (int32_t)rint_in(-2, 2);
    t->ndim = chance(90) ? (int32_t)rint_in(0, SSMTP_MAX_DIMS) : (int32_t)rint_in(-3, 9);
    int64_t run = 1;
    for (int d = SSMTP_MAX_DIMS - 1; d >= 0; d--) {
        const int64_t big[] = {(int64_t)1 << 31, (int64_t)1 << 40, (int64_t)1 << 62, INT64_MAX, -1};
        t->shape[d] = chance(85) ? rint_in(0, 5) : big[rnd() % 5];
        t->stride[d] = chance(80) ? run : (chance(50) ? -1 : big[rnd() % 5]);
        if (t->shape[d] > 0 && run <= INT64_MAX / t->shape[d]) run *= t->shape[d];
    }
}

static void fuzz_ar(void) {
    ssmtp_ar_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.world_size = (int32_t)rint_in(-1, 10);
    cfg.rank = (int32_t)rint_in(-2, 10);
    cfg.device = (int32_t)rint_in(-3, 3);
    cfg.buffer_bytes = chance(80) ? rint_in(0, 1 << 20) : (chance(50) ? -1 : INT64_MAX);
    cfg.timeout_s = chance(80) ? 1.0 : (chance(50) ? -1.0 : NAN);
    cfg.max_blocks = (int32_t)rint_in(-1, 200);
    cfg.oneshot_max_bytes = chance(80) ? rint_in(0, 1 << 20) : -5;
    ssmtp_ar_t *h = (ssmtp_ar_t *)g_fake_handle, *fake = (ssmtp_ar_t *)g_fake_handle;
    unsigned char buf[2 * SSMTP_AR_IPC_HANDLE_BYTES * SSMTP_AR_MAX_RANKS];
    ssmtp_tensor_t in, out;
    random_desc(&in);
    random_desc(&out);
    if (chance(20)) out = in;
    const int32_t algo = chance(80) ? (int32_t)rint_in(0, 2) : (int32_t)rint_in(-5, 9);
    const int32_t qdt = chance(80) ? (int32_t)rint_in(-1, 8) : BAD_DTYPES[rnd() % 6];
    const int32_t block = chance(80) ? (int32_t)(32 << rint_in(0, 3)) : (int32_t)rint_in(-64, 600);
    int64_t elems = 0;
    switch (rnd() % 9) {
    case 0:
        snprintf(g_call, sizeof g_call, "ar_init(ws=%d rank=%d dev=%d)", (int)cfg.world_size, (int)cfg.rank,
                 (int)cfg.device);
        check_error(ssmtp_ar_init(chance(90) ? &h : NULL, chance(90) ? &cfg : NULL), "ar_init: ");
        if (h != fake && h != NULL) die("ar_init failed but left a handle%s%s", "", "");
        break;
    case 1:
        snprintf(g_call, sizeof g_call, "ar_ipc_handle");
        check_error(ssmtp_ar_ipc_handle(chance(80) ? fake : NULL, chance(80) ? (void *)buf : NULL,
                                        chance(50) ? SSMTP_AR_IPC_HANDLE_BYTES : (size_t)rint_in(0, 200)),
                    "ar_ipc_handle: ");
        break;
    case 2:
        snprintf(g_call, sizeof g_call, "ar_open_peers");
        check_error(ssmtp_ar_open_peers(chance(80) ? fake : NULL, chance(80) ? (void *)buf : NULL,
                                        (size_t)rint_in(0, sizeof buf)),
                    "ar_open_peers: ");
        break;
    case 3:
        snprintf(g_call, sizeof g_call, "ar_chunk_elems(dtype=%d q=%d block=%d algo=%d)", (int)in.dtype, (int)qdt,
                 (int)block, (int)algo);
        check_error(ssmtp_ar_chunk_elems(chance(80) ? fake : NULL, in.dtype, qdt, block, algo,
                                         chance(80) ? &elems : NULL),
                    "ar_chunk_elems: ");
        break;
    case 4:
    case 5:
        snprintf(g_call, sizeof g_call, "ar_all_reduce(ndim=%d/%d algo=%d)", (int)in.ndim, (int)out.ndim, (int)algo);
        check_error(ssmtp_ar_all_reduce(chance(80) ? fake : NULL, chance(90) ? &in : NULL, chance(90) ? &out : NULL,
                                        algo, (void *)(uintptr_t)rnd()),
                    "ar_all_reduce: ");
        break;
    case 6:
        snprintf(g_call, sizeof g_call, "ar_quant_all_reduce(q=%d block=%d)", (int)qdt, (int)block);
        check_error(ssmtp_ar_quant_all_reduce(chance(80) ? fake : NULL, chance(90) ? &in : NULL,
                                              chance(90) ? &out : NULL, qdt, block, algo, NULL),
                    "ar_quant_all_reduce: ");
        break;
    case 7:
        snprintf(g_call, sizeof g_call, "ar_check");
        check_error(ssmtp_ar_check(chance(80) ? fake : NULL, (int32_t)rint_in(-1, 2)), "ar_check: ");
        break;
    default:
        snprintf(g_call, sizeof g_call, "ar_free");
        if (ssmtp_ar_free(NULL) != SSMTP_OK) die("ar_free(NULL) failed%s%s", "", "");
        check_error(ssmtp_ar_free(fake), "ar_free: ");
        break;
    }
}

/* NCCL entry points before any library is loaded, and with libraries that are not NCCL. */
static void nccl_unloaded(void) {
    int32_t v = 0;
    uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES];
    ssmtp_nccl_t *c = (ssmtp_nccl_t *)g_fake_handle;
    ssmtp_tensor_t x, out;
    random_desc(&x);
    random_desc(&out);
    snprintf(g_call, sizeof g_call, "nccl before load");
    if (ssmtp_nccl_source() != 0) die("nccl_source != 0 before loading%s%s", "", "");
    check_error(ssmtp_nccl_version(&v), "nccl_version: ");
    check_error(ssmtp_nccl_version(NULL), "nccl_version: ");
    check_error(ssmtp_nccl_unique_id(id), "nccl_unique_id: ");
    check_error(ssmtp_nccl_unique_id(NULL), "nccl_unique_id: ");
    check_error(ssmtp_nccl_comm_wrap(&c, (void *)g_fake_handle), "nccl_comm_wrap: ");
    if (c) die("nccl_comm_wrap failed but left a handle%s%s", "", "");
    check_error(ssmtp_nccl_comm_wrap(NULL, NULL), "nccl_comm_wrap: ");
    check_error(ssmtp_nccl_comm_init(&c, 2, 0, id), "nccl_comm_init: ");
    check_error(ssmtp_nccl_comm_init(&c, 0, 0, id), "nccl_comm_init: ");
    check_error(ssmtp_nccl_comm_init(&c, 2, 0, NULL), "nccl_comm_init: ");
    check_error(ssmtp_nccl_comm_init(NULL, 2, 0, id), "nccl_comm_init: ");
    check_error(ssmtp_nccl_comm_info(NULL, NULL, NULL, NULL), "nccl_comm_info: ");
    if (ssmtp_nccl_comm_free(NULL) != SSMTP_OK) die("nccl_comm_free(NULL) failed%s%s", "", "");
    check_error(ssmtp_nccl_all_reduce((ssmtp_nccl_t *)g_fake_handle, &x, &out, NULL), "nccl_all_reduce: ");
    check_error(ssmtp_nccl_all_reduce(NULL, &x, &out, NULL), "nccl_all_reduce: ");
    check_error(ssmtp_nccl_all_gather((ssmtp_nccl_t *)g_fake_handle, &x, &out, NULL), "nccl_all_gather: ");
    check_error(ssmtp_nccl_all_gather(NULL, NULL, NULL, NULL), "nccl_all_gather: ");
    snprintf(g_call, sizeof g_call, "nccl_load of libraries that are not NCCL");
    check_error(ssmtp_nccl_load(NULL), "nccl_load: ");
    check_error(ssmtp_nccl_load(""), "nccl_load: ");
    check_error(ssmtp_nccl_load("/nonexistent/libnccl.so.2"), "nccl_load: ");
    check_error(ssmtp_nccl_load("libm.so.6"), "nccl_load: ");
    if (ssmtp_nccl_source() != 0) die("nccl_source != 0 after failed loads%s%s", "", "");
}

/* One collective through the stand-in NCCL on a communicator of nranks ranks. */
static void nccl_call(ssmtp_nccl_t *comm, int32_t nranks) {
    const int gather = chance(50);
    const int32_t dts[] = {SSMTP_DTYPE_F32, SSMTP_DTYPE_F16, SSMTP_DTYPE_BF16, SSMTP_DTYPE_I32, SSMTP_DTYPE_I64,
                           SSMTP_DTYPE_I8, SSMTP_DTYPE_U8, SSMTP_DTYPE_F8E4M3};
    const int32_t dt = dts[rnd() % 8];
    const int nd = (int)rint_in(1, 3);
    int64_t shape[3], oshape[3];
    for (int d = 0; d < nd; d++) shape[d] = oshape[d] = chance(5) ? 0 : rint_in(1, 5);
    if (gather) oshape[0] *= nranks;
    ssmtp_tensor_t x, out;
    mk(&x, dt, nd, shape, ROLE_OUT, 1);
    const int inplace = !gather && chance(25);
    if (inplace)
        out = x;
    else
        mk(&out, dt, nd, oshape, ROLE_OUT, 1);
    /* the sum is only defined for wide types; gathers move any bytes */
    int invalid = !gather && (dt == SSMTP_DTYPE_I8 || dt == SSMTP_DTYPE_U8 || dt == SSMTP_DTYPE_F8E4M3);
    char what[96] = "valid";
    if (chance(60)) {
        ssmtp_tensor_t *t = chance(50) || inplace ? &x : &out;
        const int d = (int)(rnd() % (unsigned)nd);
        switch (rnd() % 6) {
        case 0:
            if (t->shape[d] < 2 || !numel(t)) break; /* a tensor without elements is dense whatever its strides */
            t->stride[d] += 1;
            snprintf(what, sizeof what, "stride[%d]+1", d);
            invalid = 1;
            break;
        case 1:
            if (!numel(&x) || !numel(&out)) break;
            out.shape[0] += 1; /* element counts disagree */
            snprintf(what, sizeof what, "out.shape[0]+1");
            invalid = 1;
            break;
        case 2:
            t->dtype = t->dtype == SSMTP_DTYPE_F32 ? SSMTP_DTYPE_I32 : SSMTP_DTYPE_F32;
            if (t->dtype == (t == &x ? out.dtype : x.dtype)) break;
            snprintf(what, sizeof what, "dtype mismatch");
            invalid = 1;
            break;
        case 3:
            t->device = chance(50) ? 0 : -2;
            snprintf(what, sizeof what, "device %d", (int)t->device);
            invalid = 1;
            break;
        case 4:
            t->shape[d] = chance(50) ? -1 : INT64_MIN;
            snprintf(what, sizeof what, "shape[%d]=%lld", d, (long long)t->shape[d]);
            invalid = 1;
            break;
        default:
            t->dtype = BAD_DTYPES[rnd() % 6];
            snprintf(what, sizeof what, "dtype %d", (int)t->dtype);
            invalid = 1;
            break;
        }
    }
    snprintf(g_call, sizeof g_call, "nccl_%s(dtype=%d nranks=%d %s)", gather ? "all_gather" : "all_reduce", (int)dt,
             (int)nranks, what);
    snapshot();
    ssmtp_status_t st = gather ? ssmtp_nccl_all_gather(comm, &x, &out, NULL) : ssmtp_nccl_all_reduce(comm, &x, &out, NULL);
    if (invalid) {
        check_error(st, gather ? "nccl_all_gather: " : "nccl_all_reduce: ");
        if (!unchanged()) die("a rejected collective wrote into a buffer%s%s", "", "");
    } else {
        if (st != SSMTP_OK) die("a valid collective failed: %s (%s)", ssmtp_last_error(), ssmtp_status_name(st));
        const size_t bytes = (size_t)numel(&x) * dsize(dt);
        for (int32_t r = 0; r < (gather ? nranks : 1); r++)
            if (bytes && memcmp((char *)out.data + (size_t)r * bytes, g_bufs[0].snap, bytes))
                die("collective output differs from the input%s%s", "", "");
    }
    free_bufs();
}

static void fuzz_nccl_loaded(int iters) {
    uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES];
    int32_t v = 0;
    snprintf(g_call, sizeof g_call, "nccl setup through the stand-in");
    if (ssmtp_nccl_version(&v) != SSMTP_OK || v != 22809) die("nccl_version: %s%s", ssmtp_last_error(), "");
    if (ssmtp_nccl_unique_id(id) != SSMTP_OK) die("nccl_unique_id: %s%s", ssmtp_last_error(), "");
    ssmtp_nccl_t *c = NULL;
    check_error(ssmtp_nccl_comm_wrap(&c, (void *)g_fake_handle), "nccl_comm_wrap: "); /* not torch's copy */
    for (int i = 0; i < iters; i++) {
        const int32_t nranks = (int32_t)rint_in(-1, 4), rank = (int32_t)rint_in(-1, 4);
        snprintf(g_call, sizeof g_call, "nccl_comm_init(nranks=%d rank=%d)", (int)nranks, (int)rank);
        ssmtp_status_t st = ssmtp_nccl_comm_init(&c, nranks, rank, id);
        if (nranks < 1 || rank < 0 || rank >= nranks) {
            check_error(st, "nccl_comm_init: ");
            if (c) die("nccl_comm_init failed but left a handle%s%s", "", "");
            continue;
        }
        if (st != SSMTP_OK) die("nccl_comm_init: %s%s", ssmtp_last_error(), "");
        int32_t r = -5, n = -5, d = -5;
        if (ssmtp_nccl_comm_info(c, &r, &n, &d) != SSMTP_OK || r != rank || n != nranks || d != -1)
            die("nccl_comm_info disagrees%s%s", "", "");
        ssmtp_nccl_comm_info(c, NULL, NULL, NULL);
        for (int k = 0; k < 8; k++) nccl_call(c, nranks);
        if (ssmtp_nccl_comm_free(c) != SSMTP_OK) die("nccl_comm_free: %s%s", ssmtp_last_error(), "");
        c = NULL;
    }
}

/* ---------------------------------------------------------------------------------------------------- main */

int main(int argc, char **argv) {
    uint64_t iters = 20000;
    double seconds = 0;
    const char *fake_nccl = NULL;
    g_seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc) g_seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) iters = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "-l") && i + 1 < argc) fake_nccl = argv[++i];
        else if (!strcmp(argv[i], "-v")) g_verbose = 1;
        else {
            fprintf(stderr, "usage: %s [-s SEED] [-n ITERS] [-t SECONDS] [-l FAKE_NCCL.so] [-v]\n", argv[0]);
            return 2;
        }
    }
    g_rng = g_seed;
    printf("fuzz_c_api: seed=%llu iters=%llu%s build=%s\n", (unsigned long long)g_seed, (unsigned long long)iters,
           seconds > 0 ? " (time-limited)" : "", ssmtp_build_info());
    if (ssmtp_cuda_built()) {
        fprintf(stderr, "fuzz_c_api: build the core without CUDA (the custom all-reduce calls use fake handles)\n");
        return 2;
    }
    /* the small entry points */
    for (int s = -2; s < 10; s++)
        if (!ssmtp_status_name((ssmtp_status_t)s)[0]) die("empty status name%s%s", "", "");

    nccl_unloaded();
    const clock_t t0 = clock();
    for (g_iter = 0; g_iter < iters; g_iter++) {
        if (seconds > 0 && (g_iter & 63) == 0 && (double)(clock() - t0) / CLOCKS_PER_SEC > seconds) break;
        if (chance(8))
            fuzz_ar();
        else
            one_op((int)(rnd() % N_OPS));
    }
    if (fake_nccl) {
        snprintf(g_call, sizeof g_call, "nccl_load(%s)", fake_nccl);
        if (ssmtp_nccl_load(fake_nccl) != SSMTP_OK) die("loading the stand-in NCCL: %s%s", ssmtp_last_error(), "");
        if (ssmtp_nccl_source() != 2) die("nccl_source != 2 after an explicit path%s%s", "", "");
        if (ssmtp_nccl_load(NULL) != SSMTP_OK) die("a second nccl_load failed%s%s", "", ""); /* already loaded */
        fuzz_nccl_loaded((int)(iters / 50 > 20 ? iters / 50 : 20));
    }
    printf("fuzz_c_api: %llu iterations, all calls behaved\n", (unsigned long long)g_iter);
    for (int i = 0; i < N_OPS; i++)
        printf("  %-11s valid %6llu  invalid %6llu\n", OPS[i], (unsigned long long)g_count[i][0],
               (unsigned long long)g_count[i][1]);
    printf("  statuses:");
    for (int s = 0; s < 8; s++) printf(" %s=%llu", ssmtp_status_name((ssmtp_status_t)s), (unsigned long long)g_status[s]);
    printf("\n");
    return 0;
}
