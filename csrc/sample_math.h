/*
 * sample_math.h - the pieces of token sampling that the CPU reference (csrc/sample.c) and the CUDA kernel
 * (csrc/cuda/sample.cu) must compute identically: the counter-based Gumbel noise and the order-preserving keys of
 * fp32 values. Semantics: ssmtp_sample in ssmtp.h.
 */
#ifndef SSMTP_SAMPLE_MATH_H
#define SSMTP_SAMPLE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SSMTP_SAMPLE_FN static __host__ __device__ __forceinline__
#else
#define SSMTP_SAMPLE_FN static inline
#endif

/* lowbias32: a 32-bit integer hash */
SSMTP_SAMPLE_FN uint32_t ssmtp_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

/* the per-row part of the noise hash: a function of (seed, step) */
SSMTP_SAMPLE_FN uint32_t ssmtp_noise_row(int64_t seed, int64_t step) {
    const uint64_t s = (uint64_t)seed;
    uint32_t h = ssmtp_mix32((uint32_t)s ^ ssmtp_mix32((uint32_t)(s >> 32) ^ 0x9E3779B9u));
    return ssmtp_mix32(h ^ ssmtp_mix32((uint32_t)(uint64_t)step));
}

/* Gumbel(0, 1) noise of vocabulary id v in a row whose hash is h */
SSMTP_SAMPLE_FN float ssmtp_gumbel(uint32_t h, int64_t v) {
    const uint32_t bits = ssmtp_mix32(h ^ ssmtp_mix32((uint32_t)(uint64_t)v ^ 0x85EBCA6Bu));
    const float u = ((float)(bits >> 8) + 0.5f) * (1.0f / 16777216.0f); /* (0, 1) */
    return -logf(-logf(u));
}

/* An unsigned key with key(a) < key(b) iff a < b for non-NaN fp32 values (-0 sorts just below +0). */
SSMTP_SAMPLE_FN uint32_t ssmtp_fkey(float f) {
    uint32_t u;
#ifdef __CUDA_ARCH__
    u = __float_as_uint(f);
#else
    memcpy(&u, &f, sizeof u);
#endif
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#endif
