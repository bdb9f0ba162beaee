/* tq-math.h: the per-block arithmetic of every TurboQuant format, written once for the C codec
 * (src/tq_portable.c, the specification) and the CUDA kernels (the headers in cuda/), so that a
 * GPU codes a block to the same bytes as the CPU.
 *
 * The canonical order of float operations (src/tq_impl.h) is spelled out with TQ_ADD / TQ_SUB /
 * TQ_MUL / TQ_DIV / TQ_SQRT. In C they are the plain operators, and the library is built with
 * -ffp-contract=off; under CUDA they are the IEEE round-to-nearest intrinsics, which nvcc never
 * contracts into an FMA and which -use_fast_math (ggml-cuda's flag) does not approximate. One
 * difference remains on CUDA: -use_fast_math flushes float denormals (|x| < 1.2e-38) to zero,
 * so blocks whose values are that small may code differently.
 *
 * Functions are TQ_HOST_DEVICE: `static inline` for C, `static __device__ __forceinline__` for
 * CUDA (ggml-cuda has no relocatable device code, so device functions live in headers).
 * Codebooks are the tables of tq-codebooks.h; under CUDA they become `static const __device__`.
 */
#ifndef TQ_MATH_H
#define TQ_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tq-blocks.h"

#if defined(__CUDACC__)
#define TQ_HOST_DEVICE static __device__ __forceinline__
#define TQ_UNROLL _Pragma("unroll")
#define TQ_ADD(a, b) __fadd_rn((a), (b))
#define TQ_SUB(a, b) __fsub_rn((a), (b))
#define TQ_MUL(a, b) __fmul_rn((a), (b))
#define TQ_DIV(a, b) __fdiv_rn((a), (b))
#define TQ_SQRT(a) __fsqrt_rn(a)
#ifndef TQ_TABLE
#define TQ_TABLE(type, name, n) static const __device__ type name[n]
#endif
#else
#define TQ_HOST_DEVICE static inline
#define TQ_UNROLL
#define TQ_ADD(a, b) ((a) + (b))
#define TQ_SUB(a, b) ((a) - (b))
#define TQ_MUL(a, b) ((a) * (b))
#define TQ_DIV(a, b) ((a) / (b))
#define TQ_SQRT(a) sqrtf(a)
#endif

#include "tq-codebooks.h"

#define TQ_FP16_MAX 65504.0f
#define TQ_HALF_NAN 0x7e00u

/* ---- the QJL sign pattern -------------------------------------------------------------------
 * The seed is a fixed constant, independent of any rotation seed. D1 and D2 (64 signs each) are
 * the first two outputs of splitmix64 from it (tq_signs(TQ_QJL_SEED, ., 128) gives the same bits):
 * bit j of D1 set = coordinate j flips. Written as constant expressions so that C and CUDA fold
 * them at compile time instead of sharing a generated table. */
#define TQ_QJL_SEED 0x9e3779b97f4a7c15ull
#define TQ_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull
#define TQ_SM64_1(z) (((z) ^ ((z) >> 30)) * 0xbf58476d1ce4e5b9ull)
#define TQ_SM64_2(z) (((z) ^ ((z) >> 27)) * 0x94d049bb133111ebull)
#define TQ_SM64_3(z) ((z) ^ ((z) >> 31))
#define TQ_SPLITMIX64_MIX(z) TQ_SM64_3(TQ_SM64_2(TQ_SM64_1(z)))
#define TQ_QJL_D1 ((uint64_t)TQ_SPLITMIX64_MIX((uint64_t)(TQ_QJL_SEED + 1 * TQ_SPLITMIX64_GAMMA)))
#define TQ_QJL_D2 ((uint64_t)TQ_SPLITMIX64_MIX((uint64_t)(TQ_QJL_SEED + 2 * TQ_SPLITMIX64_GAMMA)))
/* sqrt(pi/2) / 64 * sqrt(64): the QJL decoder's factor per unit of gamma (see tq_qjl_add) */
#define TQ_QJL_SCALE (1.2533141373155001f / 8.0f)

/* ---- fp16 <-> fp32, round to nearest even, the same bits as F16C / NEON ---- */

