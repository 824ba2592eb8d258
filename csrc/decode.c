/*
 * decode.c - the fused input half of a Mamba-1 block's decode step (residual add, RMSNorm, in_proj, conv step +
 * SiLU): argument checks, device dispatch and the CPU reference. Semantics: see ssmtp_mamba_decode_in in ssmtp.h.
 *
 * The CPU reference rounds where the unfused ops do (res_out to its dtype, the normed input and its product with the
 * norm weight to T, in_proj's output to T before the conv reads it), so it equals that chain up to summation order:
 * the in_proj dot products and the conv taps are the same loops as linear.c and conv1d.c (bitwise equal), only the
 * RMSNorm's sum of squares may be ordered differently from torch's reduction.
 */
#include "internal.h"

#include <stdlib.h>

#define OP "mamba_decode_in"

/* res and res_out hold the residual stream in fp32 or in T. */
static ssmtp_status_t check_res_dtype(const char *name, const ssmtp_tensor_t *t, int32_t ty) {
    if (t->dtype != SSMTP_DTYPE_F32 && t->dtype != ty)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": %s must be float32 or %s (the dtype of weight), got %s", name,
                          ssmtp_dtype_name(ty), ssmtp_dtype_name(t->dtype));
    return SSMTP_OK;
}

static ssmtp_status_t decode_in_check(const ssmtp_decode_in_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "weight", &p->weight, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "weight", &p->weight));
    const int32_t ty = p->weight.dtype;
    const int64_t n2 = p->weight.shape[0], H = p->weight.shape[1], dl = n2 / 2;
    if (n2 % 2)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": weight has %lld rows; in_proj has 2 x d_inner (x rows, then z rows)",
                          (long long)n2);
    int64_t wnumel;
    SSMTP_TRY(ssmtp_check_dense(OP, "weight", &p->weight, &wnumel));
    SSMTP_TRY(ssmtp_check_tensor(OP, "res", &p->res, 0, 2, -1, (int64_t[]){-1, H}));
    SSMTP_TRY(check_res_dtype("res", &p->res, ty));
    const int64_t M = p->res.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(OP, "add", &p->add, 1, 2, ty, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "res_out", &p->res_out, 0, 2, -1, (int64_t[]){M, H}));
    SSMTP_TRY(check_res_dtype("res_out", &p->res_out, ty));
    SSMTP_TRY(ssmtp_check_tensor(OP, "norm_w", &p->norm_w, 0, 1, ty, (int64_t[]){H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "bias", &p->bias, 1, 1, ty, (int64_t[]){n2}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_w", &p->conv_w, 0, 2, ty, (int64_t[]){dl, -1}));
    const int64_t width = p->conv_w.shape[1];
    if (width < 2 || width > 4)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": conv width=%lld, supported 2..4", (long long)width);
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_b", &p->conv_b, 1, 1, ty, (int64_t[]){dl}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "conv_state", &p->conv_state, 0, 3, ty, (int64_t[]){-1, dl, -1}));
    if (p->conv_state.shape[2] < width - 1)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv_state length %lld < width-1=%lld",
                          (long long)p->conv_state.shape[2], (long long)(width - 1));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state_idx", &p->state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){M}));
    if (!ssmtp_present(&p->state_idx) && p->conv_state.shape[0] < M)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": conv_state has %lld slots < M=%lld rows and no state_idx",
                          (long long)p->conv_state.shape[0], (long long)M);
    SSMTP_TRY(ssmtp_check_tensor(OP, "xc", &p->xc, 0, 2, ty, (int64_t[]){M, dl}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "z", &p->z, 0, 2, ty, (int64_t[]){M, dl}));
    /* rows are read and written as contiguous runs (the CUDA kernel vectorizes along them) */
    const ssmtp_tensor_t *rows[] = {&p->res, &p->add, &p->res_out, &p->xc, &p->z};
    const char *row_names[] = {"res", "add", "res_out", "xc", "z"};
    for (int i = 0; i < 5; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, row_names[i], rows[i]));
    const ssmtp_tensor_t *ts[] = {&p->res,    &p->add,    &p->res_out,    &p->norm_w,    &p->weight, &p->bias,
                                  &p->conv_w, &p->conv_b, &p->conv_state, &p->state_idx, &p->xc,     &p->z};
    const char *names[] = {"res",    "add",    "res_out",    "norm_w",    "weight", "bias",
                           "conv_w", "conv_b", "conv_state", "state_idx", "xc",     "z"};
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 12, device));
    if (*device >= 0) { /* the CUDA kernel reads contiguous parameter vectors, tap rows and state rows (as conv1d's) */
        const ssmtp_tensor_t *inner[] = {&p->norm_w, &p->bias, &p->conv_w, &p->conv_b, &p->conv_state, &p->state_idx};
        const char *inner_names[] = {"norm_w", "bias", "conv_w", "conv_b", "conv_state", "state_idx"};
        for (int i = 0; i < 6; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, inner_names[i], inner[i]));
    }
    return SSMTP_OK;
}

