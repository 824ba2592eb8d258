/*
 * ssmtp.h - the public C99 interface of the ssmtp core.
 *
 * Every op takes one params struct of tensor descriptors (data pointer, dtype, device, shape, element strides) and a
 * CUDA stream as an opaque pointer (NULL = default stream; ignored on the CPU). Nothing here allocates on a hot path:
 * the caller owns every buffer. Every function returns a status; on failure ssmtp_last_error() holds a one-line
 * message naming the op and the offending argument ("scan_fwd: d_state=300 > 256").
 *
 * Device dispatch: an op runs on the CPU when all its tensors are CPU tensors (device -1), on CUDA device k when all
 * are on device k; anything else is SSMTP_ERR_INVALID. A CUDA call in a build without CUDA is SSMTP_ERR_NOT_BUILT.
 */
#ifndef SSMTP_H
#define SSMTP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SSMTP_OK = 0,
    SSMTP_ERR_INVALID = 1,     /* bad argument: shape, dtype, device, stride, pointer */
    SSMTP_ERR_UNSUPPORTED = 2, /* a valid request this build does not implement (dtype, size) */
    SSMTP_ERR_NOT_BUILT = 3,   /* CUDA requested, extension built without CUDA */
    SSMTP_ERR_CUDA = 4,        /* a CUDA runtime call or launch failed */
    SSMTP_ERR_NCCL = 5,        /* NCCL missing or an NCCL call failed */
    SSMTP_ERR_TIMEOUT = 6,     /* a peer did not arrive in time */
    SSMTP_ERR_NOMEM = 7
} ssmtp_status_t;

typedef enum {
    SSMTP_DTYPE_F32 = 0,
    SSMTP_DTYPE_F16 = 1,
    SSMTP_DTYPE_BF16 = 2,
    SSMTP_DTYPE_I8 = 3,
    SSMTP_DTYPE_F8E4M3 = 4, /* stored as bytes */
    SSMTP_DTYPE_I32 = 5,
    SSMTP_DTYPE_I64 = 6,
    SSMTP_DTYPE_U8 = 7
} ssmtp_dtype_t;

#define SSMTP_MAX_DIMS 5
#define SSMTP_DEVICE_CPU (-1)
#define SSMTP_MAX_DSTATE 256

/* A strided view. data == NULL marks an absent optional argument (its other fields are then ignored). */
typedef struct {
    void *data;
    int32_t dtype;  /* ssmtp_dtype_t */
    int32_t device; /* SSMTP_DEVICE_CPU or a CUDA device index */
    int32_t ndim;
    int64_t shape[SSMTP_MAX_DIMS];
    int64_t stride[SSMTP_MAX_DIMS]; /* in elements, may be 0 (broadcast) */
} ssmtp_tensor_t;

/* Thread-local detail of the last failure on this thread ("" when none). */
const char *ssmtp_last_error(void);
const char *ssmtp_status_name(ssmtp_status_t s);
/* 1 when the CUDA sources were compiled in. */
int ssmtp_cuda_built(void);
/* Build description: which parts were compiled, CUDA arch list. Static string. */
const char *ssmtp_build_info(void);

/*
 * Causal depthwise conv1d over a sequence (prefill), continuing from and writing a conv state.
 *   x        (batch, dim, seqlen)        f32/f16/bf16
 *   weight   (dim, width)                same dtype as x, 2 <= width <= 4
 *   bias     (dim,)                      optional, same dtype as x
 *   state    (nslots, dim, state_len)    optional, same dtype as x, state_len >= width - 1
 *   state_idx (batch,) int32             optional: slot of each sequence (else slot b), -1 = padding row:
 *                                        its state is untouched and its out rows are written as zero
 *   seq_lens (batch,) int32              optional: valid length of each (right-padded) sequence, 1..seqlen
 *   out      (batch, dim, seqlen)        same dtype as x; may alias x only if identical
 * Math (per channel c, sequence b, n = seq_lens[b] or seqlen): the input is extended on the left with a history
 * h[-width+1 .. -1]: the last width-1 columns of state[slot] when load_state, zeros otherwise.
 *   out[t] = act(bias + sum_k weight[k] * xin[t - (width-1) + k]),   act = SiLU when silu, identity otherwise
 * Positions t >= n are written as zero. When state is given, state[slot][:, j] (j < state_len) is then set to the
 * last state_len columns of [history ; x[0:n]] (the history holds state_len columns: the old state, or zeros).
 * Decode is the same op with seqlen = 1 and load_state = 1.
 * Intermediate states (optional; save_pos and save_idx both given or both absent, state required):
 *   save_pos, save_idx (batch, nsave) int32: for each b and j with save_idx[b][j] >= 0, state[save_idx[b][j]] is set
 *   to the state after the first save_pos[b][j] positions of this call (the last state_len columns of
 *   [history ; x[0:save_pos]]), i.e. what a call over x[0:save_pos] alone would leave. Per row, the entries with
 *   save_idx >= 0 must have 1 <= save_pos <= n, strictly ascending, and name slots < nslots that no row of this call
 *   uses as its own slot. The CPU path rejects violations before writing anything; the CUDA path (no host-side
 *   read of device indices) skips the entries that break them.
 */
