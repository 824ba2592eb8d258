// sample.cu - token sampling on the GPU: greedy / temperature / top-k / top-p with the counter-based Gumbel noise of
// csrc/sample_math.h. Semantics identical to the CPU reference in csrc/sample.c (ssmtp_sample in ssmtp.h).
//
// A row is one thread-block cluster of CL blocks (CL = 8 for a few rows, 1 once the rows fill the GPU), each block
// holding a slice of the row, in shared memory where it fits. Thresholds are found by bisection over the
// order-preserving keys of the values (logits, then masses): one pass over the slices per step, a count and a mass
// summed per block and then across the cluster. Once at most CAP entries lie above the search's lower bound they are
// gathered (in index order) into block 0, where one warp finishes the search over them. Every sum has a fixed order,
// so a row's token is the same run to run.
#include "common.cuh"

#include <cooperative_groups.h>

#include "sample_math.h"

namespace cg = cooperative_groups;

namespace {

constexpr int NT = 1024, NW = NT / 32, CAP = 2048, MAX_CL = 8;

struct SampleArgs {
    const void *logits;
    int64_t srow, V;
    const float *temp, *topp;
    const int64_t *topk, *seed, *step;
    int64_t *out;
    int64_t st, sk, sp, ss, sst, so;
    int ncache; // entries of its slice a block keeps in shared memory
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

// (value, index) with the larger value winning, the smaller index on a tie: an exact, order-free reduction.
__device__ __forceinline__ void better(float &b, int &i, float b2, int i2) {
    if (b2 > b || (b2 == b && i2 < i)) {
        b = b2;
        i = i2;
    }
}

// The cluster a row runs on: thread-block clusters on sm_90 and later, one block per row before (the launcher then
// asks for clusters of 1).
struct Cluster {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group g;
    __device__ Cluster() : g(cg::this_cluster()) {}
    __device__ int size() { return (int)g.num_blocks(); }
    __device__ int rank() { return (int)g.block_rank(); }
    __device__ void sync() { g.sync(); }
    template <typename P> __device__ P *at(P *p, int u) { return g.map_shared_rank(p, u); }
#else
    __device__ int size() { return 1; }
    __device__ int rank() { return 0; }
    __device__ void sync() { __syncthreads(); }
    template <typename P> __device__ P *at(P *p, int) { return p; }
#endif
};

// Each warp owns a contiguous segment of a set of N entries (lanes stride 32 through it): loads stay coalesced,
// and the warps' counts give every entry's place in an ordered compaction.
__device__ __forceinline__ void warp_segment(int N, int &b, int &e) {
    const int seg = ((N + NW - 1) / NW + 31) / 32 * 32;
    b = min(N, (int)(threadIdx.x / 32) * seg);
    e = min(N, b + seg);
}

template <typename T> __global__ void __launch_bounds__(NT) sample_kernel(const SampleArgs a) {
    extern __shared__ float row[]; // the first a.ncache entries of this block's slice: logits, later masses
    __shared__ float cv[CAP];      // block 0: the gathered candidates (in index order), logits or masses ...
    __shared__ int ci[CAP];        // ... and their indices in the row
    __shared__ int wc[2][NW];      // per-warp partials (two buffers: see reduce)
    __shared__ float wm[2][NW];
    __shared__ int cc[2]; // this block's totals, read by the cluster
    __shared__ float cm[2];
    Cluster cluster;
    const int CL = cluster.size(), q = cluster.rank();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t r = blockIdx.x / CL;
    const T *l = (const T *)a.logits + r * a.srow;
    const int V = (int)a.V, per = (V + CL - 1) / CL;
    const int s0 = min(V, q * per), nloc = min(V, s0 + per) - s0, ncache = min(nloc, a.ncache);
    int rb = 0;          // reduction buffer
    bool solo = CL == 1; // reductions stay in this block
    int nc = -1;         // >= 0: block 0 works on the nc gathered candidates alone (the other blocks have left)
    bool emode = false;  // the values are masses (top-p) instead of logits
    int b, e;

    // Sum (cnt, m) over the block and then the cluster, every thread getting the same totals. The block's partials
    // alternate between two buffers: a call's writes cannot race the previous call's reads, all of which finished
    // before this call's barrier could be passed (cluster.sync also orders the remote reads of cc / cm).
    auto reduce = [&](int &cnt, float &m, bool argmax) {
        if (argmax) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                better(m, cnt, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, cnt, o));
        } else {
            cnt = warp_sum(cnt);
            m = warp_sum(m);
        }
        if (lane == 0) {
            wc[rb][warp] = cnt;
            wm[rb][warp] = m;
        }
        __syncthreads();
        int tc = wc[rb][0];
        float tm = wm[rb][0];
        for (int w = 1; w < NW; w++) {
            if (argmax) better(tm, tc, wm[rb][w], wc[rb][w]);
            else {
                tc += wc[rb][w];
                tm = __fadd_rn(tm, wm[rb][w]);
            }
        }
        if (!solo) {
            if (threadIdx.x == 0) {
                cc[rb] = tc;
                cm[rb] = tm;
            }
            cluster.sync();
            tc = *cluster.at(&cc[rb], 0);
            tm = *cluster.at(&cm[rb], 0);
            for (int u = 1; u < CL; u++) {
                const int c2 = *cluster.at(&cc[rb], u);
                const float m2 = *cluster.at(&cm[rb], u);
                if (argmax) better(tm, tc, m2, c2);
                else {
                    tc += c2;
                    tm = __fadd_rn(tm, m2);
                }
            }
        }
        rb ^= 1;
        cnt = tc;
        m = tm;
    };

