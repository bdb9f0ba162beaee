/* AVX-512 (F + BW + VL) kernels for tq2/tq3/tq4 and tq2t/tq3t (compiled with TQ_CFLAGS_AVX512 for
 * this file only).
 *
 * One zmm holds the 16 lanes of the canonical order (tq_impl.h): x[r] = values 16r..16r+15, so a
 * single accumulator s = x[0]*x[0]; s = s + x[r]*x[r] (r = 1, 2, 3) is exactly the portable lane
 * sum, and fold16 halves it 8, 4, 2, 1. Quantize therefore gives bit-identical codes and scales;
 * dequantize is one multiply d * centroid, also identical; dot uses FMA and differs from the
 * portable sum only by rounding. The QJL types stay on the kernels of the level below.
 *
 * Every codebook lookup is one _mm512_permutexvar_ps over a 16-float table. It reads only bits 0-3
 * of each index, and the table repeats the b-bit codebook with period 2^b, so an index whose bits
 * above the code hold other codes (a byte shifted right, not masked) still finds its centroid. */
#include "tq_impl.h"

#if TQ_IS_X86 && !defined(TQ_NO_AVX512)

#include <immintrin.h>

/* ---- shared pieces ---- */

/* fold16 of one 16-lane accumulator in the canonical order: l += l+8, l+4, l+2, l+1. */
static inline float fold16(__m512 s) {
    __m256 lo = _mm512_castps512_ps256(s);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}

/* 16 floats: the b-bit codebook repeated (cb[i mod 2^b]); filled once by tq_kernels_avx512, so
 * that a one-block row (a head of 64) does not rebuild it per call. */
static float g_codebook_table[5][16] __attribute__((aligned(64)));

static inline __m512 codebook_table(int bits) { return _mm512_load_ps(g_codebook_table[bits]); }

/* 16 floats: the 2^b - 1 decision boundaries, then +inf (never read, see codes16). */
static inline __m512 bounds_table(int bits) {
    const float *bnd = tq_bounds_for(bits);
    float t[16];
    for (int i = 0; i < 16; i++) t[i] = i < (1 << bits) - 1 ? bnd[i] : INFINITY;
    return _mm512_loadu_ps(t);
}

/* 8x8 bit-matrix transpose of a 64-bit word: bit 8r+c <-> bit 8c+r (its own inverse).
 * The 1-bit plane qh has bit g of qh[i] = bit 2 of code 8g+i, so transposing the 64-bit word
 * qh gives a word whose bit j is bit 2 of code j, and back. */
static inline uint64_t transpose8x8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
    x ^= t ^ (t << 28);
    return x;
}

/* ---- quantize ---- */

/* Code of 16 values v: the number of boundaries strictly below v. The boundaries ascend, so
 * v > bnd[i] holds exactly for i < K (K the count); binary lifting finds K with b compares:
 * with k <= K a multiple of 2*step, v > bnd[k + step - 1] iff k + step <= K. Indices stay
 * <= 2^b - 2 (the last boundary), and a NaN compares false everywhere (code 0), as in portable. */
static inline __m512i codes16(int bits, __m512 v, __m512 btab) {
    __m512i k = _mm512_setzero_si512();
    for (int step = 1 << (bits - 1); step >= 1; step >>= 1) {
        __m512 b = _mm512_permutexvar_ps(_mm512_add_epi32(k, _mm512_set1_epi32(step - 1)), btab);
        __mmask16 gt = _mm512_cmp_ps_mask(v, b, _CMP_GT_OQ);
        k = _mm512_mask_add_epi32(k, gt, k, _mm512_set1_epi32(step));
    }
    return k;
}

static inline void assign(int bits, const __m512 x[4], float inv, __m512 btab, __m512 ctab, __m512i k[4],
                          __m512 val[4]) {
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int r = 0; r < 4; r++) {
        k[r] = codes16(bits, _mm512_mul_ps(x[r], vinv), btab);
        val[r] = _mm512_permutexvar_ps(k[r], ctab);
    }
}

static inline void refit_sums(const __m512 x[4], const __m512 val[4], float *xcs, float *ccs) {
    __m512 xc = _mm512_mul_ps(x[0], val[0]);
    __m512 cc = _mm512_mul_ps(val[0], val[0]);
    for (int r = 1; r < 4; r++) {
        xc = _mm512_add_ps(xc, _mm512_mul_ps(x[r], val[r]));
        cc = _mm512_add_ps(cc, _mm512_mul_ps(val[r], val[r]));
    }
    *xcs = fold16(xc);
    *ccs = fold16(cc);
}

