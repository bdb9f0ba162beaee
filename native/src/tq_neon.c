/* AArch64 Advanced SIMD kernels for tq2/tq3/tq4/tq2t/tq3t and the attention loop (NEON is
 * mandatory on AArch64: no extra flags).
 *
 * The 16 canonical lanes (tq_impl.h) live in four float32x4 accumulators a[q] = lanes 4q..4q+3;
 * with x[g] = values 4g..4g+3, lane group q adds the vectors x[q], x[q+4], x[q+8], x[q+12] in that
 * order, each product rounded on its own (vmulq then vaddq, never vfmaq: this file, like the whole
 * library, must be built with -ffp-contract=off, or GCC may fuse them). fold16 then halves 8, 4,
 * 2, 1. Quantize gives bit-identical codes and scales; dequantize is one multiply d * centroid;
 * dot uses FMA and differs from the portable sum only by rounding. The QJL types stay portable.
 *
 * Centroids are looked up with vqtbl4q_u8 over the 64 bytes of a 16-float table: a code c
 * becomes the byte indices 4c, 4c+1, 4c+2, 4c+3. */
#include "tq_impl.h"

#if TQ_IS_AARCH64 && !defined(TQ_NO_NEON)

#include <arm_neon.h>

#if defined(__AARCH64EB__)
#error "tq_neon.c assumes little-endian lanes (byte tables, vuzp narrowing): build with -DTQ_NO_NEON=ON"
#endif

/* ---- shared pieces ---- */

/* fold16 of the four accumulators in the canonical order: l += l+8, l+4, l+2, l+1. */
static inline float fold16(const float32x4_t a[4]) {
    float32x4_t b0 = vaddq_f32(a[0], a[2]); /* lanes 0-3 += 8-11 */
    float32x4_t b1 = vaddq_f32(a[1], a[3]); /* lanes 4-7 += 12-15 */
    float32x4_t c = vaddq_f32(b0, b1);      /* lanes 0-3 += 4-7 */
    float32x2_t d = vadd_f32(vget_low_f32(c), vget_high_f32(c)); /* lanes 0-1 += 2-3 */
    return vget_lane_f32(d, 0) + vget_lane_f32(d, 1);
}

/* The b-bit codebook as 64 table bytes (16 floats; entries past 2^b are never indexed). */
static inline uint8x16x4_t codebook_table(int bits) {
    const float *cb = tq_codebook_for(bits);
    float t[16];
    for (int i = 0; i < 16; i++) t[i] = cb[i & ((1 << bits) - 1)];
    uint8x16x4_t tab;
    tab.val[0] = vreinterpretq_u8_f32(vld1q_f32(t));
    tab.val[1] = vreinterpretq_u8_f32(vld1q_f32(t + 4));
    tab.val[2] = vreinterpretq_u8_f32(vld1q_f32(t + 8));
    tab.val[3] = vreinterpretq_u8_f32(vld1q_f32(t + 12));
    return tab;
}

/* Centroids of 16 codes (bytes, each < 16): out[i] = the values of codes 4i..4i+3. */
static inline void lookup16(uint8x16_t c, const uint8x16x4_t tab, float32x4_t out[4]) {
    const uint8x16_t off = vreinterpretq_u8_u32(vdupq_n_u32(0x03020100u)); /* bytes 0,1,2,3, ... */
    uint8x16_t c4 = vshlq_n_u8(c, 2);
    uint8x16_t z0 = vzip1q_u8(c4, c4), z1 = vzip2q_u8(c4, c4); /* codes 0-7, 8-15, each twice */
    out[0] = vreinterpretq_f32_u8(vqtbl4q_u8(tab, vorrq_u8(vzip1q_u8(z0, z0), off)));
    out[1] = vreinterpretq_f32_u8(vqtbl4q_u8(tab, vorrq_u8(vzip2q_u8(z0, z0), off)));
    out[2] = vreinterpretq_f32_u8(vqtbl4q_u8(tab, vorrq_u8(vzip1q_u8(z1, z1), off)));
    out[3] = vreinterpretq_f32_u8(vqtbl4q_u8(tab, vorrq_u8(vzip2q_u8(z1, z1), off)));
}

/* ---- quantize ---- */

