// conv1d.cu - causal depthwise conv1d (width 2..4, bias, SiLU) on the GPU, continuing from and writing a
// slot-indexed conv state. Semantics: ssmtp_conv1d_fwd in csrc/ssmtp.h; CPU reference: csrc/conv1d.c.
//
// Two kernels:
//   prefill: one thread per (sequence, channel, time chunk). Consecutive threads are consecutive channels, so with
//            the model's layout (x, out channel-contiguous: stride[1] == 1) every load and store of a warp is one
//            contiguous run; other strides work, uncoalesced. A thread reads the width-1 inputs before its chunk
//            (from x, or from the state history for t < 0), so chunks are independent; only the thread of chunk 0
//            touches the state (reads the history, then writes the new state), so there is no race on it.
//            When out aliases x (allowed when identical) the sequence is one chunk, read before it is written.
//   decode:  seqlen == 1: one thread per (sequence, channel) (1, 2 or 4 channels per thread in the fixed-row variant
//            at large batch x dim): read the state row, write one output, shift the row.
//            A state of width-1 or width columns (ours, HF's) takes a variant with the row length fixed at compile
//            time (the whole row loaded at once, vectorised when aligned); other lengths a generic loop.
//            Launched with PDL (sm_90+): conv weights and bias are loaded before griddepcontrol.wait; state_idx,
//            seq_lens, x and the state are read, and out and the state written, only after it.
// Bytes (bf16): prefill 2+2 B per (channel, step) plus state; at ~16 B/clk/SM of HBM bandwidth this leaves ~30
// instructions per element, hence the MUFU-based SiLU.
#include "common.cuh"
#include "ssm_math.cuh"

#define OP "conv1d_fwd"

