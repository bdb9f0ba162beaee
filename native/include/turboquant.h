/* turboquant.h: the public C API of the TurboQuant codec (arXiv 2504.19874).
 *
 * Vectors are coded in blocks of TQ_BLOCK = 64 values (tq-blocks.h). The row functions code
 * values that are already rotated (inside llama.cpp the graph rotates Q/K/V); tq_encode /
 * tq_decode / tq_inner_product add the seeded randomized Hadamard rotation for standalone use.
 *
 * Every function that can fail returns a tq_status; tq_strerror() names the problem.
 * Defined results for unusual input (also what the ggml row functions in tq-ggml.h do):
 *   - an all-zero block codes to all-zero bytes and decodes to zeros;
 *   - a block holding a NaN or an infinity codes with d = NaN and decodes to NaNs
 *     (tq_quantize / tq_encode refuse such input with TQ_ERR_NONFINITE instead);
 *   - a block whose scale exceeds the fp16 range (65504) is coded with d = 65504, so its
 *     largest values saturate; scales under fp16's smallest subnormal (6e-8) flush to 0.
 */
#ifndef TURBOQUANT_H
#define TURBOQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "tq-blocks.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define TQ_API
#else
#define TQ_API __attribute__((visibility("default")))
#endif

#define TQ_VERSION_STRING "0.1.0"

typedef enum {
    TQ_TYPE_TQ2 = 0, /* 2-bit codes, 2.25 bits/value  */
    TQ_TYPE_TQ3 = 1, /* 3-bit codes, 3.25 bits/value  */
    TQ_TYPE_TQ4 = 2, /* 4-bit codes, 4.25 bits/value  */
    TQ_TYPE_TQ3J = 3, /* QJL: 2-bit codes + 1-bit residual signs, 3.5 bits/value */
    TQ_TYPE_TQ4J = 4, /* QJL: 3-bit codes + 1-bit residual signs, 4.5 bits/value */
    TQ_TYPE_TQ2T = 5, /* trellis-coded (TCQ), 2 bits/value: 2.25 bits/value */
    TQ_TYPE_TQ3T = 6, /* trellis-coded (TCQ), 3 bits/value: 3.25 bits/value */
    TQ_TYPE_TQ2TS = 7, /* tq2t's codes with an 8-bit scale: 2.125 bits/value */
    TQ_TYPE_TQ3TS = 8, /* tq3t's codes with an 8-bit scale: 3.125 bits/value */
    TQ_TYPE_COUNT = 9
} tq_type;

typedef enum {
    TQ_OK = 0,
    TQ_ERR_NULL = 1,      /* a required pointer is NULL */
    TQ_ERR_TYPE = 2,      /* not a tq_type */
    TQ_ERR_LENGTH = 3,    /* length is not a positive multiple of TQ_BLOCK */
    TQ_ERR_DIM = 4,       /* rotation size is not a power of two in [64, 1024] */
    TQ_ERR_NONFINITE = 5, /* input holds NaN or infinity */
    TQ_ERR_ISA = 6,       /* the requested instruction set is not available on this CPU/build */
    TQ_ERR_BITS = 7       /* no codebook for that bit width */
} tq_status;

/* Instruction sets, as bits of a mask. */
enum {
    TQ_ISA_PORTABLE = 0,
    TQ_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    TQ_ISA_AVX512 = 2, /* AVX-512 F + BW + VL (needs AVX2 too) */
    TQ_ISA_NEON = 4    /* AArch64 Advanced SIMD */
};

TQ_API const char *tq_version(void);
TQ_API const char *tq_strerror(tq_status status);

/* The type table. */
TQ_API const char *tq_type_name(tq_type type);                /* "tq3", or NULL */
TQ_API int tq_type_from_name(const char *name);               /* tq_type, or -1 */
TQ_API size_t tq_block_bytes(tq_type type);                   /* bytes per TQ_BLOCK values, 0 if unknown */
TQ_API int tq_code_bits(tq_type type);                        /* bits of the MSE code (2..4), 0 if unknown */
TQ_API int tq_is_qjl(tq_type type);                           /* 1 for the QJL types */
TQ_API double tq_bits_per_value(tq_type type);                /* every byte counted, scales included */
TQ_API size_t tq_row_bytes(tq_type type, size_t n);           /* bytes for n values (n % TQ_BLOCK == 0) */

/* Lloyd-Max centroids for `bits` (1..4) at unit variance, ascending: 2^bits floats into out. */
TQ_API tq_status tq_codebook(int bits, float *out, size_t cap);
/* Its expected squared error per value at unit variance (RMS scale), 0 if bits is not 1..4. */
TQ_API double tq_code_mse(int bits);

/* Rows of already-rotated values; n is a positive multiple of TQ_BLOCK. */
TQ_API tq_status tq_quantize(tq_type type, const float *x, void *y, size_t n);
TQ_API tq_status tq_dequantize(tq_type type, const void *y, float *x, size_t n);
TQ_API tq_status tq_dot(tq_type type, const float *q, const void *y, size_t n, float *out);

/* Quantize with the scale set to the block RMS alone (the paper's norm scaling) instead of the
 * type's own scale (tq2/tq3/tq4: the unbiased scale <x,x>/<x,c>, so that <x, x_hat> = <x, x>;
 * tq3j/tq4j: the least-squares refit): kept to measure what the own scale buys. */
TQ_API tq_status tq_quantize_rms_scale(tq_type type, const float *x, void *y, size_t n);

/* Seeded randomized Hadamard rotation y = H * diag(signs(seed)) * x / sqrt(d), and its inverse. */
TQ_API tq_status tq_rotate(const float *x, float *y, size_t d, uint64_t seed);
TQ_API tq_status tq_unrotate(const float *y, float *x, size_t d, uint64_t seed);

/* The full transform on one d-dim vector: rotate, then code in d/64 blocks; and back. */
TQ_API tq_status tq_encode(tq_type type, const float *x, void *y, size_t d, uint64_t seed);
TQ_API tq_status tq_decode(tq_type type, const void *y, float *x, size_t d, uint64_t seed);
/* <q, x> estimated from the code of x: rotates q once, then a code-domain dot product. */
TQ_API tq_status tq_inner_product(tq_type type, const float *q, const void *y, size_t d, uint64_t seed, float *out);

/* CPU dispatch. */
TQ_API unsigned tq_cpu_isa_available(void); /* mask of ISAs this CPU and this build can run */
TQ_API unsigned tq_isa_active(void);        /* the ISA the kernels use now (one bit, 0 = portable) */
TQ_API const char *tq_isa_name(unsigned isa);
/* Use exactly this ISA (tests and benchmarks); TQ_ERR_ISA if it cannot run here. */
TQ_API tq_status tq_force_isa(unsigned isa);
/* Back to the best available ISA. */
TQ_API void tq_reset_isa(void);

#ifdef __cplusplus
}
#endif

#endif
