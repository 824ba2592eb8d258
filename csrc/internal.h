/*
 * internal.h - helpers shared by the C sources (not installed, not public): the error channel, argument checks,
 * and scalar conversions for f16/bf16/fp8 on the CPU. CUDA launchers are declared here with C linkage; they are
 * defined in csrc/cuda/ (one .cu file per op) and only exist when SSMTP_WITH_CUDA is defined.
 */
#ifndef SSMTP_INTERNAL_H
#define SSMTP_INTERNAL_H

#include "ssmtp.h"
#include <math.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Record a formatted message for ssmtp_last_error() and return st. */
ssmtp_status_t ssmtp_fail(ssmtp_status_t st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void ssmtp_clear_error(void);

#define SSMTP_TRY(expr)                                                                                              \
    do {                                                                                                             \
        ssmtp_status_t st_ = (expr);                                                                                 \
        if (st_ != SSMTP_OK) return st_;                                                                             \
    } while (0)

static inline int ssmtp_present(const ssmtp_tensor_t *t) { return t->data != NULL; }
/* The length of batch row b: seq_lens[b] (int32) when given, else len. */
static inline int64_t ssmtp_row_len(const ssmtp_tensor_t *seq_lens, int64_t b, int64_t len) {
    return ssmtp_present(seq_lens) ? ((const int32_t *)seq_lens->data)[b * seq_lens->stride[0]] : len;
}
/* The slot of batch row b: state_idx[b] (int32) when given, else b. */
static inline int64_t ssmtp_slot_of(const ssmtp_tensor_t *state_idx, int64_t b) {
    return ssmtp_present(state_idx) ? ((const int32_t *)state_idx->data)[b * state_idx->stride[0]] : b;
}
size_t ssmtp_dtype_size(int32_t dtype);
const char *ssmtp_dtype_name(int32_t dtype);

/*
 * Argument checks. Each returns SSMTP_OK or records "<op>: <name> ..." and returns SSMTP_ERR_INVALID.
 * ssmtp_check_tensor: present (unless optional), ndim, dtype (-1 = any), and each dim against shape[] (-1 = any).
 */
ssmtp_status_t ssmtp_check_tensor(const char *op, const char *name, const ssmtp_tensor_t *t, int optional, int ndim,
                                  int32_t dtype, const int64_t *shape);
/* The last element's byte offset fits in an int64 with room to spare (called by ssmtp_check_tensor). */
ssmtp_status_t ssmtp_check_extent(const char *op, const char *name, const ssmtp_tensor_t *t);
/* Dense (row-major contiguous as torch sees it; no elements = dense); *n receives the element count. */
ssmtp_status_t ssmtp_check_dense(const char *op, const char *name, const ssmtp_tensor_t *t, int64_t *n);
/* All present tensors in list must share one device; *device receives it. */
ssmtp_status_t ssmtp_check_devices(const char *op, const ssmtp_tensor_t *const *ts, const char *const *names, int n,
                                   int32_t *device);
/* Last dimension contiguous (stride 1) unless size 1. */
ssmtp_status_t ssmtp_check_inner_contiguous(const char *op, const char *name, const ssmtp_tensor_t *t);
ssmtp_status_t ssmtp_check_float_dtype(const char *op, const char *name, const ssmtp_tensor_t *t);
/* A residual stream tensor (when present): float32 or ty, the dtype of the tensor named `of`. */
ssmtp_status_t ssmtp_check_stream_dtype(const char *op, const char *name, const ssmtp_tensor_t *t, int32_t ty,
                                        const char *of);
/* Intermediate-state saves of conv1d / scan (ssmtp.h): shapes (both or neither, (batch, nsave) int32, a state). */
ssmtp_status_t ssmtp_check_saves(const char *op, const ssmtp_tensor_t *save_pos, const ssmtp_tensor_t *save_idx,
                                 const ssmtp_tensor_t *state, int64_t batch);
/* CPU path: the values of row b's saves (n valid positions; state_idx as given to the op, NULL = slot b). */
ssmtp_status_t ssmtp_check_save_values(const char *op, const ssmtp_tensor_t *save_pos, const ssmtp_tensor_t *save_idx,
                                       const ssmtp_tensor_t *state_idx, int64_t batch, int64_t b, int64_t n,
                                       int64_t nslots);
/* Row b of a CPU prefill op (scan, SSD), checked before the op writes anything: its length (seq_lens[b] when given,
 * else len) in 0..len and, when state is given, its slot (ssmtp_slot_of) below state's first dimension. */
ssmtp_status_t ssmtp_check_prefill_row(const char *op, const ssmtp_tensor_t *state, const ssmtp_tensor_t *state_idx,
                                       const ssmtp_tensor_t *seq_lens, int64_t b, int64_t len, int64_t *slot,
                                       int64_t *n);
static inline int32_t ssmtp_i32_at(const ssmtp_tensor_t *t, int64_t i, int64_t j) {
    return ((const int32_t *)t->data)[i * t->stride[0] + j * t->stride[1]];
}

/* Scalar conversions (CPU side; round-to-nearest-even on the way down, as torch does). */
static inline float ssmtp_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t ssmtp_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float ssmtp_f16_to_f32(uint16_t h);
uint16_t ssmtp_f32_to_f16(float f);
float ssmtp_e4m3_to_f32(uint8_t v);
uint8_t ssmtp_f32_to_e4m3(float f); /* saturating at +-448, NaN -> 0x7f */

/* Load/store element i (in elements, already strided) of a float tensor of the given dtype. */
static inline float ssmtp_load(const void *base, int32_t dtype, int64_t i) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: return ((const float *)base)[i];
    case SSMTP_DTYPE_BF16: return ssmtp_bf16_to_f32(((const uint16_t *)base)[i]);
    case SSMTP_DTYPE_F16: return ssmtp_f16_to_f32(((const uint16_t *)base)[i]);
    default: return NAN; /* dtypes are validated before any load */
    }
}
static inline void ssmtp_store(void *base, int32_t dtype, int64_t i, float v) {
    switch (dtype) {
    case SSMTP_DTYPE_F32: ((float *)base)[i] = v; break;
    case SSMTP_DTYPE_BF16: ((uint16_t *)base)[i] = ssmtp_f32_to_bf16(v); break;
    case SSMTP_DTYPE_F16: ((uint16_t *)base)[i] = ssmtp_f32_to_f16(v); break;
    default: break;
    }
}
/* v rounded to the given float dtype and back (what a store and a load through that dtype give). */
static inline float ssmtp_round(float v, int32_t dtype) {
    switch (dtype) {
    case SSMTP_DTYPE_BF16: return ssmtp_bf16_to_f32(ssmtp_f32_to_bf16(v));
    case SSMTP_DTYPE_F16: return ssmtp_f16_to_f32(ssmtp_f32_to_f16(v));
    default: return v;
    }
}
static inline float ssmtp_silu(float v) { return v / (1.0f + expf(-v)); }
/*
 * Row m of a block input's residual add + RMSNorm (csrc/norm.c; ssmtp_add_rms_norm and the prologue of
 * ssmtp_mamba_decode_in): r = res + add in fp32 (add optional, of dtype ty), stored to res_out when present; h[k] =
 * (ty)(norm_w * (ty)(v * s)), v = (ty) r, s = 1 / sqrt(mean(v^2) + eps): floats holding ty values (H of them).
 */
