/* tq-ggml.h: the TurboQuant row functions in the exact shapes of ggml's type traits, so the
 * llama.cpp patch only points table rows at them:
 *   from_float_ref / from_float : void (const float * x, void * y, int64_t k)
 *   to_float                    : void (const void * x, float * y, int64_t k)
 *   vec_dot (vec_dot_type F32)  : void (int n, float * s, size_t bs, const void * x, size_t bx,
 *                                       const void * y, size_t by, int nrc)
 *   quantize (chunk)            : size_t (const float * src, void * dst, int64_t nrows,
 *                                         int64_t n_per_row, const float * imatrix)
 * k, n and n_per_row are multiples of TQ_BLOCK (ggml checks blck_size). The `_ref` quantizer is
 * the portable code; the others use the best ISA of the running CPU. Both produce identical bytes.
 * vec_dot's y is a row of f32: the query stays exact (no q8 re-quantization of Q).
 */
#ifndef TQ_GGML_H
#define TQ_GGML_H

#include <stddef.h>
#include <stdint.h>

#include "turboquant.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_GGML_DECLARE(t)                                                                      \
    TQ_API void tq_ggml_quantize_row_##t##_ref(const float *x, void *y, int64_t k);             \
    TQ_API void tq_ggml_quantize_row_##t(const float *x, void *y, int64_t k);                   \
    TQ_API void tq_ggml_dequantize_row_##t(const void *x, float *y, int64_t k);                 \
    TQ_API void tq_ggml_vec_dot_##t##_f32(int n, float *s, size_t bs, const void *vx, size_t bx, \
                                          const void *vy, size_t by, int nrc);                  \
    TQ_API size_t tq_ggml_quantize_##t(const float *src, void *dst, int64_t nrows, int64_t n_per_row, \
                                       const float *imatrix);

TQ_GGML_DECLARE(tq2)
TQ_GGML_DECLARE(tq3)
TQ_GGML_DECLARE(tq4)
TQ_GGML_DECLARE(tq3j)
TQ_GGML_DECLARE(tq4j)

#undef TQ_GGML_DECLARE

#ifdef __cplusplus
}
#endif

#endif