typedef struct {
    ssmtp_tensor_t x, weight, bias, state, state_idx, seq_lens, out, save_pos, save_idx;
    int32_t silu;
    int32_t load_state;
} ssmtp_conv1d_params_t;
ssmtp_status_t ssmtp_conv1d_fwd(const ssmtp_conv1d_params_t *p, void *stream);

/*
 * Selective scan over a sequence (prefill), fp32 state, fp32 accumulation.
 *   x        (batch, dim, seqlen)          f32/f16/bf16
 *   dt       (batch, dim, seqlen)          same dtype as x; raw time step before bias and softplus
 *   A        (dim, dstate)                 f32 (= -exp(A_log)), dstate <= SSMTP_MAX_DSTATE
 *   B, C     (batch, ngroups, dstate, seqlen)  same dtype as x; channel c uses group c / (dim / ngroups)
 *                                          (Mamba: ngroups = 1; Zamba: ngroups = mamba heads)
 *   D        (dim,)                        optional, f32 or the dtype of x
 *   z        (batch, dim, seqlen)          optional gate, same dtype as x: y *= silu(z)
 *   dt_bias  (dim,)                        optional, f32 or the dtype of x
 *   state    (nslots, dim, dstate) f32     optional: initial state read when load_state, final state written
 *   state_idx, seq_lens                    as for conv1d (the final state is the one after position n-1)
 *   out      (batch, dim, seqlen)          same dtype as x
 * Math per (b, c): delta = dt + dt_bias, softplus when dt_softplus (log1p(exp(v)), v > 20 passes through);
 *   h = exp(delta * A[c]) * h + delta * B[t] * x[t];   y[t] = <h, C[t]> + D[c] x[t];   y *= silu(z[t]).
 * Positions t >= n are written as zero.
 *   save_pos, save_idx (batch, nsave) int32   optional intermediate states, as for conv1d: state[save_idx[b][j]] =
 *                                          h after the first save_pos[b][j] positions (same rules and checks)
 */
typedef struct {
    ssmtp_tensor_t x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, out, save_pos, save_idx;
    int32_t dt_softplus;
    int32_t load_state;
} ssmtp_scan_params_t;
ssmtp_status_t ssmtp_scan_fwd(const ssmtp_scan_params_t *p, void *stream);

/*
 * Selective state update for one token per sequence (decode), in place on a slot-indexed fp32 state.
 *   x, dt, z (batch, dim); B, C (batch, ngroups, dstate); A (dim, dstate) f32; D, dt_bias (dim,);
 *   state (nslots, dim, dstate) f32; state_idx (batch,) int32 optional (-1 = padding: state untouched, out zero);
 *   out (batch, dim). Same math as one step of ssmtp_scan_fwd with load_state = 1. dt may also be (batch, G, dim / G),
 *   channel c reading dt[b, c / (dim / G), c % (dim / G)]: e.g. one time step per head as a stride-0 view.
 * Optional fused dt_proj (decode at small batch: one kernel instead of a GEMV + the step):
 *   dt_proj (dim, R) same dtype as x: then dt is (batch, R), the low-rank time step before dt_proj, and the raw time
 *   step of channel c is dt_proj[c] . dt[b] (fp32 accumulation, rounded to the dtype of x as a separate product
 *   would be), then + dt_bias and softplus as above. Or dt (batch, ngroups, R), one low-rank time step per group of
 *   B/C (Zamba's per-head x_proj): channel c takes dt[b, c / (dim / ngroups)]. Any strides; on CUDA the fast path
 *   wants R * element size a multiple of 16 bytes and 16-byte aligned, contiguous rows of dt and dt_proj (else a
 *   plain per-element loop).
 * state_early (a launch hint, CUDA only; 0 = off): the kernel may read state_idx and the state rows before its
 *   programmatic-dependent-launch wait, i.e. while the kernel before it still runs. Only correct when no kernel that
 *   may still be running then writes them: the engine's decode step, whose first kernel is an ordinary launch (the
 *   embedding gather) and in which nothing else writes a layer's SSM state or the slot indices. Same results.
 */
typedef struct {
    ssmtp_tensor_t x, dt, A, B, C, D, z, dt_bias, state, state_idx, out, dt_proj;
    int32_t dt_softplus;
    int32_t state_early;
} ssmtp_step_params_t;
ssmtp_status_t ssmtp_step_fwd(const ssmtp_step_params_t *p, void *stream);