/* Codes of 4 values: the number of boundaries strictly below v (a NaN counts none). */
static inline uint32x4_t codes4(int bits, float32x4_t v) {
    const float *bnd = tq_bounds_for(bits);
    uint32x4_t k = vdupq_n_u32(0);
    for (int i = 0; i < (1 << bits) - 1; i++) k = vsubq_u32(k, vcgtq_f32(v, vdupq_n_f32(bnd[i]))); /* true = -1 */
    return k;
}

/* c[r] = codes of values 16r..16r+15 as bytes; val[g] = their centroids, 4 at a time. */
static inline void assign(int bits, const float32x4_t x[16], float inv, const uint8x16x4_t tab, uint8x16_t c[4],
                          float32x4_t val[16]) {
    const float32x4_t vinv = vdupq_n_f32(inv);
    uint32x4_t k[16];
    for (int g = 0; g < 16; g++) k[g] = codes4(bits, vmulq_f32(x[g], vinv));
    for (int r = 0; r < 4; r++) {
        uint16x8_t a = vuzp1q_u16(vreinterpretq_u16_u32(k[4 * r]), vreinterpretq_u16_u32(k[4 * r + 1]));
        uint16x8_t b = vuzp1q_u16(vreinterpretq_u16_u32(k[4 * r + 2]), vreinterpretq_u16_u32(k[4 * r + 3]));
        c[r] = vuzp1q_u8(vreinterpretq_u8_u16(a), vreinterpretq_u8_u16(b));
        lookup16(c[r], tab, val + 4 * r);
    }
}

static inline void refit_sums(const float32x4_t x[16], const float32x4_t val[16], float *xcs, float *ccs) {
    float32x4_t xc[4], cc[4];
    for (int q = 0; q < 4; q++) {
        xc[q] = vmulq_f32(x[q], val[q]);
        cc[q] = vmulq_f32(val[q], val[q]);
    }
    for (int r = 1; r < 4; r++)
        for (int q = 0; q < 4; q++) {
            xc[q] = vaddq_f32(xc[q], vmulq_f32(x[4 * r + q], val[4 * r + q]));
            cc[q] = vaddq_f32(cc[q], vmulq_f32(val[4 * r + q], val[4 * r + q]));
        }
    *xcs = fold16(xc);
    *ccs = fold16(cc);
}

TQ_INLINE tq_half quantize_block(int bits, const float *xp, const uint8x16x4_t tab, uint8x16_t c[4]) {
    float32x4_t x[16];
    for (int g = 0; g < 16; g++) x[g] = vld1q_f32(xp + 4 * g);
    float32x4_t a[4];
    for (int q = 0; q < 4; q++) a[q] = vmulq_f32(x[q], x[q]);
    for (int r = 1; r < 4; r++)
        for (int q = 0; q < 4; q++) a[q] = vaddq_f32(a[q], vmulq_f32(x[4 * r + q], x[4 * r + q]));
    /* |x| < inf is false for infinities and NaNs */
    const float32x4_t inf = vdupq_n_f32(INFINITY);
    uint32x4_t ok = vcaltq_f32(x[0], inf);
    for (int g = 1; g < 16; g++) ok = vandq_u32(ok, vcaltq_f32(x[g], inf));
    if (vminvq_u32(ok) == 0) {
        c[0] = c[1] = c[2] = c[3] = vdupq_n_u8(0);
        return TQ_HALF_NAN;
    }
    float inv, rms;
    const float sumsq = fold16(a);
    int kind = tq_first_scale(sumsq, &inv, &rms);
    if (kind == 0) {
        c[0] = c[1] = c[2] = c[3] = vdupq_n_u8(0);
        return 0;
    }
    float32x4_t val[16];
    assign(bits, x, inv, tab, c, val);
    if (kind == 2) return tq_store_scale(TQ_FP16_MAX);
    float xc, cc;
    refit_sums(x, val, &xc, &cc);
    float d1 = tq_lsq_scale(xc, cc, rms);
    assign(bits, x, 1.0f / d1, tab, c, val);
    refit_sums(x, val, &xc, &cc);
    return tq_store_scale(tq_unbiased_scale(sumsq, xc, tq_lsq_scale(xc, cc, d1)));
}

