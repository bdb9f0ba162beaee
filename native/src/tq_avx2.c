/* AVX2 + FMA + F16C kernels for tq2/tq3/tq4 and tq2t/tq3t (compiled with TQ_CFLAGS_AVX2 for this
 * file only).
 * Quantize reproduces the portable arithmetic step for step (tq_impl.h), so codes and scales are
 * bit-identical; dequantize is one multiply per value, also identical; dot uses FMA and differs
 * from the portable sum only by rounding. The QJL types stay on the portable kernels. */
#include "tq_impl.h"

#if TQ_IS_X86 && !defined(TQ_NO_AVX2)

#include <immintrin.h>

/* ---- shared pieces ---- */

/* fold16 of two 8-lane accumulators (lanes 0-7, 8-15), in the canonical halving order. */
static inline float fold16(__m256 lo, __m256 hi) {
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}

static inline float hsum(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* Centroid lookup for 8 codes (int32 lanes). */
static inline __m256 lookup(int bits, __m256i idx, __m256 t_lo, __m256 t_hi) {
    __m256 lo = _mm256_permutevar8x32_ps(t_lo, idx);
    if (bits < 4) return lo;
    __m256 hi = _mm256_permutevar8x32_ps(t_hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline void tables(int bits, __m256 *t_lo, __m256 *t_hi) {
    const float *cb = tq_codebook_for(bits);
    if (bits == 2) {
        *t_lo = _mm256_setr_ps(cb[0], cb[1], cb[2], cb[3], cb[0], cb[1], cb[2], cb[3]);
        *t_hi = *t_lo;
    } else {
        *t_lo = _mm256_loadu_ps(cb);
        *t_hi = bits == 4 ? _mm256_loadu_ps(cb + 8) : *t_lo;
    }
}

/* Byte b of each centroid of the 4-, 3- and 2-bit codebooks (16, 8, 4 entries; tq3t and tq2t look
 * their 3+1- and 2+1-bit indices up in the 4- and 3-bit ones), in both 128-bit lanes: lookup16
 * finds 32 values with 4 in-lane byte shuffles where a float lookup takes 4 to 8 cross-lane
 * permutes (and 4 blends for 16 entries). Filled by tq_kernels_avx2, before any kernel of this
 * file can run. */
static uint8_t planes4[4][32] __attribute__((aligned(32)));
static uint8_t planes3[4][32] __attribute__((aligned(32)));
static uint8_t planes2[4][32] __attribute__((aligned(32)));

static void fill_planes(uint8_t planes[4][32], int bits) {
    const uint8_t *cb = (const uint8_t *)tq_codebook_for(bits);
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 32; i++) planes[b][i] = cb[4 * (i % 16 % (1 << bits)) + b];
}

static inline uint8_t (*planes_for(int bits))[32] {
    return bits == 4 ? planes4 : bits == 3 ? planes3 : planes2;
}

/* out[0..31] = d * the centroid that byte i of c indexes. The 4 shuffles give the centroids'
 * bytes b in plane order; interleaving them (bytes, then pairs) yields the floats of bytes 0-3,
 * 4-7, 8-11, 12-15 of each lane, so the dwords of c are first put in the order 0 2 4 6 | 1 3 5 7
 * that makes those values 0-7, 8-15, 16-23, 24-31. */
static inline void lookup16(uint8_t planes[4][32], __m256i c, __m256 d, float *out) {
    c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    const __m256i b0 = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)planes[0]), c);
    const __m256i b1 = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)planes[1]), c);
    const __m256i b2 = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)planes[2]), c);
    const __m256i b3 = _mm256_shuffle_epi8(_mm256_load_si256((const __m256i *)planes[3]), c);
    const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    _mm256_storeu_ps(out, _mm256_mul_ps(d, _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23))));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(d, _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23))));
    _mm256_storeu_ps(out + 16, _mm256_mul_ps(d, _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23))));
    _mm256_storeu_ps(out + 24, _mm256_mul_ps(d, _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23))));
}