/*
 * Block-scaled quantization of a contiguous 1-D tensor (the payload of a quantized all-reduce).
 *   x      (n,) f32/f16/bf16 contiguous
 *   q      (n,) I8 or F8E4M3 contiguous
 *   scales (ceil(n / block),) f32
 *   block  32..256, a multiple of 32
 * Each block: amax = max |x|; scale = amax / qmax (qmax 127 for int8, 448 for e4m3); q = round-to-nearest-even(x /
 * scale), saturated. An all-zero block gets scale 0 and q 0 (dequantizes to exact zeros). A block holding Inf or
 * NaN gets scale NaN, and dequantizes to NaN everywhere (a non-finite sum stays visible instead of being clipped).
 * Dequantize: x = q * scale, written in the dtype of x.
 */
typedef struct {
    ssmtp_tensor_t x, q, scales;
    int32_t block;
} ssmtp_quant_params_t;
ssmtp_status_t ssmtp_quantize(const ssmtp_quant_params_t *p, void *stream);
ssmtp_status_t ssmtp_dequantize(const ssmtp_quant_params_t *p, void *stream);

/*
 * Token sampling: one token per row of logits, greedy or from softmax(logits / T) restricted to top-k / top-p.
 *   logits      (n, V) f32/f16/bf16, last dim contiguous (any row stride)
 *   temperature (n,) f32   <= 0 (or 1 / T not finite): greedy
 *   top_k       (n,) int64 <= 0 or >= V: no limit
 *   top_p       (n,) f32   >= 1 (or NaN): no limit
 *   seed, step  (n,) int64 the noise of the row (request seed, index of the token being generated)
 *   out         (n,) int64 token ids
 * Greedy: the first index of the largest logit; NaN is never chosen; a row with nothing above -inf gives 0.
 * Random (T > 0, the largest logit finite; else greedy as above): with c = 1 / T (fp32),
 *   top-k keeps a token iff fewer than k tokens have a strictly larger logit (ties at the k-th value all stay);
 *   top-p then keeps a kept-by-k token iff the kept-by-k tokens with a strictly larger mass e hold less than p of
 *   the top-k set's mass (the most likely tokens always stay), with e_v = exp((l_v - max) * c) in fp32, fp32 sums.
 *   token = first index of the largest l_v * c + g_v over kept tokens, g_v Gumbel(0, 1) noise that is a pure
 *   function of (seed, step, v): h = mix(seed_lo ^ mix(seed_hi ^ 0x9E3779B9)); h = mix(h ^ mix(step_lo));
 *   bits = mix(h ^ mix(v ^ 0x85EBCA6B)) with mix = lowbias32; u = ((bits >> 8) + 0.5) * 2^-24; g = -log(-log(u)).
 *   So a row's token depends on nothing else in the batch and the same seed gives the same tokens.
 * The thresholds are found by bisection over the order-preserving integer keys of the fp32 logits / masses (at
 * most 32 passes per limit). CUDA runs one block per row, the row in shared memory where it fits (V <= ~53k on
 * sm_90), and once at most 2048 entries remain above the search's lower bound it compacts them (in index order) and
 * searches those alone; every sum has a fixed order (the same token run to run). Sums in another order (CPU vs
 * CUDA) can move a threshold only where a mass lies within rounding of p * the top-k mass.
 */
typedef struct {
    ssmtp_tensor_t logits, temperature, top_k, top_p, seed, step, out;
} ssmtp_sample_params_t;
ssmtp_status_t ssmtp_sample(const ssmtp_sample_params_t *p, void *stream);

/*
 * Greedy token of each row alone, ssmtp_sample's greedy rule without its parameters (the decode step's argmax):
 *   logits (n, V) f32/f16/bf16, last dim contiguous (any row stride); out (n,) int64
 * out[i] = the first index of the largest logit of row i; NaN is never chosen; a row with nothing above -inf gives 0.
 * CUDA: a thread-block cluster of up to 8 blocks per row (sm_90), launched with programmatic dependent launch.
 */
typedef struct {
    ssmtp_tensor_t logits, out;
} ssmtp_argmax_params_t;
ssmtp_status_t ssmtp_argmax(const ssmtp_argmax_params_t *p, void *stream);