/* What the CUDA kernel takes (ssmtp.h): a few rows, whole 16-byte packs along H, 16-byte aligned weight, res and add.
 * Anything else is a valid call for the unfused ops. */
static ssmtp_status_t decode_in_cuda_layout(const ssmtp_decode_in_params_t *p) {
    const int64_t M = p->res.shape[0], H = p->weight.shape[1];
    const int64_t es = (int64_t)ssmtp_dtype_size(p->weight.dtype);
    if (M < 1 || M > SSMTP_DECODE_IN_MAX_M)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M=%lld rows on CUDA, supported 1..%d", (long long)M,
                          SSMTP_DECODE_IN_MAX_M);
    if ((H * es) % 16)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": H=%lld (%lld bytes a row) on CUDA needs rows of a multiple of "
                          "16 bytes", (long long)H, (long long)(H * es));
    const ssmtp_tensor_t *ts[] = {&p->weight, &p->res, &p->add};
    const char *names[] = {"weight", "res", "add"};
    for (int i = 0; i < 3; i++)
        if (ssmtp_present(ts[i]) && (uintptr_t)ts[i]->data % 16)
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %s on CUDA needs a 16-byte aligned data pointer", names[i]);
    return SSMTP_OK;
}

/* Shift x into the conv history of one channel (conv1d's decode: the last S columns of [state ; x]). */
static void conv_state_push(const ssmtp_tensor_t *st, int64_t so, float x) {
    const int64_t S = st->shape[2], s2 = st->stride[2];
    for (int64_t j = 0; j + 1 < S; j++)
        ssmtp_store(st->data, st->dtype, so + j * s2, ssmtp_load(st->data, st->dtype, so + (j + 1) * s2));
    ssmtp_store(st->data, st->dtype, so + (S - 1) * s2, x);
}

