/* Portable kernels: the specification of every format, the fallback on any CPU, and the oracle
 * the SIMD files are tested against. Arithmetic follows the canonical order in tq_impl.h. */
#include "tq_impl.h"

/* ---- code planes ---- */

static void pack2(const uint8_t c[TQ_BLOCK], uint8_t qs[16]) {
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((c[j] & 3) | (c[j + 16] & 3) << 2 | (c[j + 32] & 3) << 4 | (c[j + 48] & 3) << 6);
}

static void pack1(const uint8_t c[TQ_BLOCK], int bit, uint8_t q[8]) {
    for (int j = 0; j < 8; j++) {
        unsigned v = 0;
        for (int g = 0; g < 8; g++) v |= (unsigned)((c[j + 8 * g] >> bit) & 1) << g;
        q[j] = (uint8_t)v;
    }
}

static void pack4(const uint8_t c[TQ_BLOCK], uint8_t qs[32]) {
    for (int j = 0; j < 32; j++) qs[j] = (uint8_t)((c[j] & 15) | (c[j + 32] & 15) << 4);
}

static void unpack2(const uint8_t qs[16], uint8_t c[TQ_BLOCK]) {
    for (int j = 0; j < TQ_BLOCK; j++) c[j] = (qs[j & 15] >> (2 * (j >> 4))) & 3;
}

static void unpack1_or(const uint8_t q[8], int bit, uint8_t c[TQ_BLOCK]) {
    for (int j = 0; j < TQ_BLOCK; j++) c[j] |= (uint8_t)(((q[j & 7] >> (j >> 3)) & 1) << bit);
}

static void unpack4(const uint8_t qs[32], uint8_t c[TQ_BLOCK]) {
    for (int j = 0; j < TQ_BLOCK; j++) c[j] = (qs[j & 31] >> (4 * (j >> 5))) & 15;
}

/* ---- the MSE code of one block ---- */

static void assign_codes(int bits, const float *x, float inv, uint8_t c[TQ_BLOCK]) {
    const float *bnd = tq_bounds_for(bits);
    const int nb = (1 << bits) - 1;
    for (int j = 0; j < TQ_BLOCK; j++) {
        float v = x[j] * inv;
        int k = 0;
        for (int i = 0; i < nb; i++) k += v > bnd[i];
        c[j] = (uint8_t)k;
    }
}

static float lsq_refit(int bits, const float *x, const uint8_t c[TQ_BLOCK], float fallback) {
    const float *cb = tq_codebook_for(bits);
    float xc[16], cc[16];
    for (int l = 0; l < 16; l++) {
        float v = cb[c[l]];
        xc[l] = x[l] * v;
        cc[l] = v * v;
    }
    for (int r = 1; r < 4; r++)
        for (int l = 0; l < 16; l++) {
            float v = cb[c[l + 16 * r]];
            xc[l] = xc[l] + x[l + 16 * r] * v;
            cc[l] = cc[l] + v * v;
        }
    return tq_lsq_scale(tq_fold16(xc), tq_fold16(cc), fallback);
}

/* Codes and fp16 scale of one block. refit = 0 stores the RMS (the paper's norm scaling);
 * refit = 1 picks codes at the RMS, refits the scale by least squares, picks codes again at
 * that scale and refits once more (each step can only lower the block's squared error). */
static tq_half quantize_block(int bits, const float *x, uint8_t c[TQ_BLOCK], int refit) {
    float acc[16];
    int finite = 1;
    for (int l = 0; l < 16; l++) acc[l] = x[l] * x[l];
    for (int r = 1; r < 4; r++)
        for (int l = 0; l < 16; l++) acc[l] = acc[l] + x[l + 16 * r] * x[l + 16 * r];
    for (int j = 0; j < TQ_BLOCK; j++) finite &= isfinite(x[j]) != 0;
    if (!finite) {
        memset(c, 0, TQ_BLOCK);
        return TQ_HALF_NAN;
    }
    float inv, rms;
    int kind = tq_first_scale(tq_fold16(acc), &inv, &rms);
    if (kind == 0) {
        memset(c, 0, TQ_BLOCK);
        return 0;
    }
    assign_codes(bits, x, inv, c);
    if (kind == 2) return tq_store_scale(TQ_FP16_MAX);
    if (!refit) return tq_store_scale(rms);
    float d1 = lsq_refit(bits, x, c, rms);
    assign_codes(bits, x, 1.0f / d1, c);
    return tq_store_scale(lsq_refit(bits, x, c, d1));
}

/* ---- QJL residual signs ---- */

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