/* Codes (k[r] = int32 codes of values 16r..16r+15) and fp16 scale of one block. */
TQ_INLINE tq_half quantize_block(int bits, const float *xp, __m512 btab, __m512 ctab, __m512i k[4]) {
    __m512 x[4];
    for (int r = 0; r < 4; r++) x[r] = _mm512_loadu_ps(xp + 16 * r);
    __m512 s = _mm512_mul_ps(x[0], x[0]);
    for (int r = 1; r < 4; r++) s = _mm512_add_ps(s, _mm512_mul_ps(x[r], x[r]));
    /* NaN or infinity: |x| as bits >= the bits of +inf */
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff), infbits = _mm512_set1_epi32(0x7f800000);
    __mmask16 bad = 0;
    for (int r = 0; r < 4; r++)
        bad |= _mm512_cmpge_epu32_mask(_mm512_and_si512(_mm512_castps_si512(x[r]), absmask), infbits);
    if (bad) {
        k[0] = k[1] = k[2] = k[3] = _mm512_setzero_si512();
        return TQ_HALF_NAN;
    }
    float inv, rms;
    const float sumsq = fold16(s);
    int kind = tq_first_scale(sumsq, &inv, &rms);
    if (kind == 0) {
        k[0] = k[1] = k[2] = k[3] = _mm512_setzero_si512();
        return 0;
    }
    __m512 val[4];
    assign(bits, x, inv, btab, ctab, k, val);
    if (kind == 2) return tq_store_scale(TQ_FP16_MAX);
    float xc, cc;
    refit_sums(x, val, &xc, &cc);
    float d1 = tq_lsq_scale(xc, cc, rms);
    assign(bits, x, 1.0f / d1, btab, ctab, k, val);
    refit_sums(x, val, &xc, &cc);
    return tq_store_scale(tq_unbiased_scale(sumsq, xc, tq_lsq_scale(xc, cc, d1)));
}

/* 2-bit plane: qs[l] = c[l] | c[l+16] << 2 | c[l+32] << 4 | c[l+48] << 6 (low two code bits). */
static inline void store2(const __m512i k[4], uint8_t *qs) {
    const __m512i m3 = _mm512_set1_epi32(3);
    __m512i p = _mm512_and_si512(k[0], m3);
    p = _mm512_or_si512(p, _mm512_slli_epi32(_mm512_and_si512(k[1], m3), 2));
    p = _mm512_or_si512(p, _mm512_slli_epi32(_mm512_and_si512(k[2], m3), 4));
    p = _mm512_or_si512(p, _mm512_slli_epi32(_mm512_and_si512(k[3], m3), 6));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(p));
}

/* 1-bit plane of code bit 2. */
static inline void store_hi_bit(const __m512i k[4], uint8_t *qh) {
    const __m512i four = _mm512_set1_epi32(4);
    uint64_t m = 0; /* bit j = bit 2 of code j */
    for (int r = 0; r < 4; r++) m |= (uint64_t)_mm512_test_epi32_mask(k[r], four) << (16 * r);
    m = transpose8x8(m);
    memcpy(qh, &m, 8);
}

static void quantize_tq2(const float *x, void *vy, size_t nb) {
    block_tq2 *y = (block_tq2 *)vy;
    const __m512 btab = bounds_table(2), ctab = codebook_table(2);
    __m512i k[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(2, x + i * TQ_BLOCK, btab, ctab, k);
        store2(k, y[i].qs);
    }
}

static void quantize_tq3(const float *x, void *vy, size_t nb) {
    block_tq3 *y = (block_tq3 *)vy;
    const __m512 btab = bounds_table(3), ctab = codebook_table(3);
    __m512i k[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(3, x + i * TQ_BLOCK, btab, ctab, k);
        store2(k, y[i].qs);
        store_hi_bit(k, y[i].qh);
    }
}