TQ_HOST_DEVICE float tq_fp16_to_fp32(tq_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal half: man * 2^-24, exact in float */
        float f = TQ_MUL((float)man, 1.0f / 16777216.0f);
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

TQ_HOST_DEVICE tq_half tq_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (tq_half)(sign | (ax > 0x7f800000u ? TQ_HALF_NAN : 0x7c00u));
    if (ax >= 0x477ff000u) return (tq_half)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
    if (ax < 0x38800000u) {                                   /* below 2^-14: half subnormal */
        if (ax < 0x33000000u) return (tq_half)sign;           /* below 2^-25: zero */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t h = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (tq_half)(sign | h);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (tq_half)(sign | h);
}

/* ---- the canonical sums ---- */

TQ_HOST_DEVICE float tq_fold16(float acc[16]) {
    TQ_UNROLL
    for (int h = 8; h >= 1; h >>= 1) {
        TQ_UNROLL
        for (int i = 0; i < h; i++) acc[i] = TQ_ADD(acc[i], acc[i + h]);
    }
    return acc[0];
}

/* Sum of squares of one block in the canonical order: 16 lanes, lane l adding l, l+16, l+32, l+48. */
TQ_HOST_DEVICE float tq_block_sumsq(const float *x) {
    float acc[16];
    TQ_UNROLL
    for (int l = 0; l < 16; l++) acc[l] = TQ_MUL(x[l], x[l]);
    TQ_UNROLL
    for (int r = 1; r < 4; r++) {
        TQ_UNROLL
        for (int l = 0; l < 16; l++) acc[l] = TQ_ADD(acc[l], TQ_MUL(x[l + 16 * r], x[l + 16 * r]));
    }
    return tq_fold16(acc);
}

TQ_HOST_DEVICE const float *tq_codebook_for(int bits) {
    switch (bits) {
    case 1: return TQ_CODEBOOK_1;
    case 2: return TQ_CODEBOOK_2;
    case 3: return TQ_CODEBOOK_3;
    default: return TQ_CODEBOOK_4;
    }
}

TQ_HOST_DEVICE const float *tq_bounds_for(int bits) {
    switch (bits) {
    case 1: return TQ_BOUNDS_1;
    case 2: return TQ_BOUNDS_2;
    case 3: return TQ_BOUNDS_3;
    default: return TQ_BOUNDS_4;
    }
}

/* Scale decisions shared by every ISA, given the block's canonical sum of squares:
 * returns 0 for a zero block, 1 for a normal one (*rms, *inv = 1/rms), and 2 for a block past
 * the fp16 range (codes against 65504, no refit). */
TQ_HOST_DEVICE int tq_first_scale(float sumsq, float *inv, float *rms) {
    if (sumsq == 0.0f) return 0;
    float r = TQ_SQRT(TQ_MUL(sumsq, 1.0f / TQ_BLOCK));
    if (r > TQ_FP16_MAX) { /* also catches sumsq overflowing to +inf */
        *rms = TQ_FP16_MAX;
        *inv = 1.0f / TQ_FP16_MAX;
        return 2;
    }
    *rms = r;
    *inv = TQ_DIV(1.0f, r);
    return 1;
}

/* Least-squares scale for fixed codes: d = <x, c> / <c, c>; falls back to `fallback` if the
 * products underflow. */
TQ_HOST_DEVICE float tq_lsq_scale(float xc, float cc, float fallback) {
    float d = TQ_DIV(xc, cc);
    return d > 0.0f && d < INFINITY ? d : fallback;
}

/* Scale for fixed codes that keeps each block's inner product with itself: d = <x, x> / <x, c>,
 * so <x, d c> = <x, x> and the decoded vector's component along x is x itself. The least-squares
 * d shrinks that component by the block's relative error (3.4 % at 3 bits), the same way for
 * every key, which softmax reads as a lower temperature on the keys' offsets from the cache's
 * mean: a key that stands out (a pass key) loses weight to the many that do not. This costs
 * d/(1 - d) instead of d of squared error (tq3 0.0315 -> 0.0326 on Gaussian data). Falls back to
 * `fallback` if the products underflow. */
TQ_HOST_DEVICE float tq_unbiased_scale(float sumsq, float xc, float fallback) {
    float d = TQ_DIV(sumsq, xc);
    return d > 0.0f && d < INFINITY ? d : fallback;
}

/* How tq_quantize_codes sets a block's scale. */
enum { TQ_SCALE_RMS = 0, TQ_SCALE_LSQ = 1, TQ_SCALE_UNBIASED = 2 };

TQ_HOST_DEVICE tq_half tq_store_scale(float d) {
    return tq_fp32_to_fp16(d > TQ_FP16_MAX ? TQ_FP16_MAX : d);
}

/* ---- code planes (layouts in tq-blocks.h) ---- */

TQ_HOST_DEVICE void tq_pack2(const uint8_t c[TQ_BLOCK], uint8_t qs[16]) {
    TQ_UNROLL
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((c[j] & 3) | (c[j + 16] & 3) << 2 | (c[j + 32] & 3) << 4 | (c[j + 48] & 3) << 6);
}

TQ_HOST_DEVICE void tq_pack1(const uint8_t c[TQ_BLOCK], int bit, uint8_t q[8]) {
    TQ_UNROLL
    for (int j = 0; j < 8; j++) {
        unsigned v = 0;
        TQ_UNROLL
        for (int g = 0; g < 8; g++) v |= (unsigned)((c[j + 8 * g] >> bit) & 1) << g;
        q[j] = (uint8_t)v;
    }
}

TQ_HOST_DEVICE void tq_pack4(const uint8_t c[TQ_BLOCK], uint8_t qs[32]) {
    TQ_UNROLL
    for (int j = 0; j < 32; j++) qs[j] = (uint8_t)((c[j] & 15) | (c[j + 32] & 15) << 4);
}

TQ_HOST_DEVICE void tq_unpack2(const uint8_t qs[16], uint8_t c[TQ_BLOCK]) {
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) c[j] = (qs[j & 15] >> (2 * (j >> 4))) & 3;
}