/* 2-bit plane: qs[l] = c[l] | c[l+16] << 2 | c[l+32] << 4 | c[l+48] << 6 (low two code bits). */
static inline void store2(const uint8x16_t c[4], uint8_t *qs) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t p = vandq_u8(c[0], m3);
    p = vorrq_u8(p, vshlq_n_u8(vandq_u8(c[1], m3), 2));
    p = vorrq_u8(p, vshlq_n_u8(vandq_u8(c[2], m3), 4));
    p = vorrq_u8(p, vshlq_n_u8(c[3], 6));
    vst1q_u8(qs, p);
}

/* 1-bit plane of code bit 2: bit g of qh[i] = bit 2 of code 8g+i, i.e. qh = OR_g (h[8g..8g+7] << g). */
static inline void store_hi_bit(const uint8x16_t c[4], uint8_t *qh) {
    const uint8x16_t one = vdupq_n_u8(1);
    uint8x16_t h0 = vandq_u8(vshrq_n_u8(c[0], 2), one), h1 = vandq_u8(vshrq_n_u8(c[1], 2), one);
    uint8x16_t h2 = vandq_u8(vshrq_n_u8(c[2], 2), one), h3 = vandq_u8(vshrq_n_u8(c[3], 2), one);
    uint8x8_t m = vget_low_u8(h0);
    m = vorr_u8(m, vshl_n_u8(vget_high_u8(h0), 1));
    m = vorr_u8(m, vshl_n_u8(vget_low_u8(h1), 2));
    m = vorr_u8(m, vshl_n_u8(vget_high_u8(h1), 3));
    m = vorr_u8(m, vshl_n_u8(vget_low_u8(h2), 4));
    m = vorr_u8(m, vshl_n_u8(vget_high_u8(h2), 5));
    m = vorr_u8(m, vshl_n_u8(vget_low_u8(h3), 6));
    m = vorr_u8(m, vshl_n_u8(vget_high_u8(h3), 7));
    vst1_u8(qh, m);
}

static void quantize_tq2(const float *x, void *vy, size_t nb) {
    block_tq2 *y = (block_tq2 *)vy;
    const uint8x16x4_t tab = codebook_table(2);
    uint8x16_t c[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(2, x + i * TQ_BLOCK, tab, c);
        store2(c, y[i].qs);
    }
}

static void quantize_tq3(const float *x, void *vy, size_t nb) {
    block_tq3 *y = (block_tq3 *)vy;
    const uint8x16x4_t tab = codebook_table(3);
    uint8x16_t c[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(3, x + i * TQ_BLOCK, tab, c);
        store2(c, y[i].qs);
        store_hi_bit(c, y[i].qh);
    }
}

static void quantize_tq4(const float *x, void *vy, size_t nb) {
    block_tq4 *y = (block_tq4 *)vy;
    const uint8x16x4_t tab = codebook_table(4);
    uint8x16_t c[4];
    for (size_t i = 0; i < nb; i++) {
        y[i].d = quantize_block(4, x + i * TQ_BLOCK, tab, c);
        /* qs[j] = c[j] | c[j+32] << 4 */
        vst1q_u8(y[i].qs, vorrq_u8(c[0], vshlq_n_u8(c[2], 4)));
        vst1q_u8(y[i].qs + 16, vorrq_u8(c[1], vshlq_n_u8(c[3], 4)));
    }
}

/* ---- dequantize and dot ---- */

/* The 64 codes as bytes: c[r] = codes 16r..16r+15, exact (every byte < 2^b). */
static inline void unpack(int bits, const uint8_t *qs, const uint8_t *qh, uint8x16_t c[4]) {
    if (bits == 4) {
        const uint8x16_t m15 = vdupq_n_u8(15);
        uint8x16_t a = vld1q_u8(qs), b = vld1q_u8(qs + 16);
        c[0] = vandq_u8(a, m15);
        c[1] = vandq_u8(b, m15);
        c[2] = vshrq_n_u8(a, 4);
        c[3] = vshrq_n_u8(b, 4);
        return;
    }
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t a = vld1q_u8(qs);
    c[0] = vandq_u8(a, m3);
    c[1] = vandq_u8(vshrq_n_u8(a, 2), m3);
    c[2] = vandq_u8(vshrq_n_u8(a, 4), m3);
    c[3] = vshrq_n_u8(a, 6);
    if (bits == 3) {
        /* bit 2 of code 8g+i = bit g of qh[i]: c[r] covers g = 2r (low half) and 2r+1 (high half) */
        const uint8x16_t four = vdupq_n_u8(4);
        uint8x8_t h = vld1_u8(qh);
        for (int r = 0; r < 4; r++) {
            uint8x16_t sel = vcombine_u8(vdup_n_u8((uint8_t)(1u << (2 * r))), vdup_n_u8((uint8_t)(2u << (2 * r))));
            c[r] = vorrq_u8(c[r], vandq_u8(vtstq_u8(vcombine_u8(h, h), sel), four));
        }
    }
}

