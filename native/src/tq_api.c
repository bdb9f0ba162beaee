/* Public entry points: the type table, argument checks, then calls through the kernel table. */
#include <stdlib.h>

#include "tq-ggml.h"
#include "tq_impl.h"

/* One row per type. */
static const struct {
    const char *name;
    int code_bits; /* bits of the MSE code */
    int qjl;       /* 1: + 1 residual sign bit per value and an fp16 residual norm */
    size_t bytes;
} TYPES[TQ_TYPE_COUNT] = {
    [TQ_TYPE_TQ2] = {"tq2", 2, 0, sizeof(block_tq2)},
    [TQ_TYPE_TQ3] = {"tq3", 3, 0, sizeof(block_tq3)},
    [TQ_TYPE_TQ4] = {"tq4", 4, 0, sizeof(block_tq4)},
    [TQ_TYPE_TQ3J] = {"tq3j", 2, 1, sizeof(block_tq3j)},
    [TQ_TYPE_TQ4J] = {"tq4j", 3, 1, sizeof(block_tq4j)},
    [TQ_TYPE_TQ2T] = {"tq2t", 2, 0, sizeof(block_tq2t)},
    [TQ_TYPE_TQ3T] = {"tq3t", 3, 0, sizeof(block_tq3t)},
    [TQ_TYPE_TQ2TS] = {"tq2ts", 2, 0, sizeof(block_tq2ts)},
    [TQ_TYPE_TQ3TS] = {"tq3ts", 3, 0, sizeof(block_tq3ts)},
};

#define VALID(t) ((unsigned)(t) < TQ_TYPE_COUNT)

const char *tq_version(void) { return TQ_VERSION_STRING; }

const char *tq_strerror(tq_status s) {
    switch (s) {
    case TQ_OK: return "ok";
    case TQ_ERR_NULL: return "a required pointer is NULL";
    case TQ_ERR_TYPE: return "unknown TurboQuant type";
    case TQ_ERR_LENGTH: return "length must be a positive multiple of the block size 64";
    case TQ_ERR_DIM: return "rotation size must be a power of two from 64 to 1024";
    case TQ_ERR_NONFINITE: return "input contains NaN or infinity";
    case TQ_ERR_ISA: return "that instruction set is not available on this CPU or in this build";
    case TQ_ERR_BITS: return "no codebook for that bit width (1 to 4)";
    }
    return "unknown status";
}

const char *tq_type_name(tq_type t) { return VALID(t) ? TYPES[t].name : NULL; }

int tq_type_from_name(const char *name) {
    if (!name) return -1;
    for (int t = 0; t < TQ_TYPE_COUNT; t++)
        if (strcmp(name, TYPES[t].name) == 0) return t;
    return -1;
}

size_t tq_block_bytes(tq_type t) { return VALID(t) ? TYPES[t].bytes : 0; }
int tq_code_bits(tq_type t) { return VALID(t) ? TYPES[t].code_bits : 0; }
int tq_is_qjl(tq_type t) { return VALID(t) ? TYPES[t].qjl : 0; }
double tq_bits_per_value(tq_type t) { return VALID(t) ? 8.0 * (double)TYPES[t].bytes / TQ_BLOCK : 0.0; }
size_t tq_row_bytes(tq_type t, size_t n) { return VALID(t) ? n / TQ_BLOCK * TYPES[t].bytes : 0; }

tq_status tq_codebook(int bits, float *out, size_t cap) {
    if (bits < 1 || bits > 4) return TQ_ERR_BITS;
    if (!out) return TQ_ERR_NULL;
    if (cap < (size_t)1 << bits) return TQ_ERR_LENGTH;
    memcpy(out, tq_codebook_for(bits), sizeof(float) << bits);
    return TQ_OK;
}

double tq_code_mse(int bits) {
    static const double mse[] = { 0.0, TQ_MSE_1, TQ_MSE_2, TQ_MSE_3, TQ_MSE_4 };
    return bits >= 1 && bits <= 4 ? mse[bits] : 0.0;
}

