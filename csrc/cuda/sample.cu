// sample.cu - token sampling on the GPU: one block per row, greedy / temperature / top-k / top-p with the
// counter-based Gumbel noise of csrc/sample_math.h. Semantics identical to the CPU reference in csrc/sample.c
// (ssmtp_sample in ssmtp.h); every sum has a fixed order, so a row's token is the same run to run.
#include "common.cuh"

#include "sample_math.h"

namespace {

constexpr int NT = 1024, NW = NT / 32, CAP = 2048;

struct SampleArgs {
    const void *logits;
    int64_t srow, V;
    const float *temp, *topp;
    const int64_t *topk, *seed, *step;
    int64_t *out;
    int64_t st, sk, sp, ss, sst, so;
    int cached;
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

// Each warp owns a contiguous segment of a set of N entries (multiple of 32 long; lanes stride 32 through it): loads
// stay coalesced, and the warps' counts give every entry's place in an ordered compaction.
__device__ __forceinline__ void warp_segment(int N, int &b, int &e) {
    const int seg = ((N + NW - 1) / NW + 31) / 32 * 32;
    b = min(N, (int)(threadIdx.x / 32) * seg);
    e = min(N, b + seg);
}

template <typename T> __global__ void __launch_bounds__(NT) sample_kernel(const SampleArgs a) {
    extern __shared__ float row[]; // the row's logits (fp32) when a.cached, later their masses
    __shared__ float cv[CAP];      // candidates (ordered by index): logits, later masses ...
    __shared__ int ci[CAP];        // ... and their indices
    __shared__ int scnt[2][NW];
    __shared__ float ssum[2][NW], sbest[2][NW];
    __shared__ int sidx[2][NW];
    int bc = 0, bs = 0, ba = 0;
    const int lane = threadIdx.x % 32;
    const int64_t r = blockIdx.x;
    const T *l = (const T *)a.logits + r * a.srow;
    const int V = (int)a.V;
    const bool cached = a.cached;
    int b, e;

    // greedy: the first index of the largest logit (NaN never wins; nothing above -inf: index 0)
    float lmax = -INFINITY;
    int best = V;
    warp_segment(V, b, e);
    for (int v = b + lane; v < e; v += 32) {
        const float x = to_f32<T>(l[v]);
        if (cached) row[v] = x;
        if (x > lmax) {
            lmax = x;
            best = v;
        }
    }
    block_argmax(lmax, best, sbest, sidx, ba); // its barrier also publishes row[]
    const float T_ = a.temp[r * a.st];
    const float c = __fdiv_rn(1.f, T_);
    if (!(T_ > 0.f) || !isfinite(c) || !isfinite(lmax)) {
        if (threadIdx.x == 0) a.out[r * a.so] = lmax > -INFINITY ? best : 0;
        return;
    }

    int nc = -1;        // -1: the set is the whole row; else the nc candidates in cv / ci
    bool emode = false; // the set's values are masses (top-p) instead of logits
    uint32_t K = 0;     // top-k: logits with a key >= K stay
    auto mass_of = [&](float x) {
        return !isnan(x) && ssmtp_fkey(x) >= K ? expf(__fmul_rn(__fsub_rn(x, lmax), c)) : -1.f;
    };
    auto value = [&](int j) -> float {
        if (nc >= 0) return cv[j];
        if (cached) return row[j];
        const float x = to_f32<T>(l[j]);
        return emode ? mass_of(x) : x;
    };
    // Smallest key in [lo, hi] above which fewer than k entries (count mode) or less than pz of mass (mass mode)
    // lie; hi qualifies. Once the entries at or above lo fit in cv, they are compacted there (in index order) and
    // the search goes on over them alone.
    auto bisect = [&](uint32_t lo, uint32_t hi, int64_t k, float pz, bool mass) {
        while (lo < hi) {
            const uint32_t mid = lo + (hi - lo) / 2;
            int cnt = 0;
            float m = 0.f;
            warp_segment(nc >= 0 ? nc : V, b, e);
            for (int j = b + lane; j < e; j += 32) {
                const float x = value(j);
                if (!isnan(x) && ssmtp_fkey(x) > mid) {
                    cnt++;
                    m = __fadd_rn(m, x);
                }
            }
            const int tc = block_sum(cnt, scnt, bc); // each warp's count stays in scnt[bc ^ 1]
            const bool ok = mass ? block_sum(m, ssum, bs) < pz : tc < k;
            if (ok) {
                hi = mid;
                continue;
            }
            lo = mid + 1;
            if (nc >= 0 || tc > CAP) continue;
            int base = 0;
            for (int w = 0; w < (int)(threadIdx.x / 32); w++) base += scnt[bc ^ 1][w];
            for (int j0 = b; j0 < e; j0 += 32) {
                const int j = j0 + lane;
                float x = 0.f;
                bool f = false;
                if (j < e) {
                    x = value(j);
                    f = !isnan(x) && ssmtp_fkey(x) > mid;
                }
                const unsigned bal = __ballot_sync(0xffffffffu, f);
                if (f) {
                    const int pos = base + __popc(bal & ((1u << lane) - 1u));
                    cv[pos] = x;
                    ci[pos] = j;
                }
                base += __popc(bal);
            }
            __syncthreads();
            nc = tc;
        }
        return lo;
    };

    const int64_t k = a.topk[r * a.sk];
    if (k > 0 && k < a.V) K = bisect(0u, ssmtp_fkey(lmax), k, 0.f, false);
    const float tp = a.topp[r * a.sp];
    uint32_t Ke = 0; // top-p: masses with a key >= Ke stay
    if (tp < 1.f) {
        float z = 0.f; // the top-k set's mass
        warp_segment(nc >= 0 ? nc : V, b, e);
        for (int j = b + lane; j < e; j += 32) {
            const float m = mass_of(value(j));
            if (nc >= 0) cv[j] = m;
            else if (cached) row[j] = m;
            if (m >= 0.f) z = __fadd_rn(z, m);
        }
        emode = true;
        const float pz = __fmul_rn(tp, block_sum(z, ssum, bs)); // its barrier also publishes the masses
        Ke = bisect(ssmtp_fkey(0.f), ssmtp_fkey(1.f), 0, pz, true);
    }

    // the token: the largest logit * c + noise over what stayed (the first index on a tie)
    const uint32_t h = ssmtp_noise_row(a.seed[r * a.ss], a.step[r * a.sst]);
    float zb = -INFINITY;
    int tok = V;
    warp_segment(nc >= 0 ? nc : V, b, e);
    for (int j = b + lane; j < e; j += 32) {
        const float y = value(j);
        const bool keep = emode ? y >= 0.f && ssmtp_fkey(y) >= Ke : !isnan(y) && ssmtp_fkey(y) >= K;
        if (!keep) continue;
        const int v = nc >= 0 ? ci[j] : j;
        const float x = emode ? to_f32<T>(l[v]) : y;
        const float zv = __fadd_rn(__fmul_rn(x, c), ssmtp_gumbel(h, v));
        if (tok == V || zv > zb) {
            zb = zv;
            tok = v;
        }
    }
    block_argmax(zb, tok, sbest, sidx, ba);
    if (threadIdx.x == 0) a.out[r * a.so] = tok;
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
    // the row in shared memory when it fits beside the candidate lists (mamba's 50280 entries do on sm_90)
    const int dev = p->logits.device;
    int optin = 48 * 1024;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        optin = 48 * 1024;
    }
    const size_t row_bytes = (size_t)a.V * sizeof(float);
    const size_t static_bytes = CAP * 8 + 2048;
    a.cached = row_bytes + static_bytes <= (size_t)optin;
    const size_t smem = a.cached ? row_bytes : 0;
    cudaStream_t s = (cudaStream_t)stream;
    SSMTP_DISPATCH_FLOAT(p->logits.dtype, T, "sample", {
        SSMTP_TRY(ssm_allow_smem((const void *)sample_kernel<T>, smem, dev));
        sample_kernel<T><<<(unsigned)n, NT, smem, s>>>(a);
    });
    SSMTP_CUDA_CHECK_LAUNCH("sample");
    return SSMTP_OK;
}