TQ_HOST_DEVICE void tq_unpack1_or(const uint8_t q[8], int bit, uint8_t c[TQ_BLOCK]) {
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) c[j] |= (uint8_t)(((q[j & 7] >> (j >> 3)) & 1) << bit);
}

TQ_HOST_DEVICE void tq_unpack4(const uint8_t qs[32], uint8_t c[TQ_BLOCK]) {
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) c[j] = (qs[j & 31] >> (4 * (j >> 5))) & 15;
}

/* ---- the MSE code of one block ---- */

/* code of each value: the number of decision boundaries strictly below x * inv */
TQ_HOST_DEVICE void tq_assign_codes(int bits, const float *x, float inv, uint8_t c[TQ_BLOCK]) {
    const float *bnd = tq_bounds_for(bits);
    const int nb = (1 << bits) - 1;
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) {
        float v = TQ_MUL(x[j], inv);
        int k = 0;
        for (int i = 0; i < nb; i++) k += v > bnd[i];
        c[j] = (uint8_t)k;
    }
}

/* <x, c> and <c, c> of a block and its codes (as codebook values), each a fold of 16 lanes */
TQ_HOST_DEVICE void tq_refit_sums(int bits, const float *x, const uint8_t c[TQ_BLOCK], float *xcs, float *ccs) {
    const float *cb = tq_codebook_for(bits);
    float xc[16], cc[16];
    TQ_UNROLL
    for (int l = 0; l < 16; l++) {
        float v = cb[c[l]];
        xc[l] = TQ_MUL(x[l], v);
        cc[l] = TQ_MUL(v, v);
    }
    TQ_UNROLL
    for (int r = 1; r < 4; r++) {
        TQ_UNROLL
        for (int l = 0; l < 16; l++) {
            float v = cb[c[l + 16 * r]];
            xc[l] = TQ_ADD(xc[l], TQ_MUL(x[l + 16 * r], v));
            cc[l] = TQ_ADD(cc[l], TQ_MUL(v, v));
        }
    }
    *xcs = tq_fold16(xc);
    *ccs = tq_fold16(cc);
}

/* Codes and fp16 scale of one block. TQ_SCALE_RMS stores the RMS (the paper's norm scaling);
 * TQ_SCALE_LSQ picks codes at the RMS, refits the scale by least squares, picks codes again at
 * that scale and refits once more (each step can only lower the block's squared error);
 * TQ_SCALE_UNBIASED picks the same codes and stores tq_unbiased_scale for them. */
TQ_HOST_DEVICE tq_half tq_quantize_codes(int bits, const float *x, uint8_t c[TQ_BLOCK], int scale) {
    int finite = 1;
    for (int j = 0; j < TQ_BLOCK; j++) finite &= isfinite(x[j]) != 0;
    if (!finite) {
        memset(c, 0, TQ_BLOCK);
        return TQ_HALF_NAN;
    }
    float inv, rms;
    const float sumsq = tq_block_sumsq(x);
    int kind = tq_first_scale(sumsq, &inv, &rms);
    if (kind == 0) {
        memset(c, 0, TQ_BLOCK);
        return 0;
    }
    tq_assign_codes(bits, x, inv, c);
    if (kind == 2) return tq_store_scale(TQ_FP16_MAX);
    if (scale == TQ_SCALE_RMS) return tq_store_scale(rms);
    float xc, cc;
    tq_refit_sums(bits, x, c, &xc, &cc);
    float d1 = tq_lsq_scale(xc, cc, rms);
    tq_assign_codes(bits, x, TQ_DIV(1.0f, d1), c);
    tq_refit_sums(bits, x, c, &xc, &cc);
    float d2 = tq_lsq_scale(xc, cc, d1);
    return tq_store_scale(scale == TQ_SCALE_UNBIASED ? tq_unbiased_scale(sumsq, xc, d2) : d2);
}

/* value j = d * codebook[code j] */
TQ_HOST_DEVICE void tq_dequant_codes(int bits, const uint8_t c[TQ_BLOCK], tq_half dh, float *x) {
    const float *cb = tq_codebook_for(bits);
    const float d = tq_fp16_to_fp32(dh);
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) x[j] = TQ_MUL(d, cb[c[j]]);
}