/* The QJL projection is S = sqrt(64) * H * D2 * H * D1 (two rounds of randomized Hadamard): orthogonal
 * rows keep the estimator's variance low (0.031 vs 0.052 for an i.i.d. Gaussian S, native/README.md),
 * and the second round brings its bias from 0.37 % to 0.08 % of <q, x>; only a Gaussian S makes it
 * exactly unbiased. D1, D2: 128 fixed signs, cheap to compute, so racing threads only repeat work. */
static const uint8_t *qjl_signs(void) {
    static uint8_t bits[2 * TQ_BLOCK];
    static volatile int ready = 0;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        uint8_t tmp[2 * TQ_BLOCK];
        tq_signs(TQ_QJL_SEED, tmp, 2 * TQ_BLOCK);
        memcpy(bits, tmp, sizeof tmp);
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    return bits;
}

static void flip(float *v, const uint8_t *sg) {
    for (int j = 0; j < TQ_BLOCK; j++) v[j] = sg[j] ? -v[j] : v[j];
}

/* x_hat += gamma * sqrt(pi/2) / 64 * S^T z: the QJL estimator folded into the vector, so <q, x_hat>
 * is the paper's inner-product estimate; S^T z = sqrt(64) * D1 * H * D2 * H * z. */
static void qjl_add(float gamma, const uint8_t qj[8], float *out) {
    const uint8_t *sg = qjl_signs();
    float z[TQ_BLOCK];
    for (int j = 0; j < TQ_BLOCK; j++) z[j] = ((qj[j & 7] >> (j >> 3)) & 1) ? 1.0f : -1.0f;
    tq_fwht_portable(z, TQ_BLOCK);
    flip(z, sg + TQ_BLOCK);
    tq_fwht_portable(z, TQ_BLOCK);
    flip(z, sg);
    const float a = gamma * (1.2533141373155001f / 8.0f);
    for (int j = 0; j < TQ_BLOCK; j++) out[j] = out[j] + a * z[j];
}

/* Residual norm and the signs of S * r (bit set = positive; a zero component counts as negative,
 * so an all-zero block stays all-zero bytes). */
static void qjl_encode(const float *x, const float *xm, tq_half *gamma, uint8_t qj[8]) {
    const uint8_t *sg = qjl_signs();
    float r[TQ_BLOCK], acc[16];
    for (int j = 0; j < TQ_BLOCK; j++) r[j] = x[j] - xm[j];
    for (int l = 0; l < 16; l++) acc[l] = r[l] * r[l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < 16; l++) acc[l] = acc[l] + r[l + 16 * k] * r[l + 16 * k];
    *gamma = tq_store_scale(sqrtf(tq_fold16(acc)));
    flip(r, sg);
    tq_fwht_portable(r, TQ_BLOCK);
    flip(r, sg + TQ_BLOCK);
    tq_fwht_portable(r, TQ_BLOCK);
    uint8_t s[TQ_BLOCK];
    for (int j = 0; j < TQ_BLOCK; j++) s[j] = r[j] > 0.0f;
    pack1(s, 0, qj);
}

/* ---- whole rows ---- */

static void dequant_codes(int bits, const uint8_t c[TQ_BLOCK], tq_half dh, float *x) {
    const float *cb = tq_codebook_for(bits);
    const float d = tq_fp16_to_fp32(dh);
    for (int j = 0; j < TQ_BLOCK; j++) x[j] = d * cb[c[j]];
}

static void quantize_rows(tq_type type, const float *x, void *vy, size_t nb, int refit) {
    uint8_t c[TQ_BLOCK];
    for (size_t i = 0; i < nb; i++, x += TQ_BLOCK) {
        switch (type) {
        case TQ_TYPE_TQ2: {
            block_tq2 *y = (block_tq2 *)vy + i;
            y->d = quantize_block(2, x, c, refit);
            pack2(c, y->qs);
        } break;
        case TQ_TYPE_TQ3: {
            block_tq3 *y = (block_tq3 *)vy + i;
            y->d = quantize_block(3, x, c, refit);
            pack2(c, y->qs);
            pack1(c, 2, y->qh);
        } break;
        case TQ_TYPE_TQ4: {
            block_tq4 *y = (block_tq4 *)vy + i;
            y->d = quantize_block(4, x, c, refit);
            pack4(c, y->qs);
        } break;
        case TQ_TYPE_TQ3J: {
            block_tq3j *y = (block_tq3j *)vy + i;
            float xm[TQ_BLOCK];
            y->d = quantize_block(2, x, c, refit);
            pack2(c, y->qs);
            dequant_codes(2, c, y->d, xm);
            qjl_encode(x, xm, &y->gamma, y->qj);
        } break;
        case TQ_TYPE_TQ4J: {
            block_tq4j *y = (block_tq4j *)vy + i;
            float xm[TQ_BLOCK];
            y->d = quantize_block(3, x, c, refit);
            pack2(c, y->qs);
            pack1(c, 2, y->qh);
            dequant_codes(3, c, y->d, xm);
            qjl_encode(x, xm, &y->gamma, y->qj);
        } break;
        default: break;
        }
    }
}