/* d * the centroids of the 64 codes c (unpack's order) */
static inline void lookup_block(const uint8x16x4_t tab, const uint8x16_t c[4], float scale, float *out) {
    const float32x4_t d = vdupq_n_f32(scale);
    for (int r = 0; r < 4; r++) {
        float32x4_t v[4];
        lookup16(c[r], tab, v);
        for (int i = 0; i < 4; i++) vst1q_f32(out + 16 * r + 4 * i, vmulq_f32(d, v[i]));
    }
}

/* acc + d * <q, the centroids of the 64 codes c> */
static inline float32x4_t dot_codes(const uint8x16x4_t tab, const uint8x16_t c[4], float scale, const float *q,
                                    float32x4_t acc) {
    float32x4_t s[4], v[4];
    lookup16(c[0], tab, v);
    for (int i = 0; i < 4; i++) s[i] = vmulq_f32(vld1q_f32(q + 4 * i), v[i]);
    for (int r = 1; r < 4; r++) {
        lookup16(c[r], tab, v);
        for (int i = 0; i < 4; i++) s[i] = vfmaq_f32(s[i], vld1q_f32(q + 16 * r + 4 * i), v[i]);
    }
    float32x4_t t = vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));
    return vfmaq_f32(acc, t, vdupq_n_f32(scale));
}

static inline void dequant_block(int bits, const uint8x16x4_t tab, tq_half dh, const uint8_t *qs,
                                 const uint8_t *qh, float *out) {
    uint8x16_t c[4];
    unpack(bits, qs, qh, c);
    lookup_block(tab, c, tq_fp16_to_fp32(dh), out);
}

static inline float32x4_t dot_block(int bits, const uint8x16x4_t tab, tq_half dh, const uint8_t *qs,
                                    const uint8_t *qh, const float *q, float32x4_t acc) {
    uint8x16_t c[4];
    unpack(bits, qs, qh, c);
    return dot_codes(tab, c, tq_fp16_to_fp32(dh), q, acc);
}

static void dequantize_tq2(const void *vy, float *x, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    const uint8x16x4_t tab = codebook_table(2);
    for (size_t i = 0; i < nb; i++) dequant_block(2, tab, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}
static void dequantize_tq3(const void *vy, float *x, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    const uint8x16x4_t tab = codebook_table(3);
    for (size_t i = 0; i < nb; i++) dequant_block(3, tab, y[i].d, y[i].qs, y[i].qh, x + i * TQ_BLOCK);
}
static void dequantize_tq4(const void *vy, float *x, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    const uint8x16x4_t tab = codebook_table(4);
    for (size_t i = 0; i < nb; i++) dequant_block(4, tab, y[i].d, y[i].qs, NULL, x + i * TQ_BLOCK);
}

static float dot_tq2(const float *q, const void *vy, size_t nb) {
    const block_tq2 *y = (const block_tq2 *)vy;
    const uint8x16x4_t tab = codebook_table(2);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (size_t i = 0; i < nb; i++) acc = dot_block(2, tab, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return vaddvq_f32(acc);
}
static float dot_tq3(const float *q, const void *vy, size_t nb) {
    const block_tq3 *y = (const block_tq3 *)vy;
    const uint8x16x4_t tab = codebook_table(3);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (size_t i = 0; i < nb; i++) acc = dot_block(3, tab, y[i].d, y[i].qs, y[i].qh, q + i * TQ_BLOCK, acc);
    return vaddvq_f32(acc);
}
static float dot_tq4(const float *q, const void *vy, size_t nb) {
    const block_tq4 *y = (const block_tq4 *)vy;
    const uint8x16x4_t tab = codebook_table(4);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (size_t i = 0; i < nb; i++) acc = dot_block(4, tab, y[i].d, y[i].qs, NULL, q + i * TQ_BLOCK, acc);
    return vaddvq_f32(acc);
}

/* ---- the trellis-coded types (tq-math.h): the encoder is tq_tcq_forward with the trellis's 8
 * states in two registers (states 0-3 and 4-7), forming the same sums in the same order as the
 * portable pass (so it finds the same path and the codes stay bit-identical); the decoder builds the
 * 64 indices 4 * level + subset as bytes, 16 per register in unpack's order, and looks them up in
 * the (b+1)-bit codebook as tq4's ---- */

/* bit l of the mask: lane l of m is set */
static inline unsigned mask4(uint32x4_t m) {
    const uint32x4_t w = {1u, 2u, 4u, 8u};
    return vaddvq_u32(vandq_u32(m, w));
}

/* lanes i of e picked by the 4 indices of `sel` (byte indices of a 4-float permutation) */
static inline float32x4_t pick4(float32x4_t e, uint8x16_t sel) {
    return vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(e), sel));
}