void ssmtp_add_norm_row(const ssmtp_tensor_t *res, const ssmtp_tensor_t *add, const ssmtp_tensor_t *res_out,
                        const ssmtp_tensor_t *norm_w, float eps, int32_t ty, int64_t m, float *h);
static inline float ssmtp_softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/*
 * One channel of the causal depthwise conv (csrc/conv1d.c), shared with the fused decode input (csrc/decode.c) so
 * that both compute the same bits. ssmtp_conv_channel_load reads channel c's width taps (weight (dim, width)), its
 * bias (0 when absent) and its history h: the last width-1 columns of the state row at element offset so when
 * load_state (zeros otherwise), oldest first. ssmtp_conv_tap_sum is one output position before the activation:
 * bias + sum_k w[k] h[k] + w[width-1] x, accumulated in fp32 in that order.
 */
void ssmtp_conv_channel_load(const ssmtp_tensor_t *weight, const ssmtp_tensor_t *bias, const ssmtp_tensor_t *state,
                             int64_t c, int64_t so, int load_state, float w[4], float h[3], float *b);
static inline float ssmtp_conv_tap_sum(const float *w, const float *h, int64_t width, float bias, float x) {
    float acc = bias;
    for (int64_t k = 0; k < width - 1; k++) acc += w[k] * h[k];
    return acc + w[width - 1] * x;
}