static tq_status check_row(tq_type t, const void *a, const void *b, size_t n) {
    if (!VALID(t)) return TQ_ERR_TYPE;
    if (!a || !b) return TQ_ERR_NULL;
    if (n == 0 || n % TQ_BLOCK) return TQ_ERR_LENGTH;
    return TQ_OK;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

tq_status tq_quantize(tq_type t, const float *x, void *y, size_t n) {
    tq_status s = check_row(t, x, y, n);
    if (s) return s;
    if (!all_finite(x, n)) return TQ_ERR_NONFINITE;
    tq_active_kernels()->quantize[t](x, y, n / TQ_BLOCK);
    return TQ_OK;
}

tq_status tq_quantize_rms_scale(tq_type t, const float *x, void *y, size_t n) {
    tq_status s = check_row(t, x, y, n);
    if (s) return s;
    if (!all_finite(x, n)) return TQ_ERR_NONFINITE;
    tq_quantize_blocks_rms(t, x, y, n / TQ_BLOCK);
    return TQ_OK;
}

tq_status tq_dequantize(tq_type t, const void *y, float *x, size_t n) {
    tq_status s = check_row(t, y, x, n);
    if (s) return s;
    tq_active_kernels()->dequantize[t](y, x, n / TQ_BLOCK);
    return TQ_OK;
}

tq_status tq_dot(tq_type t, const float *q, const void *y, size_t n, float *out) {
    tq_status s = check_row(t, q, y, n);
    if (s) return s;
    if (!out) return TQ_ERR_NULL;
    *out = tq_active_kernels()->dot[t](q, y, n / TQ_BLOCK);
    return TQ_OK;
}

/* ---- rotation ---- */

static tq_status check_dim(size_t d) {
    if (d < 64 || d > 1024 || (d & (d - 1))) return TQ_ERR_DIM;
    return TQ_OK;
}

tq_status tq_rotate(const float *x, float *y, size_t d, uint64_t seed) {
    if (!x || !y) return TQ_ERR_NULL;
    tq_status s = check_dim(d);
    if (s) return s;
    uint8_t sg[1024];
    tq_signs(seed, sg, d);
    for (size_t i = 0; i < d; i++) y[i] = sg[i] ? -x[i] : x[i];
    tq_fwht_portable(y, d);
    return TQ_OK;
}

tq_status tq_unrotate(const float *y, float *x, size_t d, uint64_t seed) {
    if (!x || !y) return TQ_ERR_NULL;
    tq_status s = check_dim(d);
    if (s) return s;
    uint8_t sg[1024];
    tq_signs(seed, sg, d);
    if (x != y) memmove(x, y, d * sizeof(float));
    tq_fwht_portable(x, d); /* the orthonormal Hadamard is its own inverse */
    for (size_t i = 0; i < d; i++) x[i] = sg[i] ? -x[i] : x[i];
    return TQ_OK;
}

tq_status tq_encode(tq_type t, const float *x, void *y, size_t d, uint64_t seed) {
    if (!VALID(t)) return TQ_ERR_TYPE;
    if (!x || !y) return TQ_ERR_NULL;
    tq_status s = check_dim(d);
    if (s) return s;
    if (!all_finite(x, d)) return TQ_ERR_NONFINITE;
    float r[1024];
    tq_rotate(x, r, d, seed);
    tq_active_kernels()->quantize[t](r, y, d / TQ_BLOCK);
    return TQ_OK;
}

tq_status tq_decode(tq_type t, const void *y, float *x, size_t d, uint64_t seed) {
    if (!VALID(t)) return TQ_ERR_TYPE;
    if (!x || !y) return TQ_ERR_NULL;
    tq_status s = check_dim(d);
    if (s) return s;
    tq_active_kernels()->dequantize[t](y, x, d / TQ_BLOCK);
    return tq_unrotate(x, x, d, seed);
}

tq_status tq_inner_product(tq_type t, const float *q, const void *y, size_t d, uint64_t seed, float *out) {
    if (!VALID(t)) return TQ_ERR_TYPE;
    if (!q || !y || !out) return TQ_ERR_NULL;
    tq_status s = check_dim(d);
    if (s) return s;
    float r[1024];
    tq_rotate(q, r, d, seed); /* <q, x> = <Rq, Rx> for orthogonal R */
    *out = tq_active_kernels()->dot[t](r, y, d / TQ_BLOCK);
    return TQ_OK;
}

/* ---- ggml-shaped row functions (tq-ggml.h) ---- */

#define TQ_GGML_DEFINE(t, T)                                                                          \
    void tq_ggml_quantize_row_##t##_ref(const float *x, void *y, int64_t k) {                         \
        tq_portable_kernels()->quantize[T](x, y, (size_t)k / TQ_BLOCK);                               \
    }                                                                                                 \
    void tq_ggml_quantize_row_##t(const float *x, void *y, int64_t k) {                               \
        tq_active_kernels()->quantize[T](x, y, (size_t)k / TQ_BLOCK);                                 \
    }                                                                                                 \
    void tq_ggml_dequantize_row_##t(const void *x, float *y, int64_t k) {                             \
        tq_active_kernels()->dequantize[T](x, y, (size_t)k / TQ_BLOCK);                               \
    }                                                                                                 \
    void tq_ggml_vec_dot_##t##_f32(int n, float *s, size_t bs, const void *vx, size_t bx,             \
                                   const void *vy, size_t by, int nrc) {                              \
        (void)bs;                                                                                     \
        (void)bx;                                                                                     \
        (void)by;                                                                                     \
        (void)nrc; /* nrows = 1 in the type traits: one dot per call */                               \
        *s = tq_active_kernels()->dot[T]((const float *)vy, vx, (size_t)n / TQ_BLOCK);                \
    }                                                                                                 \
    size_t tq_ggml_quantize_##t(const float *src, void *dst, int64_t nrows, int64_t n_per_row,       \
                                const float *imatrix) {                                               \
        (void)imatrix; /* codes are nearest-centroid; an importance matrix has nothing to weigh */   \
        const size_t row = tq_row_bytes(T, (size_t)n_per_row);                                        \
        const tq_kernels *k = tq_active_kernels();                                                    \
        for (int64_t r = 0; r < nrows; r++)                                                           \
            k->quantize[T](src + r * n_per_row, (char *)dst + r * row, (size_t)n_per_row / TQ_BLOCK); \
        return (size_t)nrows * row;                                                                   \
    }