static inline uint8x16_t pick_bytes(const int k[4]) {
    uint8_t b[16];
    for (int i = 0; i < 4; i++)
        for (int t = 0; t < 4; t++) b[4 * i + t] = (uint8_t)(4 * k[i] + t);
    return vld1q_u8(b);
}


static int tcq_forward_neon(int bits, const float *x, float inv, uint8_t back[TQ_BLOCK], uint8_t lev[TQ_BLOCK]) {
    const float *A = tq_codebook_for(bits + 1);
    /* levels 0 and 1 of subsets 0-3 (entries 4 * level + k), and levels 2 and 3 (tq3t) */
    const float32x4_t a0 = vld1q_f32(A), a1 = vld1q_f32(A + 4);
    const float32x4_t a2 = bits == 3 ? vld1q_f32(A + 8) : a0, a3 = bits == 3 ? vld1q_f32(A + 12) : a1;
    /* state s is reached from s >> 1 (branch into subset k(s)) or (s >> 1) + 4 (subset k(s + 8)) */
    int k[16];
    for (int s = 0; s < 16; s++) k[s] = tq_tcq_subset((unsigned)s);
    const uint8x16_t k_lo_a = pick_bytes(k), k_lo_b = pick_bytes(k + 4);
    const uint8x16_t k_hi_a = pick_bytes(k + 8), k_hi_b = pick_bytes(k + 12);
    float32x4_t cost0 = {0.0f, TQ_TCQ_FAR, TQ_TCQ_FAR, TQ_TCQ_FAR}; /* states 0-3 */
    float32x4_t cost1 = vdupq_n_f32(TQ_TCQ_FAR);                    /* states 4-7 */
    for (int j = 0; j < TQ_BLOCK; j++) {
        const float32x4_t v = vdupq_n_f32(x[j] * inv);
        /* lane k of e: subset k's least error, its level in b0 (and b1): tq_tcq_level's ties */
        float32x4_t e0 = vsubq_f32(v, a0), e1 = vsubq_f32(v, a1);
        e0 = vmulq_f32(e0, e0);
        e1 = vmulq_f32(e1, e1);
        const uint32x4_t lt01 = vcltq_f32(e1, e0);
        float32x4_t e = vbslq_f32(lt01, e1, e0);
        unsigned b0 = mask4(lt01), b1 = 0;
        if (bits == 3) {
            float32x4_t e2 = vsubq_f32(v, a2), e3 = vsubq_f32(v, a3);
            e2 = vmulq_f32(e2, e2);
            e3 = vmulq_f32(e3, e3);
            const uint32x4_t lt23 = vcltq_f32(e3, e2);
            const float32x4_t e23 = vbslq_f32(lt23, e3, e2);
            const uint32x4_t lt = vcltq_f32(e23, e);
            e = vbslq_f32(lt, e23, e);
            b1 = mask4(lt);
            b0 = (b1 & mask4(lt23)) | (~b1 & b0 & 15u);
        }
        lev[j] = (uint8_t)(tq_tcq_spread4[b0] | tq_tcq_spread4[b1] << 1);
        /* states 0-3 come from 0,0,1,1 or 4,4,5,5; states 4-7 from 2,2,3,3 or 6,6,7,7 */
        const float32x4_t c0a = vaddq_f32(vzip1q_f32(cost0, cost0), pick4(e, k_lo_a));
        const float32x4_t c0b = vaddq_f32(vzip2q_f32(cost0, cost0), pick4(e, k_lo_b));
        const float32x4_t c1a = vaddq_f32(vzip1q_f32(cost1, cost1), pick4(e, k_hi_a));
        const float32x4_t c1b = vaddq_f32(vzip2q_f32(cost1, cost1), pick4(e, k_hi_b));
        const uint32x4_t lta = vcltq_f32(c1a, c0a), ltb = vcltq_f32(c1b, c0b);
        cost0 = vbslq_f32(lta, c1a, c0a);
        cost1 = vbslq_f32(ltb, c1b, c0b);
        back[j] = (uint8_t)(mask4(lta) | mask4(ltb) << 4);
    }
    float c[TQ_TCQ_STATES];
    vst1q_f32(c, cost0);
    vst1q_f32(c + 4, cost1);
    return tq_tcq_end_state(c);
}