namespace {

struct ConvArgs {
    const void *x, *w, *bias;
    void *state;
    const int32_t *state_idx, *seq_lens;
    void *out;
    int64_t batch, dim, len, nslots, slen;
    int64_t sx0, sx1, sx2, so0, so1, so2, sw0, sw1, sb0, ss0, ss1, ss2, sidx, slens;
    int64_t chunk; // time steps per prefill thread
    int silu, load_state;
    SaveArgs sv; // optional intermediate states, see ssmtp.h
};

constexpr int PREFILL_THREADS = 128;
constexpr int DECODE_THREADS = 256;

__device__ __forceinline__ void seq_info(const ConvArgs &a, int64_t b, int64_t *slot, int64_t *n) {
    *slot = a.state_idx ? (int64_t)a.state_idx[b * a.sidx] : b;
    int64_t len = a.len;
    if (a.seq_lens) {
        len = a.seq_lens[b * a.slens];
        len = len < 0 ? 0 : (len > a.len ? a.len : len); // out-of-range lengths are clamped (no host check on GPU)
    }
    *n = len;
}

// New state column j (of slen) = last slen columns of [history (slen cols, or zeros); x[0:n]]. Written in place in
// ascending j: column j reads old column j + n >= j, not yet overwritten.
template <typename T>
__device__ __forceinline__ void write_state(const ConvArgs &a, T *st, const T *x, int64_t n) {
    for (int64_t j = 0; j < a.slen; j++) {
        const int64_t src = n - a.slen + j;
        T v;
        if (src >= 0) v = x[src * a.sx2];
        else if (a.load_state) v = st[(j + n) * a.ss2];
        else v = from_f32<T>(0.f);
        st[j * a.ss2] = v;
    }
}

template <typename T, int W>
__global__ void __launch_bounds__(PREFILL_THREADS) conv1d_prefill_kernel(const ConvArgs a) {
    const int64_t c = (int64_t)blockIdx.x * PREFILL_THREADS + threadIdx.x;
    const int64_t b = blockIdx.z;
    const int64_t t_beg = (int64_t)blockIdx.y * a.chunk;
    if (c >= a.dim || t_beg >= a.len) return;
    const int64_t t_end = min(t_beg + a.chunk, a.len);
    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    T *out = (T *)a.out + b * a.so0 + c * a.so1;
    if (a.state && (slot < 0 || slot >= a.nslots)) { // padding row: zeros; bad slot: NaN (state untouched)
        const T fill = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        for (int64_t t = t_beg; t < t_end; t++) out[t * a.so2] = fill;
        return;
    }
    const T *x = (const T *)a.x + b * a.sx0 + c * a.sx1;
    T *st = a.state ? (T *)a.state + slot * a.ss0 + c * a.ss1 : nullptr;
    float w[W];
#pragma unroll
    for (int k = 0; k < W; k++) w[k] = to_f32<T>(((const T *)a.w)[c * a.sw0 + k * a.sw1]);
    const float bias = a.bias ? to_f32<T>(((const T *)a.bias)[c * a.sb0]) : 0.f;
    // h[k]: input at t_beg - (W-1) + k (history from the state for negative positions).
    float h[W - 1];
#pragma unroll
    for (int k = 0; k < W - 1; k++) {
        const int64_t t = t_beg - (W - 1) + k;
        if (t >= 0) h[k] = t < n ? to_f32<T>(x[t * a.sx2]) : 0.f;
        else h[k] = a.load_state ? to_f32<T>(st[(a.slen + t) * a.ss2]) : 0.f;
    }
    if (blockIdx.y == 0 && st && a.sv.pos) { // intermediate states: the window after pos steps (old history)
        for (int64_t j = 0; j < a.sv.n; j++) {
            const int64_t sv = a.sv.slot_at(b, j), pos = a.sv.pos_at(b, j);
            if (sv < 0 || sv >= a.nslots || sv == slot || pos < 1 || pos > n) continue; // broken entries: skipped
            T *dst = (T *)a.state + sv * a.ss0 + c * a.ss1;
            for (int64_t k = 0; k < a.slen; k++) {
                const int64_t src = pos - a.slen + k;
                T v = from_f32<T>(0.f);
                if (src >= 0) v = x[src * a.sx2];
                else if (a.load_state) v = st[(a.slen + src) * a.ss2];
                dst[k * a.ss2] = v;
            }
        }
    }
    if (blockIdx.y == 0 && st) write_state<T>(a, st, x, n); // after the history read, before out (may alias x)
    const int64_t t_val = max(t_beg, min(t_end, n));
    int64_t t = t_beg;
    // 8 steps at a time: 8 independent loads in flight per thread, then 8 outputs (measured on H200, 2026-11-23,
    // bf16, d 5120: 16 at a time was 3-7% slower except at B=8 L=2048 (2.5% faster), 32 at a time 9-40% slower).
    for (; t + 8 <= t_val; t += 8) {
        float xv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) xv[u] = to_f32<T>(x[(t + u) * a.sx2]);
#pragma unroll
        for (int u = 0; u < 8; u++) {
            float acc = bias;
#pragma unroll
            for (int k = 0; k < W - 1; k++) acc = fmaf(w[k], h[k], acc);
            acc = fmaf(w[W - 1], xv[u], acc);
#pragma unroll
            for (int k = 0; k + 1 < W - 1; k++) h[k] = h[k + 1];
            h[W - 2] = xv[u];
            out[(t + u) * a.so2] = from_f32<T>(a.silu ? ssm_silu_out<T>(acc) : acc);
        }
    }
    for (; t < t_val; t++) {
        const float xv = to_f32<T>(x[t * a.sx2]);
        float acc = bias;
#pragma unroll
        for (int k = 0; k < W - 1; k++) acc = fmaf(w[k], h[k], acc);
        acc = fmaf(w[W - 1], xv, acc);
#pragma unroll
        for (int k = 0; k + 1 < W - 1; k++) h[k] = h[k + 1];
        h[W - 2] = xv;
        out[t * a.so2] = from_f32<T>(a.silu ? ssm_silu_out<T>(acc) : acc);
    }
    for (t = t_val; t < t_end; t++) out[t * a.so2] = from_f32<T>(0.f);
}