TQ_GGML_DEFINE(tq2, TQ_TYPE_TQ2)
TQ_GGML_DEFINE(tq3, TQ_TYPE_TQ3)
TQ_GGML_DEFINE(tq4, TQ_TYPE_TQ4)
TQ_GGML_DEFINE(tq3j, TQ_TYPE_TQ3J)
TQ_GGML_DEFINE(tq4j, TQ_TYPE_TQ4J)
TQ_GGML_DEFINE(tq2t, TQ_TYPE_TQ2T)
TQ_GGML_DEFINE(tq3t, TQ_TYPE_TQ3T)
TQ_GGML_DEFINE(tq2ts, TQ_TYPE_TQ2TS)
TQ_GGML_DEFINE(tq3ts, TQ_TYPE_TQ3TS)

tq_status tq_ggml_attn_f32(const tq_attn_args *a) {
    if (!a || !a->k || !a->v || !a->M || !a->S || !a->acc) return TQ_ERR_NULL;
    if (a->k_type < 0 || a->k_type >= TQ_TYPE_COUNT || a->v_type < 0 || a->v_type >= TQ_TYPE_COUNT)
        return TQ_ERR_TYPE;
    if (a->dk <= 0 || a->dk % TQ_BLOCK || a->dk > TQ_ATTN_MAX_DIM || a->dv <= 0 || a->dv % TQ_BLOCK ||
        a->dv > TQ_ATTN_MAX_DIM || a->n_rows < 1 || a->n_rows > TQ_ATTN_MAX_ROWS || a->n_kv < 0)
        return TQ_ERR_LENGTH;
    for (int r = 0; r < a->n_rows; r++)
        if (!a->q[r] || (a->kb && !a->qb[r])) return TQ_ERR_NULL;
    if (a->kb && (a->nb <= 0 || a->nb % 32 || a->nb > TQ_ATTN_MAX_DIM)) return TQ_ERR_LENGTH;
    tq_active_kernels()->attn(a);
    return TQ_OK;
}