/* 64 codes as bytes: c[0] holds codes 0-31, c[1] codes 32-63. */
static inline void unpack(int bits, const uint8_t *qs, const uint8_t *qh, __m256i c[2]) {
    if (bits == 4) {
        __m256i q = _mm256_loadu_si256((const __m256i *)qs);
        const __m256i m4 = _mm256_set1_epi8(15);
        c[0] = _mm256_and_si256(q, m4);
        c[1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        return;
    }
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i m2 = _mm256_set1_epi8(3);
    c[0] = _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 2, 2)), m2);
    c[1] = _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(4, 4, 6, 6)), m2);
    if (bits == 3) {
        uint64_t h;
        memcpy(&h, qh, 8);
        __m256i v = _mm256_set1_epi64x((long long)h);
        const __m256i sel0 = _mm256_setr_epi64x(0x0101010101010101ll, 0x0202020202020202ll, 0x0404040404040404ll,
                                                0x0808080808080808ll);
        const __m256i sel1 = _mm256_slli_epi64(sel0, 4);
        const __m256i four = _mm256_set1_epi8(4);
        c[0] = _mm256_or_si256(c[0], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel0), sel0), four));
        c[1] = _mm256_or_si256(c[1], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel1), sel1), four));
    }
}

/* ---- quantize ---- */

static inline __m256i assign8(int bits, __m256 v, const float *bnd) {
    __m256i k = _mm256_setzero_si256();
    const int nb = (1 << bits) - 1;
    for (int i = 0; i < nb; i++)
        k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_broadcast_ss(bnd + i), _CMP_GT_OQ)));
    return k;
}

/* 8 x 8 int32 codes -> 64 bytes in order (two registers). */
static inline void narrow(const __m256i k[8], __m256i c[2]) {
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int h = 0; h < 2; h++) {
        __m256i a = _mm256_packs_epi32(k[4 * h + 0], k[4 * h + 1]);
        __m256i b = _mm256_packs_epi32(k[4 * h + 2], k[4 * h + 3]);
        c[h] = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b), perm);
    }
}

static inline void assign(int bits, const __m256 x[8], float inv, __m256i c[2], __m256 val[8]) {
    const float *bnd = tq_bounds_for(bits);
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256 t_lo, t_hi;
    tables(bits, &t_lo, &t_hi);
    __m256i k[8];
    for (int g = 0; g < 8; g++) {
        k[g] = assign8(bits, _mm256_mul_ps(x[g], vinv), bnd);
        val[g] = lookup(bits, k[g], t_lo, t_hi);
    }
    narrow(k, c);
}

static inline void refit_sums(const __m256 x[8], const __m256 val[8], float *xc, float *cc) {
    __m256 xc0 = _mm256_mul_ps(x[0], val[0]), xc1 = _mm256_mul_ps(x[1], val[1]);
    __m256 cc0 = _mm256_mul_ps(val[0], val[0]), cc1 = _mm256_mul_ps(val[1], val[1]);
    for (int g = 2; g < 8; g += 2) {
        xc0 = _mm256_add_ps(xc0, _mm256_mul_ps(x[g], val[g]));
        xc1 = _mm256_add_ps(xc1, _mm256_mul_ps(x[g + 1], val[g + 1]));
        cc0 = _mm256_add_ps(cc0, _mm256_mul_ps(val[g], val[g]));
        cc1 = _mm256_add_ps(cc1, _mm256_mul_ps(val[g + 1], val[g + 1]));
    }
    *xc = fold16(xc0, xc1);
    *cc = fold16(cc0, cc1);
}

static inline tq_half quantize_block(int bits, const float *xp, __m256i c[2]) {
    __m256 x[8];
    for (int g = 0; g < 8; g++) x[g] = _mm256_loadu_ps(xp + 8 * g);
    __m256 s0 = _mm256_mul_ps(x[0], x[0]), s1 = _mm256_mul_ps(x[1], x[1]);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 bad = _mm256_cmp_ps(_mm256_and_ps(x[0], absmask), inf, _CMP_NLT_UQ);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(x[1], absmask), inf, _CMP_NLT_UQ));
    for (int g = 2; g < 8; g += 2) {
        s0 = _mm256_add_ps(s0, _mm256_mul_ps(x[g], x[g]));
        s1 = _mm256_add_ps(s1, _mm256_mul_ps(x[g + 1], x[g + 1]));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(x[g], absmask), inf, _CMP_NLT_UQ));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(x[g + 1], absmask), inf, _CMP_NLT_UQ));
    }
    if (_mm256_movemask_ps(bad)) {
        c[0] = c[1] = _mm256_setzero_si256();
        return TQ_HALF_NAN;
    }
    float inv, rms;
    const float sumsq = fold16(s0, s1);
    int kind = tq_first_scale(sumsq, &inv, &rms);
    if (kind == 0) {
        c[0] = c[1] = _mm256_setzero_si256();
        return 0;
    }
    __m256 val[8];
    assign(bits, x, inv, c, val);
    if (kind == 2) return tq_store_scale(TQ_FP16_MAX);
    float xc, cc;
    refit_sums(x, val, &xc, &cc);
    float d1 = tq_lsq_scale(xc, cc, rms);
    assign(bits, x, 1.0f / d1, c, val);
    refit_sums(x, val, &xc, &cc);
    return tq_store_scale(tq_unbiased_scale(sumsq, xc, tq_lsq_scale(xc, cc, d1)));
}