static void dequantize_rows(tq_type type, const void *vy, float *x, size_t nb) {
    uint8_t c[TQ_BLOCK];
    for (size_t i = 0; i < nb; i++, x += TQ_BLOCK) {
        switch (type) {
        case TQ_TYPE_TQ2: {
            const block_tq2 *y = (const block_tq2 *)vy + i;
            unpack2(y->qs, c);
            dequant_codes(2, c, y->d, x);
        } break;
        case TQ_TYPE_TQ3: {
            const block_tq3 *y = (const block_tq3 *)vy + i;
            unpack2(y->qs, c);
            unpack1_or(y->qh, 2, c);
            dequant_codes(3, c, y->d, x);
        } break;
        case TQ_TYPE_TQ4: {
            const block_tq4 *y = (const block_tq4 *)vy + i;
            unpack4(y->qs, c);
            dequant_codes(4, c, y->d, x);
        } break;
        case TQ_TYPE_TQ3J: {
            const block_tq3j *y = (const block_tq3j *)vy + i;
            unpack2(y->qs, c);
            dequant_codes(2, c, y->d, x);
            qjl_add(tq_fp16_to_fp32(y->gamma), y->qj, x);
        } break;
        case TQ_TYPE_TQ4J: {
            const block_tq4j *y = (const block_tq4j *)vy + i;
            unpack2(y->qs, c);
            unpack1_or(y->qh, 2, c);
            dequant_codes(3, c, y->d, x);
            qjl_add(tq_fp16_to_fp32(y->gamma), y->qj, x);
        } break;
        default: break;
        }
    }
}

void tq_quantize_blocks_rms(tq_type type, const float *x, void *y, size_t nb) {
    quantize_rows(type, x, y, nb, 0);
}

#define TQ_PORTABLE_QUANTIZE(t, T) \
    static void quantize_##t(const float *x, void *y, size_t nb) { quantize_rows(T, x, y, nb, 1); }
#define TQ_PORTABLE_DEQUANTIZE(t, T) \
    static void dequantize_##t(const void *y, float *x, size_t nb) { dequantize_rows(T, y, x, nb); }

TQ_PORTABLE_QUANTIZE(tq2, TQ_TYPE_TQ2)
TQ_PORTABLE_QUANTIZE(tq3, TQ_TYPE_TQ3)
TQ_PORTABLE_QUANTIZE(tq4, TQ_TYPE_TQ4)
TQ_PORTABLE_QUANTIZE(tq3j, TQ_TYPE_TQ3J)
TQ_PORTABLE_QUANTIZE(tq4j, TQ_TYPE_TQ4J)
TQ_PORTABLE_DEQUANTIZE(tq2, TQ_TYPE_TQ2)
TQ_PORTABLE_DEQUANTIZE(tq3, TQ_TYPE_TQ3)
TQ_PORTABLE_DEQUANTIZE(tq4, TQ_TYPE_TQ4)
TQ_PORTABLE_DEQUANTIZE(tq3j, TQ_TYPE_TQ3J)
TQ_PORTABLE_DEQUANTIZE(tq4j, TQ_TYPE_TQ4J)

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

void tq_kernels_portable(tq_kernels *k) {
    static const tq_quantize_fn q[TQ_TYPE_COUNT] = {quantize_tq2, quantize_tq3, quantize_tq4, quantize_tq3j,
                                                    quantize_tq4j};
    static const tq_dequantize_fn d[TQ_TYPE_COUNT] = {dequantize_tq2, dequantize_tq3, dequantize_tq4,
                                                      dequantize_tq3j, dequantize_tq4j};
    static const tq_dot_fn v[TQ_TYPE_COUNT] = {dot_tq2, dot_tq3, dot_tq4, dot_tq3j, dot_tq4j};
    memcpy(k->quantize, q, sizeof q);
    memcpy(k->dequantize, d, sizeof d);
    memcpy(k->dot, v, sizeof v);
}