// seqlen == 1 (decode, or a one-token prefill). One thread per (sequence, channel), channel fastest.
template <typename T, int W>
__global__ void __launch_bounds__(DECODE_THREADS) conv1d_decode_kernel(const ConvArgs a) {
    ssm_pdl_trigger();
    const int64_t i = (int64_t)blockIdx.x * DECODE_THREADS + threadIdx.x;
    if (i >= a.batch * a.dim) return;
    const int64_t b = i / a.dim, c = i - b * a.dim;
    float w[W]; // parameters: read before the wait
#pragma unroll
    for (int k = 0; k < W; k++) w[k] = to_f32<T>(((const T *)a.w)[c * a.sw0 + k * a.sw1]);
    const float bias = a.bias ? to_f32<T>(((const T *)a.bias)[c * a.sb0]) : 0.f;
    ssm_pdl_wait();
    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    T *out = (T *)a.out + b * a.so0 + c * a.so1;
    if (a.state && (slot < 0 || slot >= a.nslots)) {
        *out = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        return;
    }
    const T *x = (const T *)a.x + b * a.sx0 + c * a.sx1;
    const T xraw = *x;
    float acc = bias;
    T *st = a.state ? (T *)a.state + slot * a.ss0 + c * a.ss1 : nullptr;
#pragma unroll
    for (int k = 0; k < W - 1; k++) {
        const float hk = a.load_state ? to_f32<T>(st[(a.slen - (W - 1) + k) * a.ss2]) : 0.f;
        acc = fmaf(w[k], hk, acc);
    }
    acc = fmaf(w[W - 1], to_f32<T>(xraw), acc);
    if (st) write_state<T>(a, st, x, n);
    *out = from_f32<T>(n > 0 ? (a.silu ? ssm_silu_out<T>(acc) : acc) : 0.f);
}