static void quantize_tq4(const float *x, void *vy, size_t nb) {
    block_tq4 *y = (block_tq4 *)vy;
    const __m512 btab = bounds_table(4), ctab = codebook_table(4);
    __m512i k[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(4, x + i * TQ_BLOCK, btab, ctab, k);
        /* qs[j] = c[j] | c[j+32] << 4 */
        __m512i lo = _mm512_or_si512(k[0], _mm512_slli_epi32(k[2], 4));
        __m512i hi = _mm512_or_si512(k[1], _mm512_slli_epi32(k[3], 4));
        _mm_storeu_si128((__m128i *)y[i].qs, _mm512_cvtepi32_epi8(lo));
        _mm_storeu_si128((__m128i *)(y[i].qs + 16), _mm512_cvtepi32_epi8(hi));
    }
}

/* ---- dequantize and dot ---- */

/* The 64 codes as table indices: idx[r] holds codes 16r..16r+15 in bits 0..b-1 of its int32
 * lanes; bits above may hold other codes, which the repeated table ignores (see the top). */
static inline void unpack(int bits, const uint8_t *qs, const uint8_t *qh, __m512i idx[4]) {
    __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    if (bits == 4) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
        idx[0] = a; /* low nibbles of qs[0..15]: codes 0-15 */
        idx[1] = b; /* low nibbles of qs[16..31]: codes 16-31 */
        idx[2] = _mm512_srli_epi32(a, 4);
        idx[3] = _mm512_srli_epi32(b, 4);
        return;
    }
    idx[0] = a;
    idx[1] = _mm512_srli_epi32(a, 2);
    idx[2] = _mm512_srli_epi32(a, 4);
    idx[3] = _mm512_srli_epi32(a, 6);
    if (bits == 3) {
        uint64_t h;
        memcpy(&h, qh, 8);
        h = transpose8x8(h); /* bit j = bit 2 of code j */
        const __m512i m3 = _mm512_set1_epi32(3), four = _mm512_set1_epi32(4);
        for (int r = 0; r < 4; r++) {
            __m512i low = _mm512_and_si512(idx[r], m3);
            idx[r] = _mm512_mask_or_epi32(low, (__mmask16)(h >> (16 * r)), low, four);
        }
    }
}

static inline void dequant_block(int bits, __m512 ctab, tq_half dh, const uint8_t *qs, const uint8_t *qh,
                                 float *out) {
    __m512i idx[4];
    unpack(bits, qs, qh, idx);
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh));
    for (int r = 0; r < 4; r++) _mm512_storeu_ps(out + 16 * r, _mm512_mul_ps(d, _mm512_permutexvar_ps(idx[r], ctab)));
}

static inline __m512 dot_block(int bits, __m512 ctab, tq_half dh, const uint8_t *qs, const uint8_t *qh,
                               const float *q, __m512 acc) {
    __m512i idx[4];
    unpack(bits, qs, qh, idx);
    __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_permutexvar_ps(idx[0], ctab));
    __m512 s1 = _mm512_mul_ps(_mm512_loadu_ps(q + 16), _mm512_permutexvar_ps(idx[1], ctab));
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 32), _mm512_permutexvar_ps(idx[2], ctab), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 48), _mm512_permutexvar_ps(idx[3], ctab), s1);
    return _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(dh)), _mm512_add_ps(s0, s1), acc);
}