/*
 * The input half of a Mamba-1 block's decode step, fused (one token per sequence, small batch): residual add,
 * RMSNorm, in_proj, conv step + SiLU. The engine's decode runs per layer: this op, x_proj, the step with dt_proj
 * fused, out_proj (the previous layer's out_proj output is this op's `add`). Zamba's Mamba layers take it as they
 * are (in_proj rows [x | z]); Zamba2's with conv_lo = d_inner (rows [gate | xBC | dt], the conv over xBC).
 *   res        (M, H) f32 or T (T = the dtype of weight: f32/f16/bf16): the residual stream entering the block
 *   add        (M, H) T, optional: added to res (the previous block's mixer output)
 *   res_out    (M, H) f32 or T: written with r = res + add (res when add is absent); no overlap with res or add
 *   norm_w     (H,) T: the block's RMSNorm weight; eps: its epsilon
 *   weight     (n, H) T, contiguous: in_proj; rows [conv_lo, conv_lo + nc) give the conv input (nc = the conv's
 *              channels, conv_w's rows), the other n - nc rows z, in order (Mamba-1: n = 2 dl, conv_lo = 0, nc = dl)
 *   bias       (n,) T, optional
 *   conv_w     (nc, W) T, 2 <= W <= 4; conv_b (nc,) T, optional
 *   conv_state (nslots, nc, S) T, S >= W - 1: read and shifted in place (conv1d's decode: seqlen 1, load_state)
 *   state_idx  (M,) int32, optional: slot of each row (else row m); -1 = padding: state untouched, xc row zero
 *   xc         (M, nc) T: SiLU(conv) output;  z (M, n - nc) T: the other rows (Mamba-1: the gate)
 * Math per row (as HF's MambaBlock with the engine's fp32 residual): r = res + add in fp32, stored rounded to
 * res_out's dtype; v = (T) r; s = 1 / sqrt(mean(v^2) + eps) in fp32; h = (T)(norm_w * (T)(v * s));
 * xz = h weight^T + bias (fp32 accumulation, one rounding to T); xc = conv1d decode step of xz[:, conv_lo:conv_lo +
 * nc] with SiLU (ssmtp_conv1d_fwd), z = the other columns of xz. CPU: any M; CUDA: 1 <= M <= SSMTP_DECODE_IN_MAX_M, H * element size a
 * multiple of 16 bytes and at most 16 KiB, 16-byte aligned weight, S = W or W - 1 (else
 * SSMTP_ERR_UNSUPPORTED: callers run the unfused ops).
 */
#define SSMTP_DECODE_IN_MAX_M 4
typedef struct {
    ssmtp_tensor_t res, add, res_out, norm_w, weight, bias, conv_w, conv_b, conv_state, state_idx, xc, z;
    float eps;
    int64_t conv_lo;
} ssmtp_decode_in_params_t;
ssmtp_status_t ssmtp_mamba_decode_in(const ssmtp_decode_in_params_t *p, void *stream);

/*
 * Small-batch linear layer, the decode step's GEMV: out = x W^T (+ bias), fp32 accumulation, one rounding.
 *   x      (M, K) f32/f16/bf16, rows contiguous (any row stride)
 *   weight (N, K) same dtype, contiguous
 *   bias   (N,) same dtype, optional
 *   out    (M, N) same dtype, rows contiguous (any row stride); or f32 when x is f16/bf16: the sum rounded to x's
 *          dtype and widened (the bits of F.linear(x, W).float(), in one kernel: the decode step's logits)
 * CPU: any M. CUDA: 1 <= M <= SSMTP_LINEAR_SMALL_MAX_M, K * element size a multiple of 16 bytes and x, weight 16-byte
 * aligned (else SSMTP_ERR_UNSUPPORTED: callers use a GEMM there). The weight is streamed once (16-byte loads, several
 * in flight per thread) and every row of x is applied to it, which is what decode at batch <= 8 needs: cuBLAS picks
 * split-K GEMMs there that add a reduction kernel per call.
 */
#define SSMTP_LINEAR_SMALL_MAX_M 8
/* CUDA, 16-bit x and weight, K a multiple of 32, compute capability 9.0: SSMTP_LINEAR_SMALL_MAX_M < M <= this many rows
 * run on a tensor-core kernel (mma.sync, K split over a thread-block cluster, partials summed in a fixed order). */
#define SSMTP_LINEAR_TC_MAX_M 256
/* CUDA, 16-bit x and weight, compute capability 9.0, built for sm_90a: a warpgroup-MMA kernel (wgmma from
 * shared-memory stages, K split over a thread-block cluster, partials summed in a fixed order) takes up to
 * SSMTP_LINEAR_WG_MAX_M rows; by default the products it measured faster than cuBLAS on: outputs wider than
 * SSMTP_LINEAR_WG_MIN_N and at most SSMTP_LINEAR_WG_MAX_N, SSMTP_LINEAR_WG_MIN_M..SSMTP_LINEAR_WG_AUTO_M rows when
 * N <= K, up to SSMTP_LINEAR_WG_AUTO_WIDE_M rows when N > K, and narrower outputs at
 * SSMTP_LINEAR_WG_NARROW_MIN_M..SSMTP_LINEAR_WG_NARROW_MAX_M rows (ssmtp/ops.py: wg_wins). */