// Decode with a state of S = width-1 or width columns (ours, HF's) known at compile time: the whole state row is
// loaded at once (one 4/8/16-byte access when VB > 0 bytes and aligned, else S scalar loads), then shifted in
// registers and stored: no load waits behind a store. seqlen == 1, so n is 0 or 1.
template <int B> struct VecOf;
template <> struct VecOf<4> { using type = uint32_t; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<16> { using type = uint4; };

// CPT channels per thread (1, 2 or 4): channels cq, cq + dq, ... (dq = ceil(dim / CPT)), so each load instruction of
// a warp still reads consecutive channels; the sequence's slot and length are read once, and a thread has CPT state
// rows in flight instead of one (the kernel waits two dependent loads - slot, then state - per thread).
template <typename T, int W, int S, int VB, int CPT>
__global__ void __launch_bounds__(DECODE_THREADS) conv1d_decode_fixed_kernel(const ConvArgs a) {
    ssm_pdl_trigger();
    const int64_t dq = (a.dim + CPT - 1) / CPT;
    const int64_t i = (int64_t)blockIdx.x * DECODE_THREADS + threadIdx.x;
    if (i >= a.batch * dq) return;
    const int64_t b = i / dq, cq = i - b * dq;
    float w[CPT][W], bias[CPT]; // parameters: read before the wait
#pragma unroll
    for (int j = 0; j < CPT; j++) {
        const int64_t c = cq + j * dq < a.dim ? cq + j * dq : cq;
#pragma unroll
        for (int k = 0; k < W; k++) w[j][k] = to_f32<T>(((const T *)a.w)[c * a.sw0 + k * a.sw1]);
        bias[j] = a.bias ? to_f32<T>(((const T *)a.bias)[c * a.sb0]) : 0.f;
    }
    ssm_pdl_wait();
    int64_t slot, n;
    seq_info(a, b, &slot, &n);
    if (slot < 0 || slot >= a.nslots) {
#pragma unroll
        for (int j = 0; j < CPT; j++) {
            const int64_t c = cq + j * dq;
            if (c < a.dim)
                ((T *)a.out)[b * a.so0 + c * a.so1] = from_f32<T>(slot < 0 ? 0.f : __int_as_float(0x7fc00000));
        }
        return;
    }
    T xraw[CPT], old[CPT][S];
#pragma unroll
    for (int j = 0; j < CPT; j++) { // every load first
        const int64_t c = cq + j * dq < a.dim ? cq + j * dq : cq;
        xraw[j] = ((const T *)a.x)[b * a.sx0 + c * a.sx1];
        const T *st = (const T *)a.state + slot * a.ss0 + c * a.ss1;
        if (!a.load_state) {
#pragma unroll
            for (int q = 0; q < S; q++) old[j][q] = from_f32<T>(0.f);
        } else if constexpr (VB > 0) {
            using V = typename VecOf<VB>::type;
            const V v = *(const V *)st;
            memcpy(old[j], &v, sizeof old[j]);
        } else {
#pragma unroll
            for (int q = 0; q < S; q++) old[j][q] = st[q * a.ss2];
        }
    }
#pragma unroll
    for (int j = 0; j < CPT; j++) {
        const int64_t c = cq + j * dq;
        if (c >= a.dim) continue;
        T *st = (T *)a.state + slot * a.ss0 + c * a.ss1;
        T nw[S];
        const float acc = ssm_conv_step<T, W, S>(w[j], bias[j], old[j], xraw[j], nw);
        if (n <= 0) {
#pragma unroll
            for (int q = 0; q < S; q++) nw[q] = old[j][q];
        }
        if constexpr (VB > 0) {
            using V = typename VecOf<VB>::type;
            V v;
            memcpy(&v, nw, sizeof nw);
            *(V *)st = v;
        } else {
#pragma unroll
            for (int q = 0; q < S; q++) st[q * a.ss2] = nw[q];
        }
        ((T *)a.out)[b * a.so0 + c * a.so1] = from_f32<T>(n > 0 ? (a.silu ? ssm_silu_out<T>(acc) : acc) : 0.f);
    }
}

// Channels per thread of the fixed-row decode kernel: SSMTP_CONV_CPT (1, 2 or 4), or by the row count: 4 from ~3k
// (sequence, channel) pairs per SM, 2 from ~1.2k, else 1. Measured on H200 (2026-11-24, bench_ops.py, bf16,
// benchmarks/results/conv-cpt-h200-*.json), us at 1 / 2 / 4: mamba-2.8b B=256 11.4 / 10.5 / 9.5, B=64 4.0 / 3.4 /
// 3.6; falcon-mamba-7b B=256 17.2 / 15.5 / 14.2, B=64 5.4 / 5.2 / 4.5; TP=2 shard of mamba-2.8b B=64 2.6 / 2.6 / 2.9;
// B <= 8 1 best (by 0.1-0.5 us). Engine decode step, mamba-2.8b: 7.831 / 7.727 / 7.665 ms at B=256, 4.348 / 4.305 /
// 4.306 at B=64.
static int conv_cpt(int64_t pairs, int device) {
    const char *env = getenv("SSMTP_CONV_CPT");
    if (env && *env) {
        const int v = atoi(env);
        return v == 1 || v == 2 || v == 4 ? v : -1;
    }
    int sms = 132;
    if (ssm_sm_count(device, &sms) != SSMTP_OK) sms = 132;
    return pairs >= (int64_t)sms * 3072 ? 4 : pairs >= (int64_t)sms * 1200 ? 2 : 1;
}

template <typename T, int W, int S, int CPT>
ssmtp_status_t launch_decode_cpt(const ConvArgs &a, bool pdl, cudaStream_t s) {
    constexpr int bytes = S * (int)sizeof(T);
    constexpr int VB = (bytes == 4 || bytes == 8 || bytes == 16) ? bytes : 0;
    const bool aligned = a.ss2 == 1 && ((uintptr_t)a.state % (VB ? VB : 1)) == 0 &&
                         (a.ss0 * (int64_t)sizeof(T)) % (VB ? VB : 1) == 0 &&
                         (a.ss1 * (int64_t)sizeof(T)) % (VB ? VB : 1) == 0;
    const int64_t nthreads = a.batch * ((a.dim + CPT - 1) / CPT);
    const int64_t grid = (nthreads + DECODE_THREADS - 1) / DECODE_THREADS;
    if (grid > 0x7fffffff) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch*dim=%lld too large", (long long)nthreads);
    return ssmtp_launch(OP, VB > 0 && aligned ? conv1d_decode_fixed_kernel<T, W, S, VB, CPT>
                                              : conv1d_decode_fixed_kernel<T, W, S, 0, CPT>,
                        (unsigned)grid, DECODE_THREADS, 0, s, pdl, a);
}

template <typename T, int W, int S> ssmtp_status_t launch_decode_fixed(const ConvArgs &a, bool pdl, cudaStream_t s) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) (void)cudaGetLastError();
    switch (conv_cpt(a.batch * a.dim, device)) {
    case 1: return launch_decode_cpt<T, W, S, 1>(a, pdl, s);
    case 2: return launch_decode_cpt<T, W, S, 2>(a, pdl, s);
    case 4: return launch_decode_cpt<T, W, S, 4>(a, pdl, s);
    default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": SSMTP_CONV_CPT=%s (1, 2 or 4)", getenv("SSMTP_CONV_CPT"));
    }
}

