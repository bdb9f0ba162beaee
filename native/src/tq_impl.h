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
#include "tq-ggml.h" /* tq_attn_args */
#include "tq-math.h" /* fp16 conversions, canonical sums, scale decisions, block codecs (shared with CUDA) */

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

/* Kernels over whole blocks (nb blocks = nb * TQ_BLOCK values). */
typedef void (*tq_quantize_fn)(const float *x, void *y, size_t nb);
typedef void (*tq_dequantize_fn)(const void *y, float *x, size_t nb);
typedef float (*tq_dot_fn)(const float *q, const void *y, size_t nb);
typedef void (*tq_attn_fn)(const tq_attn_args *a); /* tq_ggml_attn_f32, arguments checked */

typedef struct {
    tq_quantize_fn quantize[TQ_TYPE_COUNT];
    tq_dequantize_fn dequantize[TQ_TYPE_COUNT];
    tq_dot_fn dot[TQ_TYPE_COUNT];
    tq_attn_fn attn;
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

/* A SIMD forward pass's level masks (bit k: subset k's level bit) to tq_tcq_forward's lev byte:
 * bits 0-3 of x to bits 0, 2, 4, 6 */
static const uint8_t tq_tcq_spread4[16] = {0x00, 0x01, 0x04, 0x05, 0x10, 0x11, 0x14, 0x15,
                                           0x40, 0x41, 0x44, 0x45, 0x50, 0x51, 0x54, 0x55};

/* tq2t/tq3t rows (s8 0), or tq2ts/tq3ts rows (s8 1), coded with a SIMD file's Viterbi forward pass
 * (which must find tq_tcq_forward's path) */
static inline void tq_tcq_quantize_rows(int bits, int s8, const float *x, void *vy, size_t nb,
                                        tq_tcq_forward_fn forward) {
    const size_t bytes = tq_tcq_block_bytes(bits, s8);
    uint8_t c[TQ_BLOCK];
    uint64_t u;
    for (size_t i = 0; i < nb; i++, x += TQ_BLOCK) {
        uint8_t *y = (uint8_t *)vy + i * bytes;
        if (s8) {
            const uint8_t e = tq_tcq_quantize_s8(bits, x, c, &u, TQ_SCALE_UNBIASED, forward);
            tq_tcq_store_s8(bits, e, c, u, y);
        } else {
            const tq_half d = tq_tcq_quantize_with(bits, x, c, &u, TQ_SCALE_UNBIASED, forward);
            tq_tcq_store(bits, d, c, u, y);
        }
    }
}

/* Scalar pieces the SIMD files reuse for the parts they do not vectorize (portable.c). */
void tq_quantize_blocks_rms(tq_type type, const float *x, void *y, size_t nb);
void tq_fwht_portable(float *x, size_t n); /* orthonormal: H*x/sqrt(n), n a power of two */
void tq_signs(uint64_t seed, uint8_t *sign_bits, size_t n);

#endif