static void quantize_tq2t(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(2, 0, x, vy, nb, tcq_forward_neon); }
static void quantize_tq3t(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(3, 0, x, vy, nb, tcq_forward_neon); }
static void quantize_tq2ts(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(2, 1, x, vy, nb, tcq_forward_neon); }
static void quantize_tq3ts(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(3, 1, x, vy, nb, tcq_forward_neon); }

/* bit j of w (j = 0..63) as `one` in byte j % 16 of c[j / 16]: byte j takes byte j / 8 of w (a
 * table lookup in the broadcast word), then bit j % 8 of it */
static inline void tcq_spread64(uint64_t w, uint8x16_t one, uint8x16_t c[4]) {
    const uint8x16_t v = vreinterpretq_u8_u64(vdupq_n_u64(w));
    const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull));
    for (int r = 0; r < 4; r++) {
        const uint8x16_t idx = vcombine_u8(vdup_n_u8((uint8_t)(2 * r)), vdup_n_u8((uint8_t)(2 * r + 1)));
        c[r] = vandq_u8(vtstq_u8(vqtbl1q_u8(v, idx), bit), one);
    }
}

/* the 64 indices 4 * level + subset; qs: tq3t's level plane (value j in byte j % 16, bits
 * 2 * (j / 16)), or NULL and tq2t's level word l (bit j = value j's level) */
static inline void tcq_indices(const uint8_t *qs, uint64_t l, const uint8_t *qu, uint8x16_t c[4]) {
    uint64_t z1, z0;
    tq_tcq_subset_words(tq_load_word(qu), &z1, &z0);
    uint8x16_t s1[4], s0[4];
    if (qs) {
        unpack(2, qs, NULL, c);
        for (int r = 0; r < 4; r++) c[r] = vshlq_n_u8(c[r], 2);
    } else {
        tcq_spread64(l, vdupq_n_u8(4), c);
    }
    tcq_spread64(z1, vdupq_n_u8(2), s1);
    tcq_spread64(z0, vdupq_n_u8(1), s0);
    for (int r = 0; r < 4; r++) c[r] = vorrq_u8(c[r], vorrq_u8(s1[r], s0[r]));
}

/* q: a block's code bytes (tq_tcq_store_codes), after its scale */
static inline void tcq_block_indices(int bits, const uint8_t *q, uint8x16_t c[4]) {
    if (bits == 3) tcq_indices(q, 0, q + 16, c);
    else tcq_indices(NULL, tq_load_word(q + 8), q, c);
}

static inline void tcq_dequant_rows(int bits, int s8, const void *vy, float *x, size_t nb) {
    const size_t hdr = tq_tcq_scale_bytes(s8), bytes = tq_tcq_block_bytes(bits, s8);
    const uint8x16x4_t tab = codebook_table(bits + 1);
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)vy + i * bytes;
        uint8x16_t c[4];
        tcq_block_indices(bits, blk + hdr, c);
        lookup_block(tab, c, tq_tcq_block_scale(s8, blk), x + i * TQ_BLOCK);
    }
}