template <typename T, int W> ssmtp_status_t launch(const ConvArgs &a, int64_t nchunks, bool pdl, cudaStream_t s) {
    if (a.len == 1 && !a.sv.pos) {
        const int64_t nthreads = a.batch * a.dim;
        const int64_t grid = (nthreads + DECODE_THREADS - 1) / DECODE_THREADS;
        if (grid > 0x7fffffff) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch*dim=%lld too large", (long long)nthreads);
        if (a.state && a.slen == W) return launch_decode_fixed<T, W, W>(a, pdl, s);
        if (a.state && a.slen == W - 1) return launch_decode_fixed<T, W, W - 1>(a, pdl, s);
        return ssmtp_launch(OP, conv1d_decode_kernel<T, W>, (unsigned)grid, DECODE_THREADS, 0, s, pdl, a);
    } else {
        const dim3 grid((unsigned)((a.dim + PREFILL_THREADS - 1) / PREFILL_THREADS), (unsigned)nchunks,
                        (unsigned)a.batch);
        conv1d_prefill_kernel<T, W><<<grid, PREFILL_THREADS, 0, s>>>(a);
    }
    SSMTP_CUDA_CHECK_LAUNCH(OP);
    return SSMTP_OK;
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_conv1d_fwd(const ssmtp_conv1d_params_t *p, void *stream) {
    SSMTP_TRY(ssmtp_cuda_set_device(p->x.device));
    ConvArgs a;
    memset(&a, 0, sizeof a);
    a.x = p->x.data;
    a.w = p->weight.data;
    a.bias = p->bias.data;
    a.state = p->state.data;
    a.state_idx = (const int32_t *)p->state_idx.data;
    a.seq_lens = (const int32_t *)p->seq_lens.data;
    a.out = p->out.data;
    a.batch = p->x.shape[0];
    a.dim = p->x.shape[1];
    a.len = p->x.shape[2];
    a.sx0 = p->x.stride[0]; a.sx1 = p->x.stride[1]; a.sx2 = p->x.stride[2];
    a.so0 = p->out.stride[0]; a.so1 = p->out.stride[1]; a.so2 = p->out.stride[2];
    a.sw0 = p->weight.stride[0]; a.sw1 = p->weight.stride[1];
    if (a.bias) a.sb0 = p->bias.stride[0];
    if (a.state) {
        a.nslots = p->state.shape[0];
        a.slen = p->state.shape[2];
        a.ss0 = p->state.stride[0]; a.ss1 = p->state.stride[1]; a.ss2 = p->state.stride[2];
    }
    if (a.state_idx) a.sidx = p->state_idx.stride[0];
    if (a.seq_lens) a.slens = p->seq_lens.stride[0];
    a.silu = p->silu;
    a.load_state = p->load_state;
    a.sv = ssm_save_args(p->save_pos, p->save_idx);
    if (a.batch == 0 || a.dim == 0 || a.len == 0) return SSMTP_OK;
    if (a.batch > 65535) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": batch=%lld > 65535", (long long)a.batch);

    // Prefill chunking: enough threads for ~2 per SM thread slot (measured: not needed beyond), each taking at least
    // 64 steps (fewer loads of the width-1 halo per step, longer runs of loads), or 32 where 64 would leave fewer
    // than 2^17 threads. Measured on H200 (bf16, mamba-2.8b shapes, 2026-11-23), 64 against 32 steps: B=8 L=512
    // 37.6 -> 31.3 us side by side; in bench_ops runs of a8c196d (32) and bb2c01d (64): B=8 L=512 38.1 -> 31.0 us,
    // TP=2 shard B=1 L=8192 40.4 -> 31.0 us, B=1 L=2048 16.9 -> 15.3 us, but B=1 L=512 7.3 -> 9.6 us and TP=2 shard
    // B=1 L=2048 9.4 -> 10.2 us (41k / 82k threads), hence the fallback. Aliased in/out: one chunk.
    // Measured and not kept: 8 bf16 channels per thread with 16-byte loads and stores (578f896, chunks of 8-64 steps;
    // benchmarks/results/conv-prefill-vec-h200-578f896.json): slower on most shapes (B=1 L=512 14.2-21.5 vs 8.2 us,
    // B=8 L=512 36.7-47.0 vs 30.6; eight times fewer threads, each with eight times the work), faster only at B=1
    // L >= 8192 (L=32768 194 vs 221 us); engine TTFT prefix hit 16.8-17.0 vs 15.9-16.2 ms.
    int64_t nchunks = 1;
    if (a.len > 1 && p->out.data != p->x.data) {
        int sms = 132;
        SSMTP_TRY(ssm_sm_count(p->x.device, &sms));
        const int64_t want = (int64_t)sms * 2048 * 2;
        const int64_t rows = a.batch * a.dim;
        nchunks = (want + rows - 1) / rows;
        int64_t max_chunks = (a.len + 63) / 64;
        if (max_chunks * rows < (1 << 17)) max_chunks = (a.len + 31) / 32;
        if (nchunks > max_chunks) nchunks = max_chunks;
        if (nchunks < 1) nchunks = 1;
        // SSMTP_CONV_CHUNK: steps per chunk, overriding the above (benchmarks). Measured on H200 (2026-11-25,
        // benchmarks/results/ttft-token-ids-h200-ab.json), 16 steps against the default: B=1 L=512 7.7 vs 8.3 us
        // (mamba-2.8b), 6.1 vs 7.3 (its TP=2 shard), but L=2048 21.3 vs 17.1 and B=8 L=512 39.0 vs 30.8; the prefix
        // hit's 896-step bucket 732 vs 757-766 us over the 64 layers: not worth a rule.
        const char *env = getenv("SSMTP_CONV_CHUNK");
        if (env && *env && atoll(env) > 0) nchunks = (a.len + atoll(env) - 1) / atoll(env);
    }
    a.chunk = (a.len + nchunks - 1) / nchunks;
    nchunks = (a.len + a.chunk - 1) / a.chunk;
    if (nchunks > 65535) return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": seqlen=%lld too long", (long long)a.len);

    cudaStream_t s = (cudaStream_t)stream;
    const bool pdl = ssmtp_pdl_enabled(p->x.device);
    const int width = (int)p->weight.shape[1];
    SSMTP_DISPATCH_FLOAT(p->x.dtype, T, OP, {
        switch (width) {
        case 2: return launch<T, 2>(a, nchunks, pdl, s);
        case 3: return launch<T, 3>(a, nchunks, pdl, s);
        case 4: return launch<T, 4>(a, nchunks, pdl, s);
        default: return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, OP ": width=%d unsupported on CUDA", width);
        }
    });
    return SSMTP_OK;
}