/* ---- trellis-coded quantization (the tq2t and tq3t codes) ----
 * TCQ (Marcellin & Fischer, 1990) over the block's 64 values at b bits per value. The alphabet is
 * the Lloyd-Max codebook of b+1 bits, A[0..2^(b+1)-1], split into four subsets D_k = {A[k], A[k+4],
 * A[k+8], ...} of 2^(b-1) levels. One branch bit u_j per value drives an 8-state trellis that allows
 * value j only the subset
 *   k_j = 2 * (u_j ^ u_{j-1} ^ u_{j-2} ^ u_{j-3}) + u_{j-1}        (u before the block = 0),
 * and b-1 level bits pick the level in it: value j = d * A[4 * level_j + k_j]. The encoder finds the
 * branch bits of the whole block that minimise its squared error (Viterbi, 8 states x 2 branches
 * per value); the decoder runs no state machine, as k_j is a window of the branch word. Same bits
 * as the Lloyd-Max code of b bits; on Gaussian blocks 28 % less squared error (native/README.md). */
#define TQ_TCQ_STATES 8
/* The first Viterbi pass codes at 0.875 * RMS: the alphabet (the (b+1)-bit codebook) spreads wider
 * than the b-bit one, so the least-squares scale the passes settle at lies below the RMS; starting
 * there gave the least error of 0.8 .. 1.0 x RMS on Gaussian blocks (tq3t: 0.0236 from 0.85-0.9,
 * 0.0249 from 1.0). */
#define TQ_TCQ_FIRST 0.875f
#define TQ_TCQ_FAR 1e30f /* the cost of a state the trellis cannot be in yet (finite: fast-math) */

TQ_HOST_DEVICE uint64_t tq_load_word(const uint8_t b[8]) {
    uint64_t w = 0;
    TQ_UNROLL
    for (int i = 0; i < 8; i++) w |= (uint64_t)b[i] << (8 * i);
    return w;
}

TQ_HOST_DEVICE void tq_store_word(uint64_t w, uint8_t b[8]) {
    TQ_UNROLL
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(w >> (8 * i));
}

/* The subsets of all 64 values from the branch word u (bit j = u_j): bit j of *z1 / *z0 is bit 1 / bit 0
 * of k_j, i.e. z1 = u_j ^ u_{j-1} ^ u_{j-2} ^ u_{j-3} and z0 = u_{j-1}. */
TQ_HOST_DEVICE void tq_tcq_subset_words(uint64_t u, uint64_t *z1, uint64_t *z0) {
    *z1 = u ^ (u << 1) ^ (u << 2) ^ (u << 3);
    *z0 = u << 1;
}

/* subset k of the branch window w (bit t of w = u_{j-t}) */
TQ_HOST_DEVICE int tq_tcq_subset(unsigned w) {
    return (int)((((w ^ (w >> 1) ^ (w >> 2) ^ (w >> 3)) & 1u) << 1) | ((w >> 1) & 1u));
}

/* Nearest level of subset k to v: the first of the strictly smaller errors (ties to the lower level) */
TQ_HOST_DEVICE int tq_tcq_level(const float *A, int nl, float v, int k, float *err) {
    float best = TQ_TCQ_FAR;
    int bl = 0;
    for (int l = 0; l < nl; l++) { /* selects, not branches: which level wins is data, not pattern */
        float e = TQ_SUB(v, A[4 * l + k]);
        e = TQ_MUL(e, e);
        const int lt = e < best;
        bl = lt ? l : bl;
        best = lt ? e : best;
    }
    *err = best;
    return bl;
}

/* The Viterbi forward pass over x * inv: back[j] bit s set = state s was reached at value j from
 * state (s >> 1) + 4 (else from s >> 1); lev[j] bits 2k, 2k+1 = the nearest level of subset k to
 * value j; returns the end state of least cost (ties to the lower). A SIMD file may bring its own
 * (tq_tcq_forward_fn): it must reproduce these sums and ties exactly. */
typedef int (*tq_tcq_forward_fn)(int bits, const float *x, float inv, uint8_t back[TQ_BLOCK], uint8_t lev[TQ_BLOCK]);

/* The end state of least cost (ties to the lower), the path's last state */
TQ_HOST_DEVICE int tq_tcq_end_state(const float cost[TQ_TCQ_STATES]) {
    int s = 0;
    for (int t = 1; t < TQ_TCQ_STATES; t++)
        if (cost[t] < cost[s]) s = t;
    return s;
}

TQ_HOST_DEVICE int tq_tcq_forward(int bits, const float *x, float inv, uint8_t back[TQ_BLOCK], uint8_t lev[TQ_BLOCK]) {
    const float *A = tq_codebook_for(bits + 1);
    const int nl = 1 << (bits - 1);
    float cost[TQ_TCQ_STATES];
    TQ_UNROLL
    for (int s = 0; s < TQ_TCQ_STATES; s++) cost[s] = s == 0 ? 0.0f : TQ_TCQ_FAR;
    for (int j = 0; j < TQ_BLOCK; j++) {
        const float v = TQ_MUL(x[j], inv);
        float dist[4];
        unsigned levels = 0;
        TQ_UNROLL
        for (int k = 0; k < 4; k++) levels |= (unsigned)tq_tcq_level(A, nl, v, k, &dist[k]) << (2 * k);
        lev[j] = (uint8_t)levels;
        float next[TQ_TCQ_STATES];
        unsigned from_high = 0;
        TQ_UNROLL
        for (int s = 0; s < TQ_TCQ_STATES; s++) {
            const float c0 = TQ_ADD(cost[s >> 1], dist[tq_tcq_subset((unsigned)s)]);
            const float c1 = TQ_ADD(cost[(s >> 1) + 4], dist[tq_tcq_subset((unsigned)s + 8)]);
            next[s] = c1 < c0 ? c1 : c0;
            from_high |= (unsigned)(c1 < c0) << s;
        }
        TQ_UNROLL
        for (int s = 0; s < TQ_TCQ_STATES; s++) cost[s] = next[s];
        back[j] = (uint8_t)from_high;
    }
    return tq_tcq_end_state(cost);
}