static void dequantize_tq2(const void *vy, float *x, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    const __m512 ctab = codebook_table(2);
    for (size_t i = 0; i < nb; i++) dequant_block(2, ctab, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}
static void dequantize_tq3(const void *vy, float *x, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    const __m512 ctab = codebook_table(3);
    for (size_t i = 0; i < nb; i++) dequant_block(3, ctab, y[i].d, y[i].qs, y[i].qh, x + i * TQ_BLOCK);
}
static void dequantize_tq4(const void *vy, float *x, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    const __m512 ctab = codebook_table(4);
    for (size_t i = 0; i < nb; i++) dequant_block(4, ctab, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}

static float dot_tq2(const float *q, const void *vy, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    const __m512 ctab = codebook_table(2);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(2, ctab, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return _mm512_reduce_add_ps(acc);
}
static float dot_tq3(const float *q, const void *vy, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    const __m512 ctab = codebook_table(3);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(3, ctab, y[i].d, y[i].qs, y[i].qh, q + i * TQ_BLOCK, acc);
    return _mm512_reduce_add_ps(acc);
}
static float dot_tq4(const float *q, const void *vy, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    const __m512 ctab = codebook_table(4);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(4, ctab, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return _mm512_reduce_add_ps(acc);
}

/* ---- the trellis-coded types (tq-math.h): the encoder of tq_tcq_x86.h; the decoder builds each
 * value's 4-bit index 4 * level + subset from the level bits and the branch word, then one lookup
 * in the (b+1)-bit codebook ---- */

#include "tq_tcq_x86.h"

/* q: a block's code bytes (tq_tcq_store_codes), after its scale */
static inline void tcq_unpack(int bits, const uint8_t *q, __m512i idx[4]) {
    uint64_t z1, z0;
    __m512i base[4];
    if (bits == 3) {
        tq_tcq_subset_words(tq_load_word(q + 16), &z1, &z0);
        const __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q)), m3 = _mm512_set1_epi32(3);
        for (int r = 0; r < 4; r++) base[r] = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a, 2 * r), m3), 2);
    } else {
        tq_tcq_subset_words(tq_load_word(q), &z1, &z0);
        const uint64_t l = tq_load_word(q + 8);
        for (int r = 0; r < 4; r++)
            base[r] = _mm512_maskz_mov_epi32((__mmask16)(l >> (16 * r)), _mm512_set1_epi32(4));
    }
    for (int r = 0; r < 4; r++) {
        __m512i k = _mm512_mask_or_epi32(base[r], (__mmask16)(z1 >> (16 * r)), base[r], _mm512_set1_epi32(2));
        idx[r] = _mm512_mask_or_epi32(k, (__mmask16)(z0 >> (16 * r)), k, _mm512_set1_epi32(1));
    }
}

static inline void tcq_dequant_block(int bits, const uint8_t *q, float scale, float *out) {
    const __m512 ctab = codebook_table(bits + 1);
    __m512i idx[4];
    tcq_unpack(bits, q, idx);
    const __m512 d = _mm512_set1_ps(scale);
    for (int r = 0; r < 4; r++) _mm512_storeu_ps(out + 16 * r, _mm512_mul_ps(d, _mm512_permutexvar_ps(idx[r], ctab)));
}

static inline void tcq_dequant_rows(int bits, int s8, const void *vy, float *x, size_t nb) {
    const size_t hdr = tq_tcq_scale_bytes(s8), bytes = tq_tcq_block_bytes(bits, s8);
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)vy + i * bytes;
        tcq_dequant_block(bits, blk + hdr, tq_tcq_block_scale(s8, blk), x + i * TQ_BLOCK);
    }
}
static void dequantize_tq2t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 0, vy, x, nb); }
static void dequantize_tq3t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 0, vy, x, nb); }
static void dequantize_tq2ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 1, vy, x, nb); }
static void dequantize_tq3ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 1, vy, x, nb); }

static inline float tcq_dot(int bits, int s8, const float *q, const void *vy, size_t nb) {
    const size_t hdr = tq_tcq_scale_bytes(s8), bytes = tq_tcq_block_bytes(bits, s8);
    const __m512 ctab = codebook_table(bits + 1);
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < nb; i++, q += TQ_BLOCK) {
        const uint8_t *blk = (const uint8_t *)vy + i * bytes;
        __m512i idx[4];
        tcq_unpack(bits, blk + hdr, idx);
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_permutexvar_ps(idx[0], ctab));
        for (int r = 1; r < 4; r++) s = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * r), _mm512_permutexvar_ps(idx[r], ctab), s);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(tq_tcq_block_scale(s8, blk)), s, acc);
    }
    return _mm512_reduce_add_ps(acc);
}
static float dot_tq2t(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 0, q, vy, nb); }
static float dot_tq3t(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 0, q, vy, nb); }
static float dot_tq2ts(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 1, q, vy, nb); }
static float dot_tq3ts(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 1, q, vy, nb); }

/* ---- attention (tq_attn.h) ---- */