#define SSMTP_LINEAR_WG_MAX_M 128
#define SSMTP_LINEAR_WG_MIN_N 512
#define SSMTP_LINEAR_WG_MAX_N 10240
#define SSMTP_LINEAR_WG_MIN_M 3
#define SSMTP_LINEAR_WG_AUTO_M 32
#define SSMTP_LINEAR_WG_AUTO_WIDE_M 16
#define SSMTP_LINEAR_WG_NARROW_MIN_M 8
#define SSMTP_LINEAR_WG_NARROW_MAX_M 64
typedef struct {
    ssmtp_tensor_t x, weight, bias, out;
} ssmtp_linear_params_t;
ssmtp_status_t ssmtp_linear_small(const ssmtp_linear_params_t *p, void *stream);

/*
 * Gated RMSNorm over groups of channels (the Mamba-2 / Zamba2 output norm, HF's RMSNormGated with norm_before_gate
 * off): per row m and group of `group` consecutive channels,
 *   v = y * silu(gate) (fp32), r = 1 / sqrt(sum(v^2) / group + eps), out = round(weight * round(v * r))
 * with both roundings to the dtype of y (HF casts the normalised value to the input dtype before the weight).
 *   y, gate, out (M, D) same float dtype, rows contiguous (any row stride); weight (D,) same dtype, contiguous;
 *   group >= 1 divides D; eps >= 0.
 * CUDA: one block per (row, group) (launched with programmatic dependent launch on sm_90+, so that a GEMV after it
 * starts streaming its weights while this runs): the decode step's norm at small batch, one kernel.
 */
typedef struct {
    ssmtp_tensor_t y, gate, weight, out;
    int64_t group;
    float eps;
} ssmtp_gated_norm_params_t;
ssmtp_status_t ssmtp_gated_norm(const ssmtp_gated_norm_params_t *p, void *stream);

/*
 * Residual add + RMSNorm of a Mamba-1 block's input (HF MambaBlock with the engine's fp32 residual; the prologue of
 * ssmtp_mamba_decode_in on its own, for the decode batches whose in_proj is a separate GEMM):
 *   res     (M, H) f32 or T (T = the dtype of norm_w: f32/f16/bf16): the residual stream entering the block
 *   add     (M, H) T, optional: added to res (the previous block's mixer output)
 *   res_out (M, H) f32 or T, optional: written with r = res + add (res when add is absent); no overlap with the inputs
 *   norm_w  (H,) T; eps >= 0
 *   out     (M, H) T: h = (T)(norm_w * (T)(v * s)), v = (T) r, s = 1 / sqrt(mean(v^2) + eps) in fp32
 * Rows contiguous (any row stride). CUDA: one block per row, launched with programmatic dependent launch (the GEMM
 * after it starts streaming its weights while this runs); rows up to SSMTP_ADD_NORM_CUDA_MAX_H elements.
 */
#define SSMTP_ADD_NORM_CUDA_MAX_H 8192
typedef struct {
    ssmtp_tensor_t res, add, res_out, norm_w, out;
    float eps;
} ssmtp_add_norm_params_t;
ssmtp_status_t ssmtp_add_rms_norm(const ssmtp_add_norm_params_t *p, void *stream);

/*
 * Weightless RMS norms over consecutive segments of each row (Falcon-Mamba's norms of dt, B and C, the pieces of the
 * x_proj output): per row m and segment [o, o + len) of x,
 *   out = round(x * r), r = 1 / sqrt(mean(x^2 over the segment) + eps), in fp32, one rounding to the dtype of x
 *   x, out (M, D) same float dtype, rows contiguous (any row stride; out may be x); nseg 1..SSMTP_RMS_MAX_SEGMENTS
 *   segments of len[i] >= 1 elements that sum to D; eps >= 0.
 * CUDA: one block per (row, segment), launched with programmatic dependent launch; segments up to 8192 elements.
 */
#define SSMTP_RMS_MAX_SEGMENTS 4
typedef struct {
    ssmtp_tensor_t x, out;
    int64_t nseg, len[SSMTP_RMS_MAX_SEGMENTS];
    float eps;
} ssmtp_rms_segments_params_t;
ssmtp_status_t ssmtp_rms_segments(const ssmtp_rms_segments_params_t *p, void *stream);

