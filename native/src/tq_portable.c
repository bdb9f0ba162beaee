/* Portable kernels: the specification of every format, the fallback on any CPU, and the oracle
 * the SIMD files are tested against. The per-block arithmetic is in tq-math.h (shared with the
 * CUDA kernels), in the canonical order of tq_impl.h. */
#include "tq_impl.h"

/* ---- seeded signs (the rotation's; the QJL pattern is TQ_QJL_D1/D2 of tq-math.h, the same bits
 *      as tq_signs(TQ_QJL_SEED, ., 128)) ---- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void tq_signs(uint64_t seed, uint8_t *sign_bits, size_t n) {
    uint64_t state = seed;
    for (size_t i = 0; i < n; i += 64) {
        uint64_t w = splitmix64(&state);
        for (size_t j = i; j < n && j < i + 64; j++) sign_bits[j] = (uint8_t)((w >> (j - i)) & 1);
    }
}

void tq_fwht_portable(float *x, size_t n) {
    for (size_t h = 1; h < n; h <<= 1)
        for (size_t i = 0; i < n; i += 2 * h)
            for (size_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * s;
}

/* ---- whole rows ---- */

/* The per-block arithmetic lives in tq-math.h, shared with the CUDA kernels (native/cuda). */
static void quantize_rows(tq_type type, const float *x, void *vy, size_t nb, int rms_scale) {
    for (size_t i = 0; i < nb; i++, x += TQ_BLOCK) {
        switch (type) {
        case TQ_TYPE_TQ2: tq_quantize_block_tq2(x, (block_tq2 *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ3: tq_quantize_block_tq3(x, (block_tq3 *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ4: tq_quantize_block_tq4(x, (block_tq4 *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ3J: tq_quantize_block_tq3j(x, (block_tq3j *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ4J: tq_quantize_block_tq4j(x, (block_tq4j *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ2T: tq_quantize_block_tq2t(x, (block_tq2t *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ3T: tq_quantize_block_tq3t(x, (block_tq3t *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ2TS: tq_quantize_block_tq2ts(x, (block_tq2ts *)vy + i, rms_scale); break;
        case TQ_TYPE_TQ3TS: tq_quantize_block_tq3ts(x, (block_tq3ts *)vy + i, rms_scale); break;
        default: break;
        }
    }
}

static void dequantize_rows(tq_type type, const void *vy, float *x, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += TQ_BLOCK) {
        switch (type) {
        case TQ_TYPE_TQ2: tq_dequantize_block_tq2((const block_tq2 *)vy + i, x); break;
        case TQ_TYPE_TQ3: tq_dequantize_block_tq3((const block_tq3 *)vy + i, x); break;
        case TQ_TYPE_TQ4: tq_dequantize_block_tq4((const block_tq4 *)vy + i, x); break;
        case TQ_TYPE_TQ3J: tq_dequantize_block_tq3j((const block_tq3j *)vy + i, x); break;
        case TQ_TYPE_TQ4J: tq_dequantize_block_tq4j((const block_tq4j *)vy + i, x); break;
        case TQ_TYPE_TQ2T: tq_dequantize_block_tq2t((const block_tq2t *)vy + i, x); break;
        case TQ_TYPE_TQ3T: tq_dequantize_block_tq3t((const block_tq3t *)vy + i, x); break;
        case TQ_TYPE_TQ2TS: tq_dequantize_block_tq2ts((const block_tq2ts *)vy + i, x); break;
        case TQ_TYPE_TQ3TS: tq_dequantize_block_tq3ts((const block_tq3ts *)vy + i, x); break;
        default: break;
        }
    }
}

void tq_quantize_blocks_rms(tq_type type, const float *x, void *y, size_t nb) {
    quantize_rows(type, x, y, nb, 1);
}

#define TQ_PORTABLE_QUANTIZE(t, T) \
    static void quantize_##t(const float *x, void *y, size_t nb) { quantize_rows(T, x, y, nb, 0); }
#define TQ_PORTABLE_DEQUANTIZE(t, T) \
    static void dequantize_##t(const void *y, float *x, size_t nb) { dequantize_rows(T, y, x, nb); }

TQ_PORTABLE_QUANTIZE(tq2, TQ_TYPE_TQ2)
TQ_PORTABLE_QUANTIZE(tq3, TQ_TYPE_TQ3)
TQ_PORTABLE_QUANTIZE(tq4, TQ_TYPE_TQ4)
TQ_PORTABLE_QUANTIZE(tq3j, TQ_TYPE_TQ3J)
TQ_PORTABLE_QUANTIZE(tq4j, TQ_TYPE_TQ4J)
TQ_PORTABLE_QUANTIZE(tq2t, TQ_TYPE_TQ2T)
TQ_PORTABLE_QUANTIZE(tq3t, TQ_TYPE_TQ3T)
TQ_PORTABLE_QUANTIZE(tq2ts, TQ_TYPE_TQ2TS)
TQ_PORTABLE_QUANTIZE(tq3ts, TQ_TYPE_TQ3TS)
TQ_PORTABLE_DEQUANTIZE(tq2, TQ_TYPE_TQ2)
TQ_PORTABLE_DEQUANTIZE(tq3, TQ_TYPE_TQ3)
TQ_PORTABLE_DEQUANTIZE(tq4, TQ_TYPE_TQ4)
TQ_PORTABLE_DEQUANTIZE(tq3j, TQ_TYPE_TQ3J)
TQ_PORTABLE_DEQUANTIZE(tq4j, TQ_TYPE_TQ4J)
TQ_PORTABLE_DEQUANTIZE(tq2t, TQ_TYPE_TQ2T)
TQ_PORTABLE_DEQUANTIZE(tq3t, TQ_TYPE_TQ3T)
TQ_PORTABLE_DEQUANTIZE(tq2ts, TQ_TYPE_TQ2TS)
TQ_PORTABLE_DEQUANTIZE(tq3ts, TQ_TYPE_TQ3TS)

/* Dot of a float query with a coded row: per block, the 16-lane sum of q_j * x_hat_j, folded,
 * added block after block. */
static float dot_blocks(tq_type type, const float *q, const void *y, size_t nb) {
    float x[TQ_BLOCK];
    float total = 0.0f;
    const size_t bytes = tq_block_bytes(type);
    for (size_t i = 0; i < nb; i++, q += TQ_BLOCK) {
        dequantize_rows(type, (const uint8_t *)y + i * bytes, x, 1);
        float acc[16];
        for (int l = 0; l < 16; l++) acc[l] = q[l] * x[l];
        for (int r = 1; r < 4; r++)
            for (int l = 0; l < 16; l++) acc[l] = acc[l] + q[l + 16 * r] * x[l + 16 * r];
        total = total + tq_fold16(acc);
    }
    return total;
}

#define TQ_PORTABLE_DOT(t, T) \
    static float dot_##t(const float *q, const void *y, size_t nb) { return dot_blocks(T, q, y, nb); }
TQ_PORTABLE_DOT(tq2, TQ_TYPE_TQ2)
TQ_PORTABLE_DOT(tq3, TQ_TYPE_TQ3)
TQ_PORTABLE_DOT(tq4, TQ_TYPE_TQ4)
TQ_PORTABLE_DOT(tq3j, TQ_TYPE_TQ3J)
TQ_PORTABLE_DOT(tq4j, TQ_TYPE_TQ4J)
TQ_PORTABLE_DOT(tq2t, TQ_TYPE_TQ2T)
TQ_PORTABLE_DOT(tq3t, TQ_TYPE_TQ3T)
TQ_PORTABLE_DOT(tq2ts, TQ_TYPE_TQ2TS)
TQ_PORTABLE_DOT(tq3ts, TQ_TYPE_TQ3TS)

/* ---- attention (tq_attn.h) ---- */

static inline float attn_dot(const float *a, const float *b, int n) {
    float s[4] = {0, 0, 0, 0};
    for (int i = 0; i < n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += a[i + l] * b[i + l];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static inline void attn_accum(float *acc, const float *p, const float *rows, int nt, int n) {
    for (int j = 0; j < nt; j++) {
        if (p[j] == 0.0f) continue;
        for (int i = 0; i < n; i++) acc[i] += p[j] * rows[(size_t)j * n + i];
    }
}

static inline void attn_scale(float *acc, float s, int n) {
    for (int i = 0; i < n; i++) acc[i] *= s;
}

#define TQ_ATTN_NAME attn_portable
#include "tq_attn.h"

void tq_kernels_portable(tq_kernels *k) {
    static const tq_quantize_fn q[TQ_TYPE_COUNT] = {quantize_tq2, quantize_tq3, quantize_tq4, quantize_tq3j,
                                                    quantize_tq4j, quantize_tq2t, quantize_tq3t,
                                                    quantize_tq2ts, quantize_tq3ts};
    static const tq_dequantize_fn d[TQ_TYPE_COUNT] = {dequantize_tq2, dequantize_tq3, dequantize_tq4,
                                                      dequantize_tq3j, dequantize_tq4j, dequantize_tq2t,
                                                      dequantize_tq3t, dequantize_tq2ts, dequantize_tq3ts};
    static const tq_dot_fn v[TQ_TYPE_COUNT] = {dot_tq2, dot_tq3, dot_tq4, dot_tq3j, dot_tq4j, dot_tq2t, dot_tq3t,
                                              dot_tq2ts, dot_tq3ts};
    memcpy(k->quantize, q, sizeof q);
    memcpy(k->dequantize, d, sizeof d);
    memcpy(k->dot, v, sizeof v);
    k->attn = attn_portable;
}