/* The best path for x * inv: idx[j] = 4 * level_j + k_j (an index into A); returns the branch
 * word (bit j = u_j). */
TQ_HOST_DEVICE uint64_t tq_tcq_path(int bits, const float *x, float inv, uint8_t idx[TQ_BLOCK], tq_tcq_forward_fn fwd) {
    uint8_t back[TQ_BLOCK], lev[TQ_BLOCK];
    int s = fwd(bits, x, inv, back, lev);
    uint64_t u = 0;
    for (int j = TQ_BLOCK - 1; j >= 0; j--) {
        const unsigned w = (unsigned)s | (((unsigned)back[j] >> s & 1u) << 3);
        const int k = tq_tcq_subset(w);
        idx[j] = (uint8_t)(4 * ((lev[j] >> (2 * k)) & 3) + k);
        u |= (uint64_t)(w & 1u) << j;
        s = (int)(w >> 1);
    }
    return u;
}

/* Codes (idx, *u) and fp16 scale of one block, as tq_quantize_codes does for the Lloyd-Max code:
 * TQ_SCALE_RMS stores the first pass's scale (0.875 * RMS); otherwise the scale is refitted by
 * least squares, the path found again at it, refitted once more, and stored as `scale` asks. */
TQ_HOST_DEVICE tq_half tq_tcq_quantize_with(int bits, const float *x, uint8_t idx[TQ_BLOCK], uint64_t *u, int scale,
                                            tq_tcq_forward_fn fwd) {
    int finite = 1;
    for (int j = 0; j < TQ_BLOCK; j++) finite &= isfinite(x[j]) != 0;
    *u = 0;
    if (!finite) {
        memset(idx, 0, TQ_BLOCK);
        return TQ_HALF_NAN;
    }
    float inv, rms;
    const float sumsq = tq_block_sumsq(x);
    const int kind = tq_first_scale(sumsq, &inv, &rms);
    if (kind == 0) {
        memset(idx, 0, TQ_BLOCK);
        return 0;
    }
    if (kind == 2) {
        *u = tq_tcq_path(bits, x, inv, idx, fwd);
        return tq_store_scale(TQ_FP16_MAX);
    }
    const float d0 = TQ_MUL(rms, TQ_TCQ_FIRST);
    *u = tq_tcq_path(bits, x, TQ_DIV(1.0f, d0), idx, fwd);
    if (scale == TQ_SCALE_RMS) return tq_store_scale(d0);
    float xc, cc;
    tq_refit_sums(bits + 1, x, idx, &xc, &cc);
    const float d1 = tq_lsq_scale(xc, cc, d0);
    *u = tq_tcq_path(bits, x, TQ_DIV(1.0f, d1), idx, fwd);
    tq_refit_sums(bits + 1, x, idx, &xc, &cc);
    const float d2 = tq_lsq_scale(xc, cc, d1);
    return tq_store_scale(scale == TQ_SCALE_UNBIASED ? tq_unbiased_scale(sumsq, xc, d2) : d2);
}

/* The code bytes of a trellis block (tq-blocks.h), from its first byte after the scale: tq2t/tq2ts
 * (bits 2) the branch word, then the level word; tq3t/tq3ts the level plane, then the branch word */
TQ_HOST_DEVICE void tq_tcq_store_codes(int bits, uint8_t idx[TQ_BLOCK], uint64_t u, uint8_t *q) {
    if (bits == 2) {
        uint64_t l = 0;
        TQ_UNROLL
        for (int j = 0; j < TQ_BLOCK; j++) l |= (uint64_t)(idx[j] >> 2) << j;
        tq_store_word(u, q);
        tq_store_word(l, q + 8);
    } else {
        TQ_UNROLL
        for (int j = 0; j < TQ_BLOCK; j++) idx[j] >>= 2;
        tq_pack2(idx, q);
        tq_store_word(u, q + 16);
    }
}

/* The block's bytes from its codes: tq2t (bits 2) or tq3t (bits 3) */
TQ_HOST_DEVICE void tq_tcq_store(int bits, tq_half d, uint8_t idx[TQ_BLOCK], uint64_t u, void *y) {
    memcpy(y, &d, sizeof d);
    tq_tcq_store_codes(bits, idx, u, (uint8_t *)y + sizeof d);
}

