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
TQ_GGML_DECLARE(tq2t)
TQ_GGML_DECLARE(tq3t)
TQ_GGML_DECLARE(tq2ts)
TQ_GGML_DECLARE(tq3ts)

#undef TQ_GGML_DECLARE

/* Flash attention over tq K and V rows for a few query rows that share them (decode and small
 * batches; ggml-cpu's one-chunk path): the codes are decoded once per key for every row, with an
 * online softmax per row. For key j (0 <= j < n_kv) and row r:
 *   s = scale * (<q[r], k_j> + <qb[r], kb_j> if kb); s = softcap * tanh(s) if softcap != 0;
 *   s += slope[r] * mask[r][j]
 * (mask fp16, NULL for none; a key at -inf is skipped), then M[r], S[r] and acc[r] are updated
 * as ggml's loop does: acc[r] = sum_j exp(s_j - M[r]) * v_j, S[r] = sum_j exp(s_j - M[r]).
 * M, S and acc carry over between calls (start: -inf, 0, zeros), so a caller may split the keys. */
#define TQ_ATTN_MAX_ROWS 16
#define TQ_ATTN_MAX_DIM 512

typedef struct {
    int k_type, v_type;           /* tq_type of the K rows and of the V rows */
    int dk, dv;                   /* head sizes: multiples of TQ_BLOCK, <= TQ_ATTN_MAX_DIM */
    int n_rows;                   /* query rows, 1..TQ_ATTN_MAX_ROWS */
    const float *q[TQ_ATTN_MAX_ROWS];        /* dk floats each (already rotated, not scaled) */
    const uint16_t *mask[TQ_ATTN_MAX_ROWS];  /* n_kv fp16 values each, or NULL */
    float slope[TQ_ATTN_MAX_ROWS];
    const void *k, *v;            /* key 0's K row and V row */
    size_t k_stride, v_stride;    /* bytes from one key's row to the next */
    int64_t n_kv;
    float scale, softcap;
    float *M, *S;                 /* [n_rows] */
    float *acc;                   /* [n_rows][dv] */
    /* the part of <q, key> that the K rows do not hold (keys centred before RoPE: the mean turned to
     * each key's position, tq-kv-center.h), or kb NULL: nb floats per row and per key, nb a
     * multiple of 32 */
    const float *qb[TQ_ATTN_MAX_ROWS];
    const float *kb;              /* key 0's row */
    size_t kb_stride;             /* bytes from one key's row to the next */
    int nb;
} tq_attn_args;

/* TQ_ERR_NULL, TQ_ERR_TYPE or TQ_ERR_LENGTH (a head size, n_rows or n_kv out of range) before
 * touching anything; TQ_OK after the update. */
TQ_API tq_status tq_ggml_attn_f32(const tq_attn_args *args);

#ifdef __cplusplus
}
#endif

#endif