/*
 * Decode attention over slot-indexed K/V caches: one query token per sequence (the hybrid models' attention layers
 * in the decode step), reading each sequence's keys in place (no gather) and only as many as it has.
 *   q         (batch, nheads, head_dim)          f32/f16/bf16, head_dim <= SSMTP_MAX_HEAD_DIM
 *   k, v      (nslots, max_len, nkv, head_dim)   same dtype as q; nheads % nkv == 0: query head h reads kv head
 *                                                h / (nheads / nkv) (grouped-query attention)
 *   state_idx (batch,) int32                     slot of each sequence; -1 = padding row (its out row is zero)
 *   lengths   (batch,) int32                     keys attended: positions 0 .. lengths[b]-1 of the slot, 1..max_len
 *   out       (batch, nheads, head_dim)          same dtype as q
 *   scale     the score scale (e.g. 1/sqrt(head_dim))
 * Math per (b, h), fp32: s_t = scale * <q, k[slot, t, kvh]>, p = softmax(s) over t < lengths[b],
 * out = sum_t p_t v[slot, t, kvh], rounded once to the dtype of q. The CPU path rejects slots >= nslots and lengths
 * outside 1..max_len before writing anything; the CUDA path (no host-side read of device indices) writes NaN rows
 * for them.
 */
#define SSMTP_MAX_HEAD_DIM 512
typedef struct {
    ssmtp_tensor_t q, k, v, state_idx, lengths, out;
    float scale;
} ssmtp_attn_params_t;
ssmtp_status_t ssmtp_decode_attention(const ssmtp_attn_params_t *p, void *stream);

/* ================================================================================================================
 * Communication (csrc/nccl.c, csrc/allreduce.c, csrc/cuda/allreduce.cu)
 * ================================================================================================================
 *
 * NCCL, resolved at run time. ssmtp_nccl_load binds the NCCL entry points from the libnccl.so.2 that is already in
 * the process (torch's copy, dlopen RTLD_NOLOAD); only if none is loaded does it dlopen `path` (may be NULL).
 * ssmtp_nccl_source() then says which: 0 = not loaded, 1 = the copy already in the process, 2 = `path`. A
 * communicator of torch's (ncclComm_t as an integer, ProcessGroupNCCL._comm_ptr()) may be wrapped only when the
 * source is 1: a second copy of NCCL cannot use the first one's communicators.
 * Collectives run on `stream` (a cudaStream_t; NULL = the legacy default stream) and may be captured in a CUDA
 * graph. The wrapped communicator is borrowed: ssmtp_nccl_comm_free never destroys it. A communicator made by
 * ssmtp_nccl_comm_init is owned and destroyed by ssmtp_nccl_comm_free (a collective call: every rank must make it,
 * and every CUDA graph that captured a collective on it must be destroyed first, or NCCL waits for them forever).
 */
#define SSMTP_NCCL_UNIQUE_ID_BYTES 128
typedef struct ssmtp_nccl ssmtp_nccl_t;
ssmtp_status_t ssmtp_nccl_load(const char *path);
int ssmtp_nccl_source(void);
ssmtp_status_t ssmtp_nccl_version(int32_t *version); /* NCCL_VERSION_CODE, e.g. 22809 for 2.28.9 */
ssmtp_status_t ssmtp_nccl_unique_id(uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES]);
ssmtp_status_t ssmtp_nccl_comm_wrap(ssmtp_nccl_t **out, void *nccl_comm);
/* Collective over nranks processes; the caller has made the CUDA device of this rank current on this thread. */
ssmtp_status_t ssmtp_nccl_comm_init(ssmtp_nccl_t **out, int32_t nranks, int32_t rank,
                                    const uint8_t id[SSMTP_NCCL_UNIQUE_ID_BYTES]);
ssmtp_status_t ssmtp_nccl_comm_info(const ssmtp_nccl_t *c, int32_t *rank, int32_t *nranks, int32_t *device);
ssmtp_status_t ssmtp_nccl_comm_free(ssmtp_nccl_t *c);
/* Sum of x over the ranks into out (x and out contiguous, same dtype and numel; out may be x). */
ssmtp_status_t ssmtp_nccl_all_reduce(ssmtp_nccl_t *c, const ssmtp_tensor_t *x, ssmtp_tensor_t *out, void *stream);
/* out (contiguous, nranks * numel(x) elements of x's dtype) = the ranks' x concatenated in rank order. */
ssmtp_status_t ssmtp_nccl_all_gather(ssmtp_nccl_t *c, const ssmtp_tensor_t *x, ssmtp_tensor_t *out, void *stream);

