/* Internal: the kernel table, per-ISA entry points, and the arithmetic every ISA shares.
 *
 * Bit-identical codes across ISAs rest on one canonical order of arithmetic, which the portable
 * code spells out and every SIMD file reproduces:
 *   - block sums use 16 lanes, lane l adding j = l, l+16, l+32, l+48 in that order, then the
 *     lanes fold in halves (l += l+8, then +4, +2, +1); products and sums round separately
 *     (no FMA: the library is built with -ffp-contract=off);
 *   - a code is the number of decision boundaries strictly below x * (1/scale).
 * Dot products need not be bit-identical; their bound is stated in tests/test_native_isa.py.
 */
#ifndef TQ_IMPL_H
#define TQ_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "turboquant.h"
#include "tq-codebooks.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define TQ_IS_X86 1
#else
#define TQ_IS_X86 0
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define TQ_IS_AARCH64 1
#else
#define TQ_IS_AARCH64 0
#endif

#define TQ_INLINE static inline __attribute__((always_inline))

#define TQ_FP16_MAX 65504.0f
#define TQ_HALF_NAN 0x7e00u
/* The QJL sign pattern's seed: a fixed constant, independent of any rotation seed. */
#define TQ_QJL_SEED 0x9e3779b97f4a7c15ull

/* Kernels over whole blocks (nb blocks = nb * TQ_BLOCK values). */
typedef void (*tq_quantize_fn)(const float *x, void *y, size_t nb);
typedef void (*tq_dequantize_fn)(const void *y, float *x, size_t nb);
typedef float (*tq_dot_fn)(const float *q, const void *y, size_t nb);

typedef struct {
    tq_quantize_fn quantize[TQ_TYPE_COUNT];
    tq_dequantize_fn dequantize[TQ_TYPE_COUNT];
    tq_dot_fn dot[TQ_TYPE_COUNT];
} tq_kernels;

/* Each ISA file overwrites the entries it implements; the rest stay from the level below. */
void tq_kernels_portable(tq_kernels *k);
#if TQ_IS_X86 && !defined(TQ_NO_AVX2)
void tq_kernels_avx2(tq_kernels *k);
#endif
#if TQ_IS_X86 && !defined(TQ_NO_AVX512)
void tq_kernels_avx512(tq_kernels *k);
#endif
#if TQ_IS_AARCH64 && !defined(TQ_NO_NEON)
void tq_kernels_neon(tq_kernels *k);
#endif

/* The active table (resolved once, thread-safe) and the portable one. */
const tq_kernels *tq_active_kernels(void);
const tq_kernels *tq_portable_kernels(void);

/* Scalar pieces the SIMD files reuse for the parts they do not vectorize (portable.c). */
void tq_quantize_blocks_rms(tq_type type, const float *x, void *y, size_t nb);
void tq_fwht_portable(float *x, size_t n); /* orthonormal: H*x/sqrt(n), n a power of two */
void tq_signs(uint64_t seed, uint8_t *sign_bits, size_t n);

/* ---- fp16 <-> fp32, round to nearest even, the same bits as F16C / NEON ---- */

TQ_INLINE float tq_fp16_to_fp32(tq_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal half: man * 2^-24, exact in float */
        float f = (float)man * (1.0f / 16777216.0f);
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

TQ_INLINE tq_half tq_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (tq_half)(sign | (ax > 0x7f800000u ? TQ_HALF_NAN : 0x7c00u));
    if (ax >= 0x477ff000u) return (tq_half)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
    if (ax < 0x38800000u) {                                   /* below 2^-14: half subnormal */
        if (ax < 0x33000000u) return (tq_half)sign;           /* below 2^-25: zero */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t h = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (tq_half)(sign | h);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (tq_half)(sign | h);
}

TQ_INLINE float tq_fold16(float acc[16]) {
    for (int h = 8; h >= 1; h >>= 1)
        for (int i = 0; i < h; i++) acc[i] = acc[i] + acc[i + h];
    return acc[0];
}

TQ_INLINE const float *tq_codebook_for(int bits) {
    switch (bits) {
    case 1: return TQ_CODEBOOK_1;
    case 2: return TQ_CODEBOOK_2;
    case 3: return TQ_CODEBOOK_3;
    default: return TQ_CODEBOOK_4;
    }
}

TQ_INLINE const float *tq_bounds_for(int bits) {
    switch (bits) {
    case 1: return TQ_BOUNDS_1;
    case 2: return TQ_BOUNDS_2;
    case 3: return TQ_BOUNDS_3;
    default: return TQ_BOUNDS_4;
    }
}

/* Scale decisions shared by every ISA, given the block's canonical sum of squares:
 * returns 0 for a zero block, 1 for a normal one (*rms, *inv = 1/rms), and 2 for a block past
 * the fp16 range (codes against 65504, no refit). */
TQ_INLINE int tq_first_scale(float sumsq, float *inv, float *rms) {
    if (sumsq == 0.0f) return 0;
    float r = sqrtf(sumsq * (1.0f / TQ_BLOCK));
    if (r > TQ_FP16_MAX) { /* also catches sumsq overflowing to +inf */
        *rms = TQ_FP16_MAX;
        *inv = 1.0f / TQ_FP16_MAX;
        return 2;
    }
    *rms = r;
    *inv = 1.0f / r;
    return 1;
}

/* Least-squares scale for fixed codes: d = <x, c> / <c, c>; falls back to `fallback` if the
 * products underflow. */
TQ_INLINE float tq_lsq_scale(float xc, float cc, float fallback) {
    float d = xc / cc;
    return d > 0.0f && d < INFINITY ? d : fallback;
}

TQ_INLINE tq_half tq_store_scale(float d) {
    return tq_fp32_to_fp16(d > TQ_FP16_MAX ? TQ_FP16_MAX : d);
}

#endif