    // greedy: the first index of the largest logit (NaN never wins; nothing above -inf: index 0)
    float lmax = -INFINITY;
    int best = V;
    warp_segment(nloc, b, e);
    for (int j = b + lane; j < e; j += 32) {
        const float x = to_f32<T>(l[s0 + j]);
        if (j < ncache) row[j] = x;
        if (x > lmax) {
            lmax = x;
            best = s0 + j;
        }
    }
    reduce(best, lmax, true); // its barrier also publishes row[]
    const float T_ = a.temp[r * a.st];
    const float c = __fdiv_rn(1.f, T_);
    if (!(T_ > 0.f) || !isfinite(c) || !isfinite(lmax)) {
        if (q == 0 && threadIdx.x == 0) a.out[r * a.so] = lmax > -INFINITY ? best : 0;
        if (!solo) cluster.sync(); // no block leaves while another may still read its totals
        return;
    }

    uint32_t K = 0; // top-k: logits with a key >= K stay
    auto mass_of = [&](float x) {
        return !isnan(x) && ssmtp_fkey(x) >= K ? expf(__fmul_rn(__fsub_rn(x, lmax), c)) : -1.f;
    };
    auto value = [&](int j) -> float {
        if (nc >= 0) return cv[j];
        if (j < ncache) return row[j];
        const float x = to_f32<T>(l[s0 + j]);
        return emode ? mass_of(x) : x;
    };
    // Smallest key in [lo, hi] above which fewer than k entries (count mode) or less than pz of mass (mass mode)
    // lie; hi qualifies. Returns false in the blocks that left the search to block 0.
    __shared__ uint32_t slo;
    auto bisect = [&](uint32_t &lo, uint32_t hi, int64_t k, float pz, bool mass) {
        while (lo < hi) {
            if (nc >= 0) { // the candidates: one warp finishes the search (shuffles only, no block barriers)
                if (warp == 0) {
                    while (lo < hi) {
                        const uint32_t mid = lo + (hi - lo) / 2;
                        int cnt = 0;
                        float m = 0.f;
                        for (int j = lane; j < nc; j += 32) {
                            const float x = cv[j];
                            if (!isnan(x) && ssmtp_fkey(x) > mid) {
                                cnt++;
                                m = __fadd_rn(m, x);
                            }
                        }
                        cnt = warp_sum(cnt);
                        m = warp_sum(m);
                        if (mass ? m < pz : cnt < k) hi = mid;
                        else lo = mid + 1;
                    }
                    if (lane == 0) slo = lo;
                }
                __syncthreads();
                lo = slo;
                break;
            }
            const uint32_t mid = lo + (hi - lo) / 2;
            int cnt = 0;
            float m = 0.f;
            warp_segment(nc >= 0 ? nc : nloc, b, e);
            for (int j = b + lane; j < e; j += 32) {
                const float x = value(j);
                if (!isnan(x) && ssmtp_fkey(x) > mid) {
                    cnt++;
                    m = __fadd_rn(m, x);
                }
            }
            reduce(cnt, m, false);
            if (mass ? m < pz : cnt < k) {
                hi = mid;
                continue;
            }
            lo = mid + 1;
            if (nc >= 0 || cnt > CAP) continue;
            // gather the entries above mid, in index order, into block 0's candidate lists
            const int pb = rb ^ 1; // the buffers that reduce just filled
            int base = 0;
            if (!solo)
                for (int u = 0; u < q; u++) base += *cluster.at(&cc[pb], u);
            for (int w = 0; w < warp; w++) base += wc[pb][w];
            float *cv0 = solo ? cv : cluster.at(cv, 0);
            int *ci0 = solo ? ci : cluster.at(ci, 0);
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
                    cv0[pos] = x;
                    ci0[pos] = s0 + j;
                }
                base += __popc(bal);
            }
            if (solo) __syncthreads();
            else cluster.sync(); // block 0's lists complete; nothing reads another block's memory after this
            if (q != 0) return false;
            solo = true;
            nc = cnt;
        }
        return true;
    };

    const int64_t k = a.topk[r * a.sk];
    if (k > 0 && k < a.V && !bisect(K, ssmtp_fkey(lmax), k, 0.f, false)) return;
    const float tp = a.topp[r * a.sp];
    uint32_t Ke = ssmtp_fkey(0.f); // top-p: masses with a key >= Ke stay
    if (tp < 1.f) {
        int unused = 0;
        float z = 0.f; // the top-k set's mass
        warp_segment(nc >= 0 ? nc : nloc, b, e);
        for (int j = b + lane; j < e; j += 32) {
            const float m = mass_of(value(j));
            if (nc >= 0) cv[j] = m;
            else if (j < ncache) row[j] = m;
            if (m >= 0.f) z = __fadd_rn(z, m);
        }
        emode = true;
        reduce(unused, z, false); // its barrier also publishes the masses
        if (!bisect(Ke, ssmtp_fkey(1.f), 0, __fmul_rn(tp, z), true)) return;
    }

    // the token: the largest logit * c + noise over what stayed (the first index on a tie)
    const uint32_t h = ssmtp_noise_row(a.seed[r * a.ss], a.step[r * a.sst]);
    float zb = -INFINITY;
    int tok = V;
    warp_segment(nc >= 0 ? nc : nloc, b, e);
    for (int j = b + lane; j < e; j += 32) {
        const float y = value(j);
        const bool keep = emode ? y >= 0.f && ssmtp_fkey(y) >= Ke : !isnan(y) && ssmtp_fkey(y) >= K;
        if (!keep) continue;
        const int v = nc >= 0 ? ci[j] : s0 + j;
        const float x = emode ? to_f32<T>(l[v]) : y;
        const float zv = __fadd_rn(__fmul_rn(x, c), ssmtp_gumbel(h, v));
        if (tok == V || zv > zb) {
            zb = zv;
            tok = v;
        }
    }
    reduce(tok, zb, true);
    if (q == 0 && threadIdx.x == 0) a.out[r * a.so] = tok;
    if (!solo) cluster.sync(); // no block leaves while another may still read its totals
}

