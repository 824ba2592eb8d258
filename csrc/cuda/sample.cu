// sample.cu - token sampling on the GPU: one block per row, greedy / temperature / top-k / top-p with the
// counter-based Gumbel noise of csrc/sample_math.h. Semantics identical to the CPU reference in csrc/sample.c
// (ssmtp_sample in ssmtp.h); every sum has a fixed order, so a row's token is the same run to run.
#include "common.cuh"

#include "sample_math.h"

namespace {

constexpr int NT = 1024, NW = NT / 32;

struct SampleArgs {
    const void *logits;
    int64_t srow, V;
    const float *temp, *topp;
    const int64_t *topk, *seed, *step;
    int64_t *out;
    int64_t st, sk, sp, ss, sst, so;
};

__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, the same value in every thread (warp sums, then the warps in order). Two buffers: a call's
// writes cannot race the previous call's reads, which all finished before this call's barrier was reached.
template <typename U> __device__ __forceinline__ U block_sum(U v, U (*sm)[NW], int &buf) {
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) sm[buf][threadIdx.x / 32] = v;
    __syncthreads();
    U t = 0;
#pragma unroll 8
    for (int i = 0; i < NW; i++) t = t + sm[buf][i];
    buf ^= 1;
    return t;
}

// (value, index) with the larger value winning, the smaller index on a tie: an exact, order-free reduction.
__device__ __forceinline__ void better(float &b, int &i, float b2, int i2) {
    if (b2 > b || (b2 == b && i2 < i)) {
        b = b2;
        i = i2;
    }
}
__device__ __forceinline__ void block_argmax(float &b, int &i, float (*sb)[NW], int (*si)[NW], int &buf) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(b, i, __shfl_xor_sync(0xffffffffu, b, o), __shfl_xor_sync(0xffffffffu, i, o));
    if (threadIdx.x % 32 == 0) {
        sb[buf][threadIdx.x / 32] = b;
        si[buf][threadIdx.x / 32] = i;
    }
    __syncthreads();
    b = sb[buf][0];
    i = si[buf][0];
    for (int w = 1; w < NW; w++) better(b, i, sb[buf][w], si[buf][w]);
    buf ^= 1;
}

template <typename T> __global__ void __launch_bounds__(NT) sample_kernel(const SampleArgs a) {
    __shared__ int scnt[2][NW];
    __shared__ float ssum[2][NW], sbest[2][NW];
    __shared__ int sidx[2][NW];
    int bc = 0, bs = 0, ba = 0;
    const int64_t row = blockIdx.x;
    const T *l = (const T *)a.logits + row * a.srow;
    const int V = (int)a.V;

    // greedy: the first index of the largest logit (NaN never wins; nothing above -inf: index 0)
    float lmax = -INFINITY;
    int best = V;
    for (int v = threadIdx.x; v < V; v += NT) {
        const float x = to_f32<T>(l[v]);
        if (x > lmax) {
            lmax = x;
            best = v;
        }
    }
    block_argmax(lmax, best, sbest, sidx, ba);
    const float T_ = a.temp[row * a.st];
    const float c = __fdiv_rn(1.f, T_);
    if (!(T_ > 0.f) || !isfinite(c) || !isfinite(lmax)) {
        if (threadIdx.x == 0) a.out[row * a.so] = lmax > -INFINITY ? best : 0;
        return;
    }
    const uint32_t kmax = ssmtp_fkey(lmax);
    uint32_t K = 0;
    const int64_t k = a.topk[row * a.sk];
    if (k > 0 && k < a.V) { // smallest key with fewer than k tokens above it
        uint32_t hi = kmax;
        while (K < hi) {
            const uint32_t mid = K + (hi - K) / 2;
            int cnt = 0;
            for (int v = threadIdx.x; v < V; v += NT) {
                const float x = to_f32<T>(l[v]);
                cnt += !isnan(x) && ssmtp_fkey(x) > mid;
            }
            if (block_sum(cnt, scnt, bc) < k) hi = mid;
            else K = mid + 1;
        }
    }
    const float tp = a.topp[row * a.sp];
    if (tp < 1.f) { // smallest key whose mass above it is below top_p of the top-k set's mass
        float z = 0.f;
        for (int v = threadIdx.x; v < V; v += NT) {
            const float x = to_f32<T>(l[v]);
            if (!isnan(x) && ssmtp_fkey(x) >= K) z = __fadd_rn(z, expf(__fmul_rn(__fsub_rn(x, lmax), c)));
        }
        const float pz = __fmul_rn(tp, block_sum(z, ssum, bs));
        uint32_t hi = kmax;
        while (K < hi) {
            const uint32_t mid = K + (hi - K) / 2;
            float m = 0.f;
            for (int v = threadIdx.x; v < V; v += NT) {
                const float x = to_f32<T>(l[v]);
                if (!isnan(x) && ssmtp_fkey(x) > mid) m = __fadd_rn(m, expf(__fmul_rn(__fsub_rn(x, lmax), c)));
            }
            if (block_sum(m, ssum, bs) < pz) hi = mid;
            else K = mid + 1;
        }
    }
    const uint32_t h = ssmtp_noise_row(a.seed[row * a.ss], a.step[row * a.sst]);
    float zb = -INFINITY;
    int tok = V;
    for (int v = threadIdx.x; v < V; v += NT) {
        const float x = to_f32<T>(l[v]);
        if (isnan(x) || ssmtp_fkey(x) < K) continue;
        const float zv = __fadd_rn(__fmul_rn(x, c), ssmtp_gumbel(h, v));
        if (tok == V || zv > zb) {
            zb = zv;
            tok = v;
        }
    }
    block_argmax(zb, tok, sbest, sidx, ba);
    if (threadIdx.x == 0) a.out[row * a.so] = tok;
}

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_sample(const ssmtp_sample_params_t *p, void *stream) {
    const int64_t n = p->logits.shape[0];
    if (n == 0) return SSMTP_OK;
    if (n > 2147483647LL)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "sample: %lld rows on CUDA, at most 2^31 - 1", (long long)n);
    SSMTP_TRY(ssmtp_cuda_set_device(p->logits.device));
    SampleArgs a = {};
    a.logits = p->logits.data;
    a.srow = p->logits.stride[0];
    a.V = p->logits.shape[1];
    a.temp = (const float *)p->temperature.data;
    a.topp = (const float *)p->top_p.data;
    a.topk = (const int64_t *)p->top_k.data;
    a.seed = (const int64_t *)p->seed.data;
    a.step = (const int64_t *)p->step.data;
    a.out = (int64_t *)p->out.data;
    a.st = p->temperature.stride[0];
    a.sk = p->top_k.stride[0];
    a.sp = p->top_p.stride[0];
    a.ss = p->seed.stride[0];
    a.sst = p->step.stride[0];
    a.so = p->out.stride[0];
    cudaStream_t s = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->logits.dtype, T, "sample", { sample_kernel<T><<<(unsigned)n, NT, 0, s>>>(a); });
    SSMTP_CUDA_CHECK_LAUNCH("sample");
    return SSMTP_OK;
}