static inline float attn_dot(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* 16 keys at once: one accumulator per key, then the 16 sums reduced side by side (pairs of
 * vectors interleaved and added: 16 -> 8 -> 4 -> 2 -> 1 vector), 45 shuffles and adds in place of
 * 16 separate horizontal reductions. Rows past nt read row 0 again and are not stored. */
#define TQ_ATTN_HAVE_DOTS 1
static inline void attn_dots(const float *a, const float *rows, size_t stride, int nt, int n, float *out) {
    __m512 s[16], t[8], u[4], v[2];
    const float *r[16];
    for (int j = 0; j < 16; j++) {
        s[j] = _mm512_setzero_ps();
        r[j] = (const float *)((const char *)rows + (size_t)(j < nt ? j : 0) * stride);
    }
    for (int i = 0; i < n; i += 16) {
        const __m512 q = _mm512_loadu_ps(a + i);
        for (int j = 0; j < 16; j++) s[j] = _mm512_fmadd_ps(q, _mm512_loadu_ps(r[j] + i), s[j]);
    }
    /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
    for (int j = 0; j < 8; j++)
        t[j] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * j], s[2 * j + 1]), _mm512_unpackhi_ps(s[2 * j], s[2 * j + 1]));
    /* per 128-bit lane: the lane's sums of 4 keys */
    for (int j = 0; j < 4; j++)
        u[j] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* the 4 lanes added: two lanes of each vector, then the other two */
    for (int j = 0; j < 2; j++)
        v[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(out, w);
}

static inline void attn_accum(float *acc, const float *p, const float *rows, int nt, int n) {
    for (int i = 0; i < n; i += TQ_BLOCK) {
        __m512 a0 = _mm512_loadu_ps(acc + i), a1 = _mm512_loadu_ps(acc + i + 16);
        __m512 a2 = _mm512_loadu_ps(acc + i + 32), a3 = _mm512_loadu_ps(acc + i + 48);
        for (int j = 0; j < nt; j++) {
            if (p[j] == 0.0f) continue;
            const __m512 w = _mm512_set1_ps(p[j]);
            const float *x = rows + (size_t)j * n + i;
            a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x), a0);
            a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 16), a1);
            a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 32), a2);
            a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + 48), a3);
        }
        _mm512_storeu_ps(acc + i, a0);
        _mm512_storeu_ps(acc + i + 16, a1);
        _mm512_storeu_ps(acc + i + 32, a2);
        _mm512_storeu_ps(acc + i + 48, a3);
    }
}

static inline void attn_scale(float *acc, float s, int n) {
    const __m512 m = _mm512_set1_ps(s);
    for (int i = 0; i < n; i += 16) _mm512_storeu_ps(acc + i, _mm512_mul_ps(m, _mm512_loadu_ps(acc + i)));
}

#include "tq_exp_x86.h"

#define TQ_ATTN_OWN_DECODERS 1
#define TQ_ATTN_NAME attn_avx512
#include "tq_attn.h"

void tq_kernels_avx512(tq_kernels *k) {
    for (int bits = 2; bits <= 4; bits++) {
        const float *cb = tq_codebook_for(bits);
        for (int i = 0; i < 16; i++) g_codebook_table[bits][i] = cb[i & ((1 << bits) - 1)];
    }
    k->quantize[TQ_TYPE_TQ2] = quantize_tq2;
    k->quantize[TQ_TYPE_TQ3] = quantize_tq3;
    k->quantize[TQ_TYPE_TQ4] = quantize_tq4;
    k->dequantize[TQ_TYPE_TQ2] = dequantize_tq2;
    k->dequantize[TQ_TYPE_TQ3] = dequantize_tq3;
    k->dequantize[TQ_TYPE_TQ4] = dequantize_tq4;
    k->dot[TQ_TYPE_TQ2] = dot_tq2;
    k->dot[TQ_TYPE_TQ3] = dot_tq3;
    k->dot[TQ_TYPE_TQ4] = dot_tq4;
    k->quantize[TQ_TYPE_TQ2T] = quantize_tq2t;
    k->quantize[TQ_TYPE_TQ3T] = quantize_tq3t;
    k->dequantize[TQ_TYPE_TQ2T] = dequantize_tq2t;
    k->dequantize[TQ_TYPE_TQ3T] = dequantize_tq3t;
    k->dot[TQ_TYPE_TQ2T] = dot_tq2t;
    k->dot[TQ_TYPE_TQ3T] = dot_tq3t;
    k->quantize[TQ_TYPE_TQ2TS] = quantize_tq2ts;
    k->quantize[TQ_TYPE_TQ3TS] = quantize_tq3ts;
    k->dequantize[TQ_TYPE_TQ2TS] = dequantize_tq2ts;
    k->dequantize[TQ_TYPE_TQ3TS] = dequantize_tq3ts;
    k->dot[TQ_TYPE_TQ2TS] = dot_tq2ts;
    k->dot[TQ_TYPE_TQ3TS] = dot_tq3ts;
    k->attn = attn_avx512;
}

#endif