// The greedy rule alone (ssmtp_argmax): a row is a cluster of CL blocks, each scanning a slice of it (NT threads,
// coalesced loads, four in flight per thread), its (value, index) reduced over the warp, the block and the cluster
// with `better` (larger value, then smaller index: the first index of the largest logit, as a serial scan gives).
// Launched with programmatic dependent launch: the cluster is resident while the kernel that writes the logits
// finishes. No shared copy of the row and no bisection, which is what makes it cheaper than sample_kernel for greedy
// rows.
template <typename T>
__global__ void __launch_bounds__(NT) argmax_kernel(const T *__restrict__ logits, int64_t srow, int V,
                                                     int64_t *__restrict__ out, int64_t so) {
    __shared__ float wm[NW];
    __shared__ int wi[NW];
    __shared__ float bm; // this block's result, read by the cluster's block 0
    __shared__ int bi;
    Cluster cluster;
    const int CL = cluster.size(), q = cluster.rank();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t r = blockIdx.x / CL;
    const T *l = logits + r * srow;
    const int per = (V + CL - 1) / CL, s0 = min(V, q * per), e0 = min(V, s0 + per);
    constexpr int U = 4;
    ssm_pdl_trigger();
    ssm_pdl_wait();
    float m = -INFINITY;
    int best = V; // none yet: a row with nothing above -inf ends at V, written as 0
    for (int64_t j = s0 + threadIdx.x; j < e0; j += U * NT) { // 64-bit: j + U NT may pass 2^31 near V's limit
        float x[U];
#pragma unroll
        for (int u = 0; u < U; u++) x[u] = j + u * NT < e0 ? to_f32<T>(l[j + u * NT]) : -INFINITY;
#pragma unroll
        for (int u = 0; u < U; u++)
            if (x[u] > m) { // NaN never wins; indices grow within a thread, so the first maximum stays
                m = x[u];
                best = (int)(j + u * NT);
            }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(m, best, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, best, o));
    if (lane == 0) {
        wm[warp] = m;
        wi[warp] = best;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < NW; w++) better(m, best, wm[w], wi[w]);
        bm = m;
        bi = best;
    }
    if (CL == 1) {
        if (threadIdx.x == 0) out[r * so] = best == V ? 0 : best;
        return;
    }
    cluster.sync();
    if (q == 0 && threadIdx.x == 0) {
        for (int u = 1; u < CL; u++) better(m, best, *cluster.at(&bm, u), *cluster.at(&bi, u));
        out[r * so] = best == V ? 0 : best;
    }
    cluster.sync(); // no block leaves while block 0 may still read its result
}