/*
 * Custom all-reduce among the GPUs of one host (CUDA IPC + P2P loads/stores over NVLink or PCIe).
 *
 * Each rank owns one device allocation: a signal area (barrier flags, message headers, call counter, error word)
 * followed by the receive buffer, 2 halves x world_size slots x slot_bytes (slot_bytes = buffer_bytes / (2 x
 * world_size)); successive calls alternate halves, so no call needs a closing barrier; then 3 x world_size small
 * slots for the barrier-free LAMPORT one-shot. The caller's tensors are read and written directly: nothing is
 * registered per call, so a call can be captured in a CUDA graph and replayed.
 *   one-shot  every rank pushes its whole input into every peer's slot (remote stores), raises a per-block flag
 *             (release), waits for the peers' flags (acquire) and sums the local slots (1 barrier).
 *   two-shot  reduce-scatter (push segment q to rank q; rank q sums it), barrier, all-gather (rank q pushes its
 *             reduced segment into every peer's buffer: remote stores), barrier, each rank copies the segments out
 *             of its own buffer; moves 2(N-1)/N of the message per rank instead of N-1 times it.
 *   lamport   the one-shot without flags (see SSMTP_AR_LAMPORT).
 * Sums are fp32, in rank order 0..N-1, and each element's result is computed once and copied (two-shot) or
 * computed identically (one-shot) on every rank: all ranks hold bitwise-identical results.
 * Messages larger than a slot are reduced in chunks. Every rank must make the same sequence of calls (sizes,
 * dtypes, algorithms, quantization) on the same stream order. A barrier waits at most timeout_s; a rank that does
 * not arrive, or disagreeing message headers (size/dtype/algorithm), set an error word that is copied to the peers
 * and to host memory: the failing launch returns garbage, later launches exit at once, and the next
 * ssmtp_ar_all_reduce (or ssmtp_ar_check) returns SSMTP_ERR_TIMEOUT / SSMTP_ERR_INVALID. The handle is then
 * unusable: free it and make a new one.
 *
 * Setup (every rank): ssmtp_ar_init -> ssmtp_ar_ipc_handle -> exchange the handles (e.g. all_gather over
 * torch.distributed) -> ssmtp_ar_open_peers(handles of ranks 0..N-1 concatenated). Teardown: synchronize, make sure
 * no peer still runs a collective on the handle (a barrier), then ssmtp_ar_free on every rank.
 */
#define SSMTP_AR_IPC_HANDLE_BYTES 64
#define SSMTP_AR_MAX_RANKS 8
/* LAMPORT: a one-shot without barriers (small messages, not quantized): receive slots hold a sentinel (-0.0 for
 * f16/bf16, the word 0x80008000 for f32) that senders never send (they send +0.0 for -0.0 and -0.0 for that
 * subnormal), so a receiver polls the data itself and resets it after use. */
typedef enum { SSMTP_AR_AUTO = 0, SSMTP_AR_ONESHOT = 1, SSMTP_AR_TWOSHOT = 2, SSMTP_AR_LAMPORT = 3 } ssmtp_ar_algo_t;
typedef struct ssmtp_ar ssmtp_ar_t;
typedef struct {
    int32_t rank, world_size; /* world_size 2..SSMTP_AR_MAX_RANKS */
    int32_t device;           /* CUDA device of this rank */
    int64_t buffer_bytes;     /* receive buffer per rank, both halves; 0 = 128 MiB */
    double timeout_s;         /* longest wait for a peer at one barrier; <= 0 = 30 s */
    int32_t max_blocks;       /* CUDA blocks per launch, 1..256; 0 = the device's multiprocessor count */
    int64_t oneshot_max_bytes; /* SSMTP_AR_AUTO: one-shot up to this many bytes; 0 = 1 MiB */
} ssmtp_ar_config_t;
ssmtp_status_t ssmtp_ar_init(ssmtp_ar_t **out, const ssmtp_ar_config_t *cfg);
ssmtp_status_t ssmtp_ar_ipc_handle(const ssmtp_ar_t *ar, void *out, size_t size);
ssmtp_status_t ssmtp_ar_open_peers(ssmtp_ar_t *ar, const void *handles, size_t size);
/* Largest number of elements of one chunk for (dtype, qdtype or -1, block, algo): informative, for tests. */
ssmtp_status_t ssmtp_ar_chunk_elems(const ssmtp_ar_t *ar, int32_t dtype, int32_t qdtype, int32_t block, int32_t algo,
                                    int64_t *elems);
/* out = sum over ranks of in; contiguous, same dtype (f32/f16/bf16) and numel; out may be in. */
ssmtp_status_t ssmtp_ar_all_reduce(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out, int32_t algo,
                                   void *stream);
/*
 * Block-scaled quantized all-reduce (qdtype SSMTP_DTYPE_I8 or SSMTP_DTYPE_F8E4M3, block 32/64/128/256 elements,
 * blocks counted from element 0 of the message). With ssmtp_quantize/ssmtp_dequantize semantics:
 *   out = dequantize(quantize(sum_r fp32(dequantize(quantize(in_r)))))   (sum in rank order, fp32)
 * i.e. every rank's payload is quantized once, the fp32 sum is requantized once, and all ranks hold the same bits.
 * Exact zeros stay zero; a block holding Inf/NaN on any rank becomes NaN in that block only.
 */