static ssmtp_status_t decode_in_cpu(const ssmtp_decode_in_params_t *p) {
    const int64_t M = p->res.shape[0], H = p->weight.shape[1], dl = p->weight.shape[0] / 2;
    const int64_t width = p->conv_w.shape[1], nslots = p->conv_state.shape[0];
    const int32_t ty = p->weight.dtype;
    const ssmtp_tensor_t *res = &p->res, *add = &p->add, *ro = &p->res_out, *cs = &p->conv_state;
    for (int64_t m = 0; m < M; m++) { /* all slots first: a rejected call changes nothing */
        const int64_t slot = ssmtp_slot_of(&p->state_idx, m);
        if (slot >= nslots)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)m,
                              (long long)slot, (long long)nslots);
    }
    float *h = malloc(sizeof(float) * (size_t)(H > 0 ? H : 1)); /* the normed row, reused by all 2 dl outputs */
    if (!h) return ssmtp_fail(SSMTP_ERR_NOMEM, OP ": no memory for a row of H=%lld floats", (long long)H);
    for (int64_t m = 0; m < M; m++) {
        /* residual add in fp32, stored at res_out's precision; the norm reads it at T's (the model dtype) */
        float ss = 0.0f;
        for (int64_t k = 0; k < H; k++) {
            float r = ssmtp_load(res->data, res->dtype, m * res->stride[0] + k * res->stride[1]);
            if (ssmtp_present(add)) r += ssmtp_load(add->data, ty, m * add->stride[0] + k * add->stride[1]);
            ssmtp_store(ro->data, ro->dtype, m * ro->stride[0] + k * ro->stride[1], r);
            h[k] = ssmtp_round(r, ty);
            ss += h[k] * h[k];
        }
        const float s = H > 0 ? 1.0f / sqrtf(ss / (float)H + p->eps) : 0.0f;
        for (int64_t k = 0; k < H; k++) {
            const float nw = ssmtp_load(p->norm_w.data, ty, k * p->norm_w.stride[0]);
            h[k] = ssmtp_round(nw * ssmtp_round(h[k] * s, ty), ty);
        }
        const int64_t slot = ssmtp_slot_of(&p->state_idx, m);
        for (int64_t j = 0; j < 2 * dl; j++) {
            /* in_proj row j as linear.c computes it: sequential fp32 sum, then the bias, one rounding to T */
            float acc = 0.0f;
            for (int64_t k = 0; k < H; k++) acc += h[k] * ssmtp_load(p->weight.data, ty, j * H + k);
            if (ssmtp_present(&p->bias)) acc += ssmtp_load(p->bias.data, ty, j * p->bias.stride[0]);
            const float xz = ssmtp_round(acc, ty);
            if (j >= dl) {
                ssmtp_store(p->z.data, ty, m * p->z.stride[0] + (j - dl) * p->z.stride[1], xz);
                continue;
            }
            const int64_t xo = m * p->xc.stride[0] + j * p->xc.stride[1];
            if (slot < 0) { /* padding row: its conv state is untouched and its conv output is zero */
                ssmtp_store(p->xc.data, ty, xo, 0.0f);
                continue;
            }
            const int64_t so = slot * cs->stride[0] + j * cs->stride[1];
            float w[4], hist[3], cb;
            ssmtp_conv_channel_load(&p->conv_w, &p->conv_b, cs, j, so, 1, w, hist, &cb);
            ssmtp_store(p->xc.data, ty, xo, ssmtp_silu(ssmtp_conv_tap_sum(w, hist, width, cb, xz)));
            conv_state_push(cs, so, xz);
        }
    }
    free(h);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    int32_t device;
    SSMTP_TRY(decode_in_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return decode_in_cpu(p);
    SSMTP_TRY(decode_in_cuda_layout(p));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_mamba_decode_in(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}

/* ------------------------------------------------------------------------------------------------ mamba_decode_out */

#undef OP
#define OP "mamba_decode_out"

static ssmtp_status_t decode_out_check(const ssmtp_decode_out_params_t *p, int32_t *device) {
    SSMTP_TRY(ssmtp_check_tensor(OP, "xc", &p->xc, 0, 2, -1, NULL));
    SSMTP_TRY(ssmtp_check_float_dtype(OP, "xc", &p->xc));
    const int32_t ty = p->xc.dtype;
    const int64_t M = p->xc.shape[0], dl = p->xc.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(OP, "z", &p->z, 0, 2, ty, (int64_t[]){M, dl}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "dt_proj", &p->dt_proj, 0, 2, ty, (int64_t[]){dl, -1}));
    const int64_t R = p->dt_proj.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(OP, "A", &p->A, 0, 2, SSMTP_DTYPE_F32, (int64_t[]){dl, -1}));
    const int64_t N = p->A.shape[1];
    SSMTP_TRY(ssmtp_check_tensor(OP, "x_proj", &p->x_proj, 0, 2, ty, (int64_t[]){R + 2 * N, dl}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "out_proj", &p->out_proj, 0, 2, ty, (int64_t[]){-1, dl}));
    const int64_t H = p->out_proj.shape[0];
    SSMTP_TRY(ssmtp_check_tensor(OP, "out", &p->out, 0, 2, ty, (int64_t[]){M, H}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state", &p->state, 0, 3, SSMTP_DTYPE_F32, (int64_t[]){-1, dl, N}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "state_idx", &p->state_idx, 1, 1, SSMTP_DTYPE_I32, (int64_t[]){M}));
    SSMTP_TRY(ssmtp_check_tensor(OP, "sync", &p->sync, 1, 1, SSMTP_DTYPE_I32, NULL));
    SSMTP_TRY(ssmtp_check_tensor(OP, "work", &p->work, 1, 1, SSMTP_DTYPE_F32, NULL));
    const ssmtp_tensor_t *par[] = {&p->dt_bias, &p->D};
    const char *par_names[] = {"dt_bias", "D"};
    for (int i = 0; i < 2; i++) {
        SSMTP_TRY(ssmtp_check_tensor(OP, par_names[i], par[i], 1, 1, -1, (int64_t[]){dl}));
        if (ssmtp_present(par[i]) && par[i]->dtype != SSMTP_DTYPE_F32 && par[i]->dtype != ty)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": %s must be float32 or %s (the dtype of xc), got %s",
                              par_names[i], ssmtp_dtype_name(ty), ssmtp_dtype_name(par[i]->dtype));
    }
    if (!ssmtp_present(&p->state_idx) && p->state.shape[0] < M)
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state has %lld slots < M=%lld rows and no state_idx",
                          (long long)p->state.shape[0], (long long)M);
    int64_t n;
    const ssmtp_tensor_t *dense[] = {&p->x_proj, &p->dt_proj, &p->out_proj};
    const char *dense_names[] = {"x_proj", "dt_proj", "out_proj"};
    for (int i = 0; i < 3; i++) SSMTP_TRY(ssmtp_check_dense(OP, dense_names[i], dense[i], &n));
    const ssmtp_tensor_t *rows[] = {&p->xc, &p->z, &p->out, &p->A, &p->state};
    const char *row_names[] = {"xc", "z", "out", "A", "state"};
    for (int i = 0; i < 5; i++) SSMTP_TRY(ssmtp_check_inner_contiguous(OP, row_names[i], rows[i]));
    const ssmtp_tensor_t *ts[] = {&p->xc,    &p->z,         &p->x_proj,   &p->dt_proj, &p->dt_bias, &p->A, &p->D,
                                  &p->state, &p->state_idx, &p->out_proj, &p->out,     &p->sync,    &p->work};
    const char *names[] = {"xc",    "z",         "x_proj",   "dt_proj", "dt_bias", "A",   "D",
                           "state", "state_idx", "out_proj", "out",     "sync",    "work"};
    SSMTP_TRY(ssmtp_check_devices(OP, ts, names, 13, device));
    if (*device >= 0) {
        if (!ssmtp_present(&p->sync) || p->sync.shape[0] < 2 || p->sync.stride[0] != 1 || (uintptr_t)p->sync.data % 8)
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": sync (2 contiguous, 8-byte aligned int32, zero before the first "
                              "call) is required on CUDA");
        const int64_t need = SSMTP_DECODE_OUT_WORK(M, R + 2 * N, dl, (int64_t)ssmtp_dtype_size(ty));
        if (!ssmtp_present(&p->work) || p->work.shape[0] < need || (p->work.shape[0] > 1 && p->work.stride[0] != 1))
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": work (at least %lld contiguous float32) is required on CUDA",
                              (long long)need);
    }
    if (!(p->norm_eps < 0.0f) && !(p->norm_eps >= 0.0f))
        return ssmtp_fail(SSMTP_ERR_INVALID, OP ": norm_eps is NaN");
    return SSMTP_OK;
}