/* CUDA launchers (csrc/cuda/ (one .cu file per op)). Arguments are validated by the C entry point before these are called. */
#ifdef SSMTP_WITH_CUDA
ssmtp_status_t ssmtp_cuda_conv1d_fwd(const ssmtp_conv1d_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_scan_fwd(const ssmtp_scan_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_ssd_fwd(const ssmtp_ssd_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_step_fwd(const ssmtp_step_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_quantize(const ssmtp_quant_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_dequantize(const ssmtp_quant_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_sample(const ssmtp_sample_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_argmax(const ssmtp_argmax_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_linear_small(const ssmtp_linear_params_t *p, void *stream);
/* linear_wg.cu: the warpgroup-MMA path of ssmtp_linear_small (16-bit x, 1..SSMTP_LINEAR_WG_MAX_M rows, aligned rows),
 * and whether this build has it (sm_90a among the targets). */
ssmtp_status_t ssmtp_cuda_linear_wg(const ssmtp_linear_params_t *p, int sms, int pdl, void *stream);
int ssmtp_linear_wg_built(void);
ssmtp_status_t ssmtp_cuda_gated_norm(const ssmtp_gated_norm_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_add_rms_norm(const ssmtp_add_norm_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_rms_segments(const ssmtp_rms_segments_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream);
ssmtp_status_t ssmtp_cuda_decode_attention(const ssmtp_attn_params_t *p, void *stream);
/* Custom all-reduce (csrc/cuda/allreduce.cu); csrc/allreduce.c validates arguments first. */
ssmtp_status_t ssmtp_cuda_ar_init(ssmtp_ar_t **out, const ssmtp_ar_config_t *cfg);
ssmtp_status_t ssmtp_cuda_ar_ipc_handle(const ssmtp_ar_t *ar, void *out);
ssmtp_status_t ssmtp_cuda_ar_open_peers(ssmtp_ar_t *ar, const void *handles);
int32_t ssmtp_cuda_ar_world_size(const ssmtp_ar_t *ar);
int32_t ssmtp_cuda_ar_device(const ssmtp_ar_t *ar);
ssmtp_status_t ssmtp_cuda_ar_chunk_elems(const ssmtp_ar_t *ar, int32_t dtype, int32_t qdtype, int32_t block,
                                         int32_t algo, int64_t *elems);
ssmtp_status_t ssmtp_cuda_ar_run(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out, int32_t qdtype,
                                 int32_t block, int32_t algo, void *stream);
ssmtp_status_t ssmtp_cuda_ar_check(ssmtp_ar_t *ar, int32_t sync);
ssmtp_status_t ssmtp_cuda_ar_probe(ssmtp_ar_t *ar, int32_t mode, int64_t bytes, void *stream);
ssmtp_status_t ssmtp_cuda_ar_free(ssmtp_ar_t *ar);
#endif

#ifdef __cplusplus
}
#endif
#endif /* SSMTP_INTERNAL_H */