/* ---- the 8-bit scale of tq2ts/tq3ts: code e = 1..254 stands for d = 2^((e - TQ_S8_BIAS) / 16),
 * from 2^-8.94 (0.0021) to 2^6.88 (117) in steps of 4.4 %, which covers the block scales of the
 * models measured here (native/README.md); e = 0 is an all-zero block, e = 255 a non-finite one. A
 * scale above the range is clamped to its top (the block's values shrink to fit); one below half
 * its bottom becomes a zero block. ---- */
#define TQ_S8_BIAS 144
#define TQ_S8_NAN 255

/* 2^(k/16) rounded to float (tests/test_native_tcq.py checks them) */
TQ_HOST_DEVICE float tq_s8_mantissa(int k) {
    const float m[16] = {0x1p+0f,          0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f,
                         0x1.306fe0p+0f,   0x1.3dea64p+0f, 0x1.4bfdaep+0f, 0x1.5ab07ep+0f,
                         0x1.6a09e6p+0f,   0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
                         0x1.ae89fap+0f,   0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};
    return m[k];
}

/* exact: a mantissa times a power of two */
TQ_HOST_DEVICE float tq_scale8_to_float(uint8_t e) {
    if (e == 0) return 0.0f;
    if (e == TQ_S8_NAN) return NAN;
    const int t = (int)e - TQ_S8_BIAS; /* t = 16 * (t >> 4) + (t & 15): >> floors */
    const uint32_t p2 = (uint32_t)(127 + (t >> 4)) << 23; /* 2^(t >> 4), a normal float for every e */
    float f;
    memcpy(&f, &p2, sizeof f);
    return TQ_MUL(tq_s8_mantissa(t & 15), f);
}

/* The code whose scale is nearest to d in ratio: the e with v(e) <= d < v(e + 1), or e + 1 where
 * d^2 >= v(e) v(e + 1) (products of floats, exact in double, so every ISA and the tests' numpy
 * reference round alike). */
TQ_HOST_DEVICE uint8_t tq_scale8_from_float(float d) {
    if (d != d) return TQ_S8_NAN;
    if (!(d > 0.0f)) return 0;
    const float top = tq_scale8_to_float(TQ_S8_NAN - 1);
    if (d >= top) return TQ_S8_NAN - 1;
    int x;
    const float f = 2.0f * frexpf(d, &x); /* d = f * 2^(x - 1), f in [1, 2) */
    int k = 0;
    while (k < 15 && tq_s8_mantissa(k + 1) <= f) k++;
    int e = 16 * (x - 1) + k + TQ_S8_BIAS;
    const double lo = (double)ldexpf(tq_s8_mantissa(k), x - 1);
    const double hi = k == 15 ? ldexp(1.0, x) : (double)ldexpf(tq_s8_mantissa(k + 1), x - 1);
    if ((double)d * (double)d >= lo * hi) e++;
    if (e >= 1) return (uint8_t)e;
    return d >= 0.5f * tq_scale8_to_float(1) ? 1 : 0;
}

/* tq2ts/tq3ts: tq_tcq_quantize_with's codes, its scale rounded to the 8-bit code. The codes are not
 * searched again at the rounded scale: that lowers the squared error (a search at a fixed scale is
 * a least-squares fit) but shrinks every block towards zero again, the bias that the unbiased scale
 * removes (native/README.md, Scale); rounding in the log domain leaves the scale unbiased to within
 * half a step either way. */
TQ_HOST_DEVICE uint8_t tq_tcq_quantize_s8(int bits, const float *x, uint8_t idx[TQ_BLOCK], uint64_t *u, int scale,
                                          tq_tcq_forward_fn fwd) {
    const uint8_t e = tq_scale8_from_float(tq_fp16_to_fp32(tq_tcq_quantize_with(bits, x, idx, u, scale, fwd)));
    if (e == 0 || e == TQ_S8_NAN) {
        memset(idx, 0, TQ_BLOCK);
        *u = 0;
    }
    return e;
}

/* A trellis block is its scale, fp16 (tq2t, tq3t; s8 0) or the 8-bit code (tq2ts, tq3ts; s8 1), then
 * its code bytes (tq_tcq_store_codes): the offset of the codes, the block's bytes and its scale */
TQ_HOST_DEVICE size_t tq_tcq_scale_bytes(int s8) { return s8 ? 1 : sizeof(tq_half); }
TQ_HOST_DEVICE size_t tq_tcq_block_bytes(int bits, int s8) { return tq_tcq_scale_bytes(s8) + (bits == 3 ? 24 : 16); }
TQ_HOST_DEVICE float tq_tcq_block_scale(int s8, const uint8_t *blk) {
    return s8 ? tq_scale8_to_float(blk[0]) : tq_fp16_to_fp32(*(const tq_half *)blk);
}