static inline float tcq_dot(int bits, int s8, const float *q, const void *vy, size_t nb) {
    const size_t hdr = tq_tcq_scale_bytes(s8), bytes = tq_tcq_block_bytes(bits, s8);
    const uint8x16x4_t tab = codebook_table(bits + 1);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (size_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)vy + i * bytes;
        uint8x16_t c[4];
        tcq_block_indices(bits, blk + hdr, c);
        acc = dot_codes(tab, c, tq_tcq_block_scale(s8, blk), q + i * TQ_BLOCK, acc);
    }
    return vaddvq_f32(acc);
}

static void dequantize_tq2t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 0, vy, x, nb); }
static void dequantize_tq3t(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 0, vy, x, nb); }
static void dequantize_tq2ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(2, 1, vy, x, nb); }
static void dequantize_tq3ts(const void *vy, float *x, size_t nb) { tcq_dequant_rows(3, 1, vy, x, nb); }
static float dot_tq2t(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 0, q, vy, nb); }
static float dot_tq3t(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 0, q, vy, nb); }
static float dot_tq2ts(const float *q, const void *vy, size_t nb) { return tcq_dot(2, 1, q, vy, nb); }
static float dot_tq3ts(const float *q, const void *vy, size_t nb) { return tcq_dot(3, 1, q, vy, nb); }

/* ---- attention (tq_attn.h) ---- */

static inline float attn_dot(const float *a, const float *b, int n) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    for (int i = 0; i < n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    return vaddvq_f32(vaddq_f32(s0, s1));
}

/* 4 keys at once: one accumulator per key, the 4 sums reduced side by side (two pairwise adds), in
 * place of 4 separate horizontal reductions. Rows past nt read the group's first row again and are
 * not used. */
#define TQ_ATTN_HAVE_DOTS 1
static inline void attn_dots(const float *a, const float *rows, size_t stride, int nt, int n, float *out) {
    for (int j0 = 0; j0 < nt; j0 += 4) {
        float32x4_t s[4];
        const float *r[4];
        for (int j = 0; j < 4; j++) {
            s[j] = vdupq_n_f32(0.0f);
            r[j] = (const float *)((const char *)rows + (size_t)(j0 + j < nt ? j0 + j : j0) * stride);
        }
        for (int i = 0; i < n; i += 4) {
            const float32x4_t q = vld1q_f32(a + i);
            for (int j = 0; j < 4; j++) s[j] = vfmaq_f32(s[j], q, vld1q_f32(r[j] + i));
        }
        vst1q_f32(out + j0, vpaddq_f32(vpaddq_f32(s[0], s[1]), vpaddq_f32(s[2], s[3])));
    }
}

static inline void attn_accum(float *acc, const float *p, const float *rows, int nt, int n) {
    for (int i = 0; i < n; i += 16) {
        float32x4_t a0 = vld1q_f32(acc + i), a1 = vld1q_f32(acc + i + 4);
        float32x4_t a2 = vld1q_f32(acc + i + 8), a3 = vld1q_f32(acc + i + 12);
        for (int j = 0; j < nt; j++) {
            if (p[j] == 0.0f) continue;
            const float32x4_t w = vdupq_n_f32(p[j]);
            const float *x = rows + (size_t)j * n + i;
            a0 = vfmaq_f32(a0, w, vld1q_f32(x));
            a1 = vfmaq_f32(a1, w, vld1q_f32(x + 4));
            a2 = vfmaq_f32(a2, w, vld1q_f32(x + 8));
            a3 = vfmaq_f32(a3, w, vld1q_f32(x + 12));
        }
        vst1q_f32(acc + i, a0);
        vst1q_f32(acc + i + 4, a1);
        vst1q_f32(acc + i + 8, a2);
        vst1q_f32(acc + i + 12, a3);
    }
}

static inline void attn_scale(float *acc, float s, int n) {
    const float32x4_t m = vdupq_n_f32(s);
    for (int i = 0; i < n; i += 4) vst1q_f32(acc + i, vmulq_f32(m, vld1q_f32(acc + i)));
}

#define TQ_ATTN_OWN_DECODERS 1
#define TQ_ATTN_NAME attn_neon
#include "tq_attn.h"

void tq_kernels_neon(tq_kernels *k) {
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
    k->attn = attn_neon;
}

#endif