// What a per-row launcher needs of the device (made current): its SM count, and the compute capability's major (0
// when unknown); and the blocks per row for n rows: up to MAX_CL while the rows leave SMs idle, 1 before sm_90 (no
// thread-block clusters).
ssmtp_status_t row_device(int dev, int64_t n, int *sms, int *major, int *cl) {
    SSMTP_TRY(ssmtp_cuda_set_device(dev));
    *sms = 132;
    SSMTP_TRY(ssm_sm_count(dev, sms));
    if (cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        *major = 0;
    }
    *cl = 1;
    while (*major >= 9 && *cl < MAX_CL && n * *cl * 2 <= *sms) *cl *= 2;
    return SSMTP_OK;
}

// The launch of n rows as clusters of cl blocks of NT threads: the cluster attribute from sm_90 on, programmatic
// dependent launch when pdl. Used in place (cfg.attrs points into attr).
struct RowLaunch {
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr[2];
    RowLaunch(int64_t n, int cl, int major, size_t smem, cudaStream_t s, bool pdl) : cfg{} {
        cfg.gridDim = dim3((unsigned)(n * cl));
        cfg.blockDim = dim3(NT);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = s;
        int na = 0;
        if (major >= 9) {
            attr[na].id = cudaLaunchAttributeClusterDimension;
            attr[na].val.clusterDim.x = (unsigned)cl;
            attr[na].val.clusterDim.y = 1;
            attr[na].val.clusterDim.z = 1;
            na++;
        }
        if (pdl) {
            attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            attr[na].val.programmaticStreamSerializationAllowed = 1;
            na++;
        }
        cfg.attrs = attr;
        cfg.numAttrs = na;
    }
    RowLaunch(const RowLaunch &) = delete;
};

} // namespace