static inline void store2(const __m256i c[2], uint8_t *qs) {
    const __m256i m2 = _mm256_set1_epi8(3);
    __m256i a = _mm256_and_si256(c[0], m2), b = _mm256_and_si256(c[1], m2);
    __m128i r = _mm_or_si128(_mm256_castsi256_si128(a), _mm_slli_epi16(_mm256_extracti128_si256(a, 1), 2));
    r = _mm_or_si128(r, _mm_slli_epi16(_mm256_castsi256_si128(b), 4));
    r = _mm_or_si128(r, _mm_slli_epi16(_mm256_extracti128_si256(b, 1), 6));
    _mm_storeu_si128((__m128i *)qs, r);
}

static inline void store_hi_bit(const __m256i c[2], uint8_t *qh) {
    /* bit 2 of code j goes to bit j/8 of qh[j%8]: shift each 8-byte group g left by g. */
    const __m256i one = _mm256_set1_epi8(1);
    __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(c[0], 2), one);
    __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(c[1], 2), one);
    __m256i r = _mm256_or_si256(_mm256_sllv_epi64(h0, _mm256_setr_epi64x(0, 1, 2, 3)),
                                _mm256_sllv_epi64(h1, _mm256_setr_epi64x(4, 5, 6, 7)));
    __m128i s = _mm_or_si128(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    s = _mm_or_si128(s, _mm_unpackhi_epi64(s, s));
    _mm_storel_epi64((__m128i *)qh, s);
}

static void quantize_tq2(const float *x, void *vy, size_t nb) {
    block_tq2 *y = (block_tq2 *)vy;
    __m256i c[2];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(2, x + i * TQ_BLOCK, c);
        store2(c, y[i].qs);
    }
}

static void quantize_tq3(const float *x, void *vy, size_t nb) {
    block_tq3 *y = (block_tq3 *)vy;
    __m256i c[2];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(3, x + i * TQ_BLOCK, c);
        store2(c, y[i].qs);
        store_hi_bit(c, y[i].qh);
    }
}

static void quantize_tq4(const float *x, void *vy, size_t nb) {
    block_tq4 *y = (block_tq4 *)vy;
    __m256i c[2];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(4, x + i * TQ_BLOCK, c);
        _mm256_storeu_si256((__m256i *)y[i].qs, _mm256_or_si256(c[0], _mm256_slli_epi16(c[1], 4)));
    }
}

/* ---- dequantize and dot ---- */

/* The 2- and 3-bit codes straight into int32 lanes, 8 values at a time, looked up with one
 * cross-lane permute in a table already multiplied by the scale (d * c, the same product the
 * multiply after the lookup rounds): value j's 2 low bits are bits 2(j / 16) of qs[j % 16], its
 * high bit is bit j / 8 of qh[j % 8], so qs's two halves and qh widen to int32 once and each
 * group of 8 is a shift and a mask of one of them. Fewer shuffles than lookup16's byte planes,
 * which the 16 entries of 4 bits still take. The scale converts with F16C: exact, as
 * tq_fp16_to_fp32 is. */
static inline void dequant_block(int bits, tq_half dh, const uint8_t *qs, const uint8_t *qh, float *out) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
    if (bits == 4) {
        __m256i c[2];
        unpack(bits, qs, qh, c);
        lookup16(planes_for(bits), c[0], d, out);
        lookup16(planes_for(bits), c[1], d, out + 32);
        return;
    }
    __m256 t_lo, t_hi;
    tables(bits, &t_lo, &t_hi);
    const __m256 t = _mm256_mul_ps(d, t_lo);
    const __m256i low = _mm256_set1_epi32(3), high = _mm256_set1_epi32(4);
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    const __m256i h = bits == 3 ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qh)) : _mm256_setzero_si256();
    for (int g = 0; g < 8; g++) {
        __m256i c = _mm256_and_si256(_mm256_srli_epi32(g & 1 ? b1 : b0, 2 * (g >> 1)), low);
        if (bits == 3)
            c = _mm256_or_si256(c, _mm256_and_si256(g < 2 ? _mm256_slli_epi32(h, 2 - g) : _mm256_srli_epi32(h, g - 2), high));
        _mm256_storeu_ps(out + 8 * g, _mm256_permutevar8x32_ps(t, c));
    }
}