/* A contiguous (d0, d1) tensor descriptor over data. */
static ssmtp_tensor_t dense2(void *data, int32_t dtype, int64_t d0, int64_t d1) {
    ssmtp_tensor_t t = {0};
    t.data = data;
    t.dtype = dtype;
    t.device = SSMTP_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.stride[0] = d1;
    t.stride[1] = 1;
    return t;
}

/* The chain of the unfused ops: linear_small (x_proj), the norms, step_fwd with dt_proj, linear_small (out_proj). */
static ssmtp_status_t decode_out_cpu(const ssmtp_decode_out_params_t *p) {
    const int32_t ty = p->xc.dtype;
    const int64_t M = p->xc.shape[0], dl = p->xc.shape[1], R = p->dt_proj.shape[1], N = p->A.shape[1];
    const int64_t X = R + 2 * N;
    const size_t es = ssmtp_dtype_size(ty);
    for (int64_t m = 0; m < M; m++) { /* all slots first: a rejected call changes nothing */
        const int64_t slot = ssmtp_slot_of(&p->state_idx, m);
        if (slot >= p->state.shape[0])
            return ssmtp_fail(SSMTP_ERR_INVALID, OP ": state_idx[%lld]=%lld >= nslots=%lld", (long long)m,
                              (long long)slot, (long long)p->state.shape[0]);
    }
    char *proj = malloc(es * (size_t)(M * X > 0 ? M * X : 1)), *y = malloc(es * (size_t)(M * dl > 0 ? M * dl : 1));
    if (!proj || !y) {
        free(proj);
        free(y);
        return ssmtp_fail(SSMTP_ERR_NOMEM, OP ": no memory for the intermediates of %lld rows", (long long)M);
    }
    ssmtp_status_t st;
    ssmtp_linear_params_t lp = {0};
    lp.x = p->xc;
    lp.weight = p->x_proj;
    lp.out = dense2(proj, ty, M, X);
    st = ssmtp_linear_small(&lp, NULL);
    if (st == SSMTP_OK && p->norm_eps >= 0.0f) { /* Falcon-Mamba: weightless RMS norm of dt, B and C per row */
        const int64_t part[3][2] = {{0, R}, {R, N}, {R + N, N}};
        for (int64_t m = 0; m < M; m++)
            for (int i = 0; i < 3; i++) {
                const int64_t o = m * X + part[i][0], n = part[i][1];
                float ss = 0.0f;
                for (int64_t k = 0; k < n; k++) {
                    const float v = ssmtp_load(proj, ty, o + k);
                    ss += v * v;
                }
                const float s = n > 0 ? 1.0f / sqrtf(ss / (float)n + p->norm_eps) : 0.0f;
                for (int64_t k = 0; k < n; k++) ssmtp_store(proj, ty, o + k, ssmtp_load(proj, ty, o + k) * s);
            }
    }
    if (st == SSMTP_OK) {
        ssmtp_step_params_t sp = {0};
        sp.x = p->xc;
        sp.dt = dense2(proj, ty, M, R);
        sp.dt.stride[0] = X;
        ssmtp_tensor_t bc = {0};
        bc.data = proj + es * (size_t)R; /* (M, 1, N) views of the B and C columns */
        bc.dtype = ty;
        bc.device = SSMTP_DEVICE_CPU;
        bc.ndim = 3;
        bc.shape[0] = M;
        bc.shape[1] = 1;
        bc.shape[2] = N;
        bc.stride[0] = X;
        bc.stride[1] = N;
        bc.stride[2] = 1;
        sp.B = bc;
        bc.data = proj + es * (size_t)(R + N);
        sp.C = bc;
        sp.A = p->A;
        sp.D = p->D;
        sp.z = p->z;
        sp.dt_bias = p->dt_bias;
        sp.state = p->state;
        sp.state_idx = p->state_idx;
        sp.out = dense2(y, ty, M, dl);
        sp.dt_proj = p->dt_proj;
        sp.dt_softplus = 1;
        st = ssmtp_step_fwd(&sp, NULL);
    }
    if (st == SSMTP_OK) {
        lp.x = dense2(y, ty, M, dl);
        lp.weight = p->out_proj;
        lp.out = p->out;
        st = ssmtp_linear_small(&lp, NULL);
    }
    free(proj);
    free(y);
    return st;
}