/* The block's bytes: tq2ts (bits 2) or tq3ts (bits 3) */
TQ_HOST_DEVICE void tq_tcq_store_s8(int bits, uint8_t e, uint8_t idx[TQ_BLOCK], uint64_t u, void *y) {
    *(uint8_t *)y = e;
    tq_tcq_store_codes(bits, idx, u, (uint8_t *)y + 1);
}

/* value j = d * A[4 * level_j + k_j], k_j from the branch word */
TQ_HOST_DEVICE void tq_tcq_dequant(int bits, uint64_t u, const uint8_t level[TQ_BLOCK], float d, float *x) {
    const float *A = tq_codebook_for(bits + 1);
    uint64_t z1, z0;
    tq_tcq_subset_words(u, &z1, &z0);
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) {
        const int k = (int)(((z1 >> j) & 1u) << 1 | ((z0 >> j) & 1u));
        x[j] = TQ_MUL(d, A[4 * level[j] + k]);
    }
}

/* ---- QJL: S = sqrt(64) * H * D2 * H * D1 (H the orthonormal 64-point Hadamard) ---- */

/* orthonormal 64-point Walsh-Hadamard transform, butterflies in the order of tq_fwht_portable */
TQ_HOST_DEVICE void tq_fwht64(float x[TQ_BLOCK]) {
    TQ_UNROLL
    for (int h = 1; h < TQ_BLOCK; h <<= 1) {
        TQ_UNROLL
        for (int i = 0; i < TQ_BLOCK; i += 2 * h) {
            TQ_UNROLL
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = TQ_ADD(a, b);
                x[j + h] = TQ_SUB(a, b);
            }
        }
    }
    TQ_UNROLL
    for (int i = 0; i < TQ_BLOCK; i++) x[i] = TQ_MUL(x[i], 0.125f); /* 1/sqrt(64), exact */
}

TQ_HOST_DEVICE void tq_flip64(float v[TQ_BLOCK], uint64_t signs) {
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) v[j] = ((signs >> j) & 1) ? -v[j] : v[j];
}

/* S^T z / sqrt(64) = D1 * H * D2 * H * z for the sign vector z of qj (bit set = +1).
 * Every intermediate is a multiple of 1/64 below 2^7 in magnitude, so the result is exact
 * whatever the order of the sums. */
TQ_HOST_DEVICE void tq_qjl_direction(const uint8_t qj[8], float z[TQ_BLOCK]) {
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) z[j] = ((qj[j & 7] >> (j >> 3)) & 1) ? 1.0f : -1.0f;
    tq_fwht64(z);
    tq_flip64(z, TQ_QJL_D2);
    tq_fwht64(z);
    tq_flip64(z, TQ_QJL_D1);
}

/* x_hat += gamma * sqrt(pi/2) / 64 * S^T z: the QJL estimator folded into the vector, so <q, x_hat>
 * is the paper's inner-product estimate. */
TQ_HOST_DEVICE void tq_qjl_add(float gamma, const uint8_t qj[8], float *out) {
    float z[TQ_BLOCK];
    tq_qjl_direction(qj, z);
    const float a = TQ_MUL(gamma, TQ_QJL_SCALE);
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) out[j] = TQ_ADD(out[j], TQ_MUL(a, z[j]));
}

/* Residual norm and the signs of S * r (bit set = positive; a zero component counts as negative,
 * so an all-zero block stays all-zero bytes). */
TQ_HOST_DEVICE void tq_qjl_encode(const float *x, const float *xm, tq_half *gamma, uint8_t qj[8]) {
    float r[TQ_BLOCK];
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) r[j] = TQ_SUB(x[j], xm[j]);
    *gamma = tq_store_scale(TQ_SQRT(tq_block_sumsq(r)));
    tq_flip64(r, TQ_QJL_D1);
    tq_fwht64(r);
    tq_flip64(r, TQ_QJL_D2);
    tq_fwht64(r);
    uint8_t s[TQ_BLOCK];
    TQ_UNROLL
    for (int j = 0; j < TQ_BLOCK; j++) s[j] = r[j] > 0.0f;
    tq_pack1(s, 0, qj);
}

/* ---- one block of each type ----
 * rms_scale: store the block RMS (the paper's norm scaling, for comparison) instead of the type's
 * own scale (unbiased for the MSE types, least squares for the QJL types). */

TQ_HOST_DEVICE void tq_quantize_block_tq2(const float *x, block_tq2 *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    y->d = tq_quantize_codes(2, x, c, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED);
    tq_pack2(c, y->qs);
}

TQ_HOST_DEVICE void tq_quantize_block_tq3(const float *x, block_tq3 *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    y->d = tq_quantize_codes(3, x, c, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED);
    tq_pack2(c, y->qs);
    tq_pack1(c, 2, y->qh);
}

TQ_HOST_DEVICE void tq_quantize_block_tq4(const float *x, block_tq4 *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    y->d = tq_quantize_codes(4, x, c, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED);
    tq_pack4(c, y->qs);
}

/* The QJL types keep the least-squares scale for their MSE stage: the residual's signs carry
 * what that stage misses, and their inner product is unbiased as a whole. */