extern "C" ssmtp_status_t ssmtp_cuda_sample(const ssmtp_sample_params_t *p, void *stream) {
    const int64_t n = p->logits.shape[0];
    if (n == 0) return SSMTP_OK;
    const int dev = p->logits.device;
    int sms, major, CL;
    SSMTP_TRY(row_device(dev, n, &sms, &major, &CL));
    const char *env = getenv("SSMTP_SAMPLE_CLUSTER"); // override (tests, benchmarks): 1, 2, 4 or 8
    if (env && *env) {
        CL = atoi(env);
        if (CL != 1 && CL != 2 && CL != 4 && CL != 8)
            return ssmtp_fail(SSMTP_ERR_INVALID, "SSMTP_SAMPLE_CLUSTER=%s: expected 1, 2, 4 or 8", env);
        if (major < 9) CL = 1;
    }
    if (n * CL > 2147483647LL)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "sample: %lld rows on CUDA, at most 2^31 / %d", (long long)n, CL);
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
    // as much of each block's slice in shared memory as fits beside the static arrays
    int optin = 48 * 1024;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        optin = 48 * 1024;
    }
    const int64_t per = (a.V + CL - 1) / CL;
    const int64_t fit = ((int64_t)optin - (CAP * 8 + 2048)) / (int64_t)sizeof(float);
    a.ncache = (int)(per < fit ? per : (fit > 0 ? fit : 0));
    const size_t smem = (size_t)a.ncache * sizeof(float);
    RowLaunch L(n, CL, major, smem, (cudaStream_t)stream, false);
    SSMTP_DISPATCH_FLOAT(p->logits.dtype, T, "sample", {
        SSMTP_TRY(ssm_allow_smem((const void *)sample_kernel<T>, smem, dev));
        const cudaError_t err = cudaLaunchKernelEx(&L.cfg, sample_kernel<T>, a);
        (void)cudaGetLastError();
        if (err != cudaSuccess) return ssmtp_fail(SSMTP_ERR_CUDA, "sample: kernel launch: %s", cudaGetErrorString(err));
    });
    return SSMTP_OK;
}

extern "C" ssmtp_status_t ssmtp_cuda_argmax(const ssmtp_argmax_params_t *p, void *stream) {
    const int64_t n = p->logits.shape[0];
    if (n == 0) return SSMTP_OK;
    const int dev = p->logits.device;
    int sms, major, CL;
    SSMTP_TRY(row_device(dev, n, &sms, &major, &CL));
    if (n * CL > 2147483647LL)
        return ssmtp_fail(SSMTP_ERR_UNSUPPORTED, "argmax: %lld rows on CUDA, at most 2^31 / %d", (long long)n, CL);
    RowLaunch L(n, CL, major, 0, (cudaStream_t)stream, ssmtp_pdl_enabled(dev));
    const int V = (int)p->logits.shape[1];
    const int64_t srow = p->logits.stride[0], so = p->out.stride[0];
    int64_t *out = (int64_t *)p->out.data;
    SSMTP_DISPATCH_FLOAT(p->logits.dtype, T, "argmax", {
        const cudaError_t err = cudaLaunchKernelEx(&L.cfg, argmax_kernel<T>, (const T *)p->logits.data, srow, V, out,
                                                   so);
        (void)cudaGetLastError();
        if (err != cudaSuccess) return ssmtp_fail(SSMTP_ERR_CUDA, "argmax: kernel launch: %s", cudaGetErrorString(err));
    });
    return SSMTP_OK;
}