/* What the CUDA kernel takes (ssmtp.h); anything else is a valid call for the unfused ops. */
static ssmtp_status_t decode_out_cuda_layout(const ssmtp_decode_out_params_t *p) {
    const int64_t M = p->xc.shape[0], dl = p->xc.shape[1], R = p->dt_proj.shape[1], N = p->A.shape[1];
    const int64_t es = (int64_t)ssmtp_dtype_size(p->xc.dtype);
    if (M < 1 || M > SSMTP_DECODE_OUT_MAX_M)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": M=%lld rows on CUDA, supported 1..%d", (long long)M,
                          SSMTP_DECODE_OUT_MAX_M);
    if ((dl * es) % 16 || (R * es) % 16 || N < 1 || N > 32 || R + 2 * N > 1024)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": d_inner=%lld, R=%lld, N=%lld on CUDA (rows of whole 16-byte "
                          "packs, N <= 32, R + 2N <= 1024)", (long long)dl, (long long)R, (long long)N);
    const ssmtp_tensor_t *ts[] = {&p->xc, &p->x_proj, &p->dt_proj, &p->out_proj, &p->work};
    const char *names[] = {"xc", "x_proj", "dt_proj", "out_proj", "work"};
    for (int i = 0; i < 5; i++)
        if ((uintptr_t)ts[i]->data % 16 || (i == 0 && M > 1 && (ts[i]->stride[0] * es) % 16))
            return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": %s on CUDA needs 16-byte aligned rows", names[i]);
    return SSMTP_OK;
}

ssmtp_status_t ssmtp_mamba_decode_out(const ssmtp_decode_out_params_t *p, void *stream) {
    if (!p) return ssmtp_fail(SSMTP_ERR_INVALID, OP ": params is NULL");
    int32_t device;
    SSMTP_TRY(decode_out_check(p, &device));
    if (device == SSMTP_DEVICE_CPU) return decode_out_cpu(p);
    SSMTP_TRY(decode_out_cuda_layout(p));
#ifdef SSMTP_WITH_CUDA
    return ssmtp_cuda_mamba_decode_out(p, stream);
#else
    (void)stream;
    return ssmtp_fail(SSMTP_ERR_NOT_BUILT, OP ": tensors are on cuda:%d but this build has no CUDA", (int)device);
#endif
}