ssmtp_status_t ssmtp_ar_quant_all_reduce(ssmtp_ar_t *ar, const ssmtp_tensor_t *in, ssmtp_tensor_t *out,
                                         int32_t qdtype, int32_t block, int32_t algo, void *stream);
/* SSMTP_OK, or the recorded timeout/mismatch. sync = 1 also reads the device's error word (a blocking copy). */
ssmtp_status_t ssmtp_ar_check(ssmtp_ar_t *ar, int32_t sync);
/*
 * Measurement aid (benchmarks): move `bytes` from the first half of this rank's receive buffer into the second half
 * of rank (rank + 1) % ws's, on `stream`: mode 0 = copy engine (cudaMemcpyAsync over the IPC mapping), 1 = SM stores
 * of zeros (one block per multiprocessor), 2 = SM copy (local loads, remote stores). No cross-rank synchronisation;
 * it overwrites the peer's buffer, so only on a handle that no all-reduce is using. bytes <= half the buffer (the SM
 * modes move it rounded down to a multiple of 16).
 */
ssmtp_status_t ssmtp_ar_probe(ssmtp_ar_t *ar, int32_t mode, int64_t bytes, void *stream);
ssmtp_status_t ssmtp_ar_free(ssmtp_ar_t *ar);

/*
 * Mamba-2 SSD scan over a sequence (prefill; csrc/ssd.c): one scalar A and one dt per head, evaluated chunk by chunk
 * as the SSD algorithm does; fp32 state and accumulation. CUDA (csrc/cuda/ssd.cu): f16/bf16, headdim % 32 == 0,
 * d_state % 16 == 0 and <= 128 (else SSMTP_ERR_UNSUPPORTED), products on tensor cores with fp32 operands as hi + lo
 * TF32 terms (~fp32; see there); the GPU path does not check slots or lengths on the host: seq_lens are clamped to
 * 0..seqlen, a slot >= nslots gives NaN outputs and leaves the state untouched.
 *   x        (batch, seqlen, nheads, headdim)   f32/f16/bf16
 *   dt       (batch, seqlen, nheads)            same dtype as x; raw time step
 *   A        (nheads,) f32                      (= -exp(A_log))
 *   B, C     (batch, seqlen, ngroups, dstate)   same dtype as x; head h uses group h / (nheads / ngroups)
 *   D        (nheads,)                          optional, f32 or the dtype of x
 *   z        (batch, seqlen, nheads, headdim)   optional gate: y *= silu(z)
 *   dt_bias  (nheads,)                          optional, f32 or the dtype of x
 *   state    (nslots, nheads, headdim, dstate) f32  optional: initial state read when load_state, final written
 *   state_idx, seq_lens, out                    as for ssmtp_scan_fwd (out: the shape of x)
 *   chunk_size >= 1 tokens per chunk (the CPU's; the CUDA kernel chunks by its own tile); dt_min <= dt_max: the time
 *   step is clamped to [dt_min, dt_max] after the bias and the softplus (HF Mamba-2/Zamba2 prefill: dt_min = time_step_min, dt_max = +inf; no clamp: 0 and +inf).
 * Math per (b, h): delta_t = clamp(softplus?(dt_t + dt_bias)); H_t = exp(delta_t A) H_{t-1} + delta_t x_t B_t^T
 *   (headdim x dstate); y_t = H_t C_t + D x_t; y *= silu(z). Positions t >= n are written as zero.
 */
typedef struct {
    ssmtp_tensor_t x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, out;
    int32_t dt_softplus;
    int32_t load_state;
    int32_t chunk_size;
    float dt_min, dt_max;
} ssmtp_ssd_params_t;
ssmtp_status_t ssmtp_ssd_fwd(const ssmtp_ssd_params_t *p, void *stream);

/*
 * Mamba-2 decode step, in place on a slot-indexed fp32 state (csrc/ssd.c; CPU only: on the GPU the selective state
 * update computes the same step, A/dt/D expanded per channel).
 *   x, z (batch, nheads, headdim); dt (batch, nheads); B, C (batch, ngroups, dstate); A (nheads,) f32;
 *   D, dt_bias (nheads,); state (nslots, nheads, headdim, dstate) f32; state_idx (batch,) int32 optional (-1 =
 *   padding: state untouched, out zero); out (batch, nheads, headdim). One step of ssmtp_ssd_fwd's recurrence with
 *   its own clamp (HF's Mamba-2/Zamba2 decode does not clamp: dt_min = 0, dt_max = +inf).
 */
typedef struct {
    ssmtp_tensor_t x, dt, A, B, C, D, z, dt_bias, state, state_idx, out;
    int32_t dt_softplus;
    float dt_min, dt_max;
} ssmtp_ssd_step_params_t;
ssmtp_status_t ssmtp_ssd_step(const ssmtp_ssd_step_params_t *p, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* SSMTP_H */