TQ_HOST_DEVICE void tq_quantize_block_tq3j(const float *x, block_tq3j *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    float xm[TQ_BLOCK];
    tq_half d = tq_quantize_codes(2, x, c, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_LSQ);
    y->d = d;
    tq_pack2(c, y->qs);
    tq_dequant_codes(2, c, d, xm);
    tq_qjl_encode(x, xm, &y->gamma, y->qj);
}

TQ_HOST_DEVICE void tq_quantize_block_tq4j(const float *x, block_tq4j *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    float xm[TQ_BLOCK];
    tq_half d = tq_quantize_codes(3, x, c, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_LSQ);
    y->d = d;
    tq_pack2(c, y->qs);
    tq_pack1(c, 2, y->qh);
    tq_dequant_codes(3, c, d, xm);
    tq_qjl_encode(x, xm, &y->gamma, y->qj);
}

TQ_HOST_DEVICE void tq_quantize_block_tq2t(const float *x, block_tq2t *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    uint64_t u;
    const tq_half d = tq_tcq_quantize_with(2, x, c, &u, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED, tq_tcq_forward);
    tq_tcq_store(2, d, c, u, y);
}

TQ_HOST_DEVICE void tq_quantize_block_tq3t(const float *x, block_tq3t *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    uint64_t u;
    const tq_half d = tq_tcq_quantize_with(3, x, c, &u, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED, tq_tcq_forward);
    tq_tcq_store(3, d, c, u, y);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq2(const block_tq2 *y, float *x) {
    uint8_t c[TQ_BLOCK];
    tq_unpack2(y->qs, c);
    tq_dequant_codes(2, c, y->d, x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq3(const block_tq3 *y, float *x) {
    uint8_t c[TQ_BLOCK];
    tq_unpack2(y->qs, c);
    tq_unpack1_or(y->qh, 2, c);
    tq_dequant_codes(3, c, y->d, x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq4(const block_tq4 *y, float *x) {
    uint8_t c[TQ_BLOCK];
    tq_unpack4(y->qs, c);
    tq_dequant_codes(4, c, y->d, x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq3j(const block_tq3j *y, float *x) {
    uint8_t c[TQ_BLOCK];
    tq_unpack2(y->qs, c);
    tq_dequant_codes(2, c, y->d, x);
    tq_qjl_add(tq_fp16_to_fp32(y->gamma), y->qj, x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq4j(const block_tq4j *y, float *x) {
    uint8_t c[TQ_BLOCK];
    tq_unpack2(y->qs, c);
    tq_unpack1_or(y->qh, 2, c);
    tq_dequant_codes(3, c, y->d, x);
    tq_qjl_add(tq_fp16_to_fp32(y->gamma), y->qj, x);
}

/* the trellis types from their code bytes (tq_tcq_store_codes) and scale */
TQ_HOST_DEVICE void tq_tcq_dequant_codes(int bits, const uint8_t *q, float d, float *x) {
    uint8_t c[TQ_BLOCK];
    if (bits == 2) {
        const uint64_t l = tq_load_word(q + 8);
        TQ_UNROLL
        for (int j = 0; j < TQ_BLOCK; j++) c[j] = (uint8_t)((l >> j) & 1u);
        tq_tcq_dequant(2, tq_load_word(q), c, d, x);
    } else {
        tq_unpack2(q, c);
        tq_tcq_dequant(3, tq_load_word(q + 16), c, d, x);
    }
}

TQ_HOST_DEVICE void tq_dequantize_block_tq2t(const block_tq2t *y, float *x) {
    tq_tcq_dequant_codes(2, y->qu, tq_fp16_to_fp32(y->d), x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq3t(const block_tq3t *y, float *x) {
    tq_tcq_dequant_codes(3, y->qs, tq_fp16_to_fp32(y->d), x);
}

TQ_HOST_DEVICE void tq_quantize_block_tq2ts(const float *x, block_tq2ts *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    uint64_t u;
    const uint8_t e = tq_tcq_quantize_s8(2, x, c, &u, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED, tq_tcq_forward);
    tq_tcq_store_s8(2, e, c, u, y);
}

TQ_HOST_DEVICE void tq_quantize_block_tq3ts(const float *x, block_tq3ts *y, int rms_scale) {
    uint8_t c[TQ_BLOCK];
    uint64_t u;
    const uint8_t e = tq_tcq_quantize_s8(3, x, c, &u, rms_scale ? TQ_SCALE_RMS : TQ_SCALE_UNBIASED, tq_tcq_forward);
    tq_tcq_store_s8(3, e, c, u, y);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq2ts(const block_tq2ts *y, float *x) {
    tq_tcq_dequant_codes(2, y->qu, tq_scale8_to_float(y->e), x);
}

TQ_HOST_DEVICE void tq_dequantize_block_tq3ts(const block_tq3ts *y, float *x) {
    tq_tcq_dequant_codes(3, y->qs, tq_scale8_to_float(y->e), x);
}

#endif