/* d * sum q[i] * c[i]: the block's centroids decoded as dequantize does (lookup16, here times 1),
 * the products summed in two chains, d applied once */
static inline __m256 dot_block(int bits, tq_half dh, const uint8_t *qs, const uint8_t *qh, const float *q, __m256 acc) {
    float x[TQ_BLOCK] __attribute__((aligned(32)));
    __m256i c[2];
    unpack(bits, qs, qh, c);
    lookup16(planes_for(bits), c[0], _mm256_set1_ps(1.0f), x);
    lookup16(planes_for(bits), c[1], _mm256_set1_ps(1.0f), x + 32);
    __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_load_ps(x));
    __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(q + 8), _mm256_load_ps(x + 8));
    for (int g = 2; g < 8; g += 2) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * g), _mm256_load_ps(x + 8 * g), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * g + 8), _mm256_load_ps(x + 8 * g + 8), s1);
    }
    return _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(dh)), _mm256_add_ps(s0, s1), acc);
}

static void dequantize_tq2(const void *vy, float *x, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    for (size_t i = 0; i < nb; i++) dequant_block(2, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}
static void dequantize_tq3(const void *vy, float *x, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    for (size_t i = 0; i < nb; i++) dequant_block(3, y[i].d, y[i].qs, y[i].qh, x + i * TQ_BLOCK);
}
static void dequantize_tq4(const void *vy, float *x, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    for (size_t i = 0; i < nb; i++) dequant_block(4, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}

static float dot_tq2(const float *q, const void *vy, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(2, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return hsum(acc);
}
static float dot_tq3(const float *q, const void *vy, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(3, y[i].d, y[i].qs, y[i].qh, q + i * TQ_BLOCK, acc);
    return hsum(acc);
}
static float dot_tq4(const float *q, const void *vy, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) acc = dot_block(4, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return hsum(acc);
}

/* ---- the trellis-coded types (tq-math.h): the encoder of tq_tcq_x86.h; the decoder builds the
 * 64 indices 4 * level + subset as bytes, 32 per register (as unpack does for tq3), then looks them
 * up in the (b+1)-bit codebook 32 at a time (lookup16), as tq3's and tq4's ---- */

#include "tq_tcq_x86.h"

/* bit j of w (j = 0..63) as `one` in byte j of c[0] (j < 32) or c[1] (j - 32), the order unpack
 * gives: byte j takes byte j / 8 of w (a shuffle within each 128-bit lane of the broadcast word),
 * then bit j % 8 of it */
static inline void tcq_spread64(uint64_t w, __m256i one, __m256i c[2]) {
    const __m256i v = _mm256_set1_epi64x((long long)w);
    const __m256i s0 = _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0202020202020202ll, 0x0303030303030303ll);
    const __m256i s1 = _mm256_add_epi8(s0, _mm256_set1_epi8(4));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    const __m256i a = _mm256_and_si256(_mm256_shuffle_epi8(v, s0), bit);
    const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(v, s1), bit);
    c[0] = _mm256_and_si256(_mm256_cmpeq_epi8(a, bit), one);
    c[1] = _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), one);
}

/* qs: tq3t's level plane (value j in byte j % 16, bits 2 * (j / 16)), or NULL and tq2t's level word
 * l (bit j = value j's level) */
static inline void tcq_dequant_block(int bits, const uint8_t *qs, uint64_t l, const uint8_t *qu, float scale,
                                     float *out) {
    uint64_t z1, z0;
    tq_tcq_subset_words(tq_load_word(qu), &z1, &z0);
    __m256i c[2], s1[2], s0[2];
    if (qs) {
        unpack(2, qs, NULL, c);
        c[0] = _mm256_slli_epi16(c[0], 2); /* levels 0..3: no carry across bytes */
        c[1] = _mm256_slli_epi16(c[1], 2);
    } else {
        tcq_spread64(l, _mm256_set1_epi8(4), c);
    }
    tcq_spread64(z1, _mm256_set1_epi8(2), s1);
    tcq_spread64(z0, _mm256_set1_epi8(1), s0);
    for (int h = 0; h < 2; h++) c[h] = _mm256_or_si256(c[h], _mm256_or_si256(s1[h], s0[h]));
    const __m256 d = _mm256_set1_ps(scale);
    lookup16(planes_for(bits + 1), c[0], d, out);
    lookup16(planes_for(bits + 1), c[1], d, out + 32);
}

