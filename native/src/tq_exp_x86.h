/* The attention loop's per-key steps on x86 (attn_exp, attn_mask and attn_scores of tq_attn.h),
 * 8 keys per ymm, shared by the AVX2 and the AVX-512 file (each compiles it with its own flags; a
 * tile's 16 keys are two ymm). Each gives the values the scalar step in tq_attn.h gives. */

/* exp(x) for x <= 0 (x - the row's maximum): Cephes' expf, n = round(x log2 e), the remainder in
 * two parts of ln 2, a degree-6 polynomial, 2^n into the exponent; below -87.3 (where 2^n would
 * leave the normal range) 0, a NaN stays NaN */
static inline __m256 exp_nonpos(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    const __m256 xc = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), _mm256_cmp_ps(x, lo, _CMP_GE_OQ));
    return _mm256_or_ps(y, _mm256_and_ps(x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
}

/* 8 keys at a time (a tile of 16 in two); a partial group padded with masked keys, so that every
 * key's weight comes from the same polynomial wherever the tile ends */
#define TQ_ATTN_HAVE_EXP 1
static inline __m256 exp8(const float *p, __m256 m) {
    const __m256 x = _mm256_loadu_ps(p);
    return _mm256_and_ps(exp_nonpos(_mm256_sub_ps(x, m)), _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_UQ));
}

static inline float attn_exp(float *p, int nt, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 s = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= nt; j += 8) {
        const __m256 e = exp8(p + j, mv);
        _mm256_storeu_ps(p + j, e);
        s = _mm256_add_ps(s, e);
    }
    if (j < nt) {
        float t[8];
        for (int i = 0; i < 8; i++) t[i] = j + i < nt ? p[j + i] : -INFINITY;
        const __m256 e = exp8(t, mv);
        _mm256_storeu_ps(t, e);
        memcpy(p + j, t, sizeof(float) * (size_t)(nt - j));
        s = _mm256_add_ps(s, e);
    }
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* the mask's fp16 values with F16C, 8 at a time (exact, as tq_fp16_to_fp32 is); a tile's last
 * partial group read through a copy, not past the mask's end */
#define TQ_ATTN_HAVE_MASK 1
static inline unsigned attn_mask(const uint16_t *m, float slope, int nt, float *out) {
    const __m256 sv = _mm256_set1_ps(slope), ninf = _mm256_set1_ps(-INFINITY);
    unsigned live = 0;
    for (int j = 0; j < nt; j += 8) {
        __m128i h;
        if (j + 8 <= nt) {
            h = _mm_loadu_si128((const __m128i *)(m + j));
        } else {
            uint16_t t[8] = {0};
            memcpy(t, m + j, sizeof(uint16_t) * (size_t)(nt - j));
            h = _mm_loadu_si128((const __m128i *)t);
        }
        const __m256 x = _mm256_mul_ps(sv, _mm256_cvtph_ps(h));
        float t[8];
        _mm256_storeu_ps(j + 8 <= nt ? out + j : t, x);
        if (j + 8 > nt) memcpy(out + j, t, sizeof(float) * (size_t)(nt - j));
        live |= (unsigned)(~_mm256_movemask_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ)) & 0xff) << j;
    }
    return live & ((1u << nt) - 1u);
}

/* a row's scores, 8 keys at a time: the scalar step's operations in its order (no FMA), the
 * maximum over the lanes with vmaxps, which keeps the running maximum where a score is NaN */
#define TQ_ATTN_HAVE_SCORES 1
static inline float attn_scores(const float *sk, const float *sb, const float *mv, int nt, float scale, float *p) {
    const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 mt = ninf;
    int j = 0;
    for (; j + 8 <= nt; j += 8) {
        __m256 s = _mm256_loadu_ps(sk + j);
        if (sb) s = _mm256_add_ps(s, _mm256_loadu_ps(sb + j));
        const __m256 m = _mm256_loadu_ps(mv + j);
        s = _mm256_add_ps(_mm256_mul_ps(s, sc), m);
        s = _mm256_blendv_ps(s, ninf, _mm256_cmp_ps(m, ninf, _CMP_EQ_OQ));
        _mm256_storeu_ps(p + j, s);
        mt = _mm256_max_ps(s, mt);
    }
    const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mt), _mm256_extractf128_ps(mt, 1));
    const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float best = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    for (; j < nt; j++) {
        const float s = (sb ? sk[j] + sb[j] : sk[j]) * scale + mv[j];
        p[j] = mv[j] == -INFINITY ? -INFINITY : s;
        if (p[j] > best) best = p[j];
    }
    return best;
}