/* one block from its first byte; its code bytes (tq_tcq_store_codes) follow the scale */
static inline void tcq_dequant_one(int bits, int s8, const uint8_t *blk, float *out) {
    const uint8_t *q = blk + tq_tcq_scale_bytes(s8);
    if (bits == 3) tcq_dequant_block(3, q, 0, q + 16, tq_tcq_block_scale(s8, blk), out);
    else tcq_dequant_block(2, NULL, tq_load_word(q + 8), q, tq_tcq_block_scale(s8, blk), out);
}

static inline void tcq_dequant_rows(int bits, int s8, const void *vy, float *x, size_t nb) {
    const size_t bytes = tq_tcq_block_bytes(bits, s8);
    for (size_t i = 0; i < nb; i++) tcq_dequant_one(bits, s8, (const uint8_t *)vy + i * bytes, x + i * TQ_BLOCK);
}
static void dequantize_tq2t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 0, vy, x, nb); }
static void dequantize_tq3t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 0, vy, x, nb); }
static void dequantize_tq2ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 1, vy, x, nb); }
static void dequantize_tq3ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 1, vy, x, nb); }

static inline float tcq_dot(int bits, int s8, const float *q, const void *vy, size_t nb) {
    const size_t bytes = tq_tcq_block_bytes(bits, s8);
    float x[TQ_BLOCK] __attribute__((aligned(32)));
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++, q += TQ_BLOCK) {
        tcq_dequant_one(bits, s8, (const uint8_t *)vy + i * bytes, x);
        for (int g = 0; g < 8; g += 2) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * g), _mm256_load_ps(x + 8 * g), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * g + 8), _mm256_load_ps(x + 8 * g + 8), a1);
        }
    }
    return hsum(_mm256_add_ps(a0, a1));
}
static float dot_tq2t(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 0, q, vy, nb); }
static float dot_tq3t(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 0, q, vy, nb); }
static float dot_tq2ts(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 1, q, vy, nb); }
static float dot_tq3ts(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 1, q, vy, nb); }

/* ---- attention (tq_attn.h) ---- */

static inline float attn_dot(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    return hsum(_mm256_add_ps(s0, s1));
}

/* 8 keys at once: one accumulator per key, the 8 sums reduced side by side (hadd twice, then the
 * two 128-bit halves), in place of 8 separate horizontal reductions. Rows past nt read the group's
 * first row again and are not used. */
#define TQ_ATTN_HAVE_DOTS 1
static inline void attn_dots(const float *a, const float *rows, size_t stride, int nt, int n, float *out) {
    for (int j0 = 0; j0 < nt; j0 += 8) {
        __m256 s[8];
        const float *r[8];
        for (int j = 0; j < 8; j++) {
            s[j] = _mm256_setzero_ps();
            r[j] = (const float *)((const char *)rows + (size_t)(j0 + j < nt ? j0 + j : j0) * stride);
        }
        for (int i = 0; i < n; i += 8) {
            const __m256 q = _mm256_loadu_ps(a + i);
            for (int j = 0; j < 8; j++) s[j] = _mm256_fmadd_ps(q, _mm256_loadu_ps(r[j] + i), s[j]);
        }
        const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
        const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
        _mm256_storeu_ps(out + j0, _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31)));
    }
}

/* a block's 64 values of acc in 8 registers while the tile's keys go by (n is a multiple of 64):
 * each key's weight tested and broadcast once per block, not once per 32 values */
static inline void attn_accum(float *acc, const float *p, const float *rows, int nt, int n) {
    for (int i = 0; i < n; i += 64) {
        __m256 s[8];
        for (int g = 0; g < 8; g++) s[g] = _mm256_loadu_ps(acc + i + 8 * g);
        for (int j = 0; j < nt; j++) {
            if (p[j] == 0.0f) continue;
            const __m256 w = _mm256_set1_ps(p[j]);
            const float *x = rows + (size_t)j * n + i;
            for (int g = 0; g < 8; g++) s[g] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * g), s[g]);
        }
        for (int g = 0; g < 8; g++) _mm256_storeu_ps(acc + i + 8 * g, s[g]);
    }
}

static inline void attn_scale(float *acc, float s, int n) {
    const __m256 m = _mm256_set1_ps(s);
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(acc + i, _mm256_mul_ps(m, _mm256_loadu_ps(acc + i)));
}

#include "tq_exp_x86.h"

#define TQ_ATTN_OWN_DECODERS 1
#define TQ_ATTN_NAME attn_avx2
#include "tq_attn.h"

void tq_kernels_avx2(tq_kernels *k) {
    fill_planes(planes4, 4);
    fill_planes(planes3, 3);
    fill_planes(planes2, 2);
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
    k->attn = attn_avx2;
}

#endif
