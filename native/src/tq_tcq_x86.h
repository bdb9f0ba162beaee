/* The trellis-coded types' encoder on x86 (tq_tcq_forward of tq-math.h with the trellis's 8 states
 * in one ymm), shared by the AVX2 and the AVX-512 file (each compiles it with its own flags). It
 * forms the same sums in the same order as the portable pass, so it finds the same path, and the
 * codes stay bit-identical across ISAs. Per value: the 2^(b+1) squared errors, their minimum per
 * subset, then add-compare-select for all states at once. */


static int tcq_forward_x86(int bits, const float *x, float inv, uint8_t back[TQ_BLOCK], uint8_t lev[TQ_BLOCK]) {
    const float *A = tq_codebook_for(bits + 1);
    const __m256 a_lo = _mm256_loadu_ps(A);
    const __m256 a_hi = bits == 3 ? _mm256_loadu_ps(A + 8) : a_lo;
    /* state s is reached from s >> 1 (branch into subset k(s)) or (s >> 1) + 4 (subset k(s + 8)) */
    const __m256i from_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256i from_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i k_lo = _mm256_setr_epi32(tq_tcq_subset(0), tq_tcq_subset(1), tq_tcq_subset(2), tq_tcq_subset(3),
                                           tq_tcq_subset(4), tq_tcq_subset(5), tq_tcq_subset(6), tq_tcq_subset(7));
    const __m256i k_hi = _mm256_setr_epi32(tq_tcq_subset(8), tq_tcq_subset(9), tq_tcq_subset(10), tq_tcq_subset(11),
                                           tq_tcq_subset(12), tq_tcq_subset(13), tq_tcq_subset(14), tq_tcq_subset(15));
    __m256 cost = _mm256_setr_ps(0.0f, TQ_TCQ_FAR, TQ_TCQ_FAR, TQ_TCQ_FAR, TQ_TCQ_FAR, TQ_TCQ_FAR, TQ_TCQ_FAR,
                                 TQ_TCQ_FAR);
    for (int j = 0; j < TQ_BLOCK; j++) {
        const __m256 v = _mm256_set1_ps(x[j] * inv);
        /* lane k < 4 of e01: the error of subset k's level 0 or 1 (the first of the least), lt01
         * set where it is level 1; e23 and lt23 for levels 2 and 3 (tq3t); e the subset's least
         * error, its level 2 + lt23 where lt is set, else lt01: tq_tcq_level's ties */
        __m256 e0 = _mm256_sub_ps(v, a_lo);
        e0 = _mm256_mul_ps(e0, e0);
        __m256 e1 = _mm256_permute2f128_ps(e0, e0, 1);
        const __m256 lt01 = _mm256_cmp_ps(e1, e0, _CMP_LT_OQ);
        __m256 e = _mm256_blendv_ps(e0, e1, lt01);
        unsigned b0 = (unsigned)_mm256_movemask_ps(lt01) & 15u, b1 = 0;
        if (bits == 3) {
            __m256 e2 = _mm256_sub_ps(v, a_hi);
            e2 = _mm256_mul_ps(e2, e2);
            const __m256 e3 = _mm256_permute2f128_ps(e2, e2, 1);
            const __m256 lt23 = _mm256_cmp_ps(e3, e2, _CMP_LT_OQ);
            const __m256 e23 = _mm256_blendv_ps(e2, e3, lt23);
            const __m256 lt = _mm256_cmp_ps(e23, e, _CMP_LT_OQ);
            e = _mm256_blendv_ps(e, e23, lt);
            b1 = (unsigned)_mm256_movemask_ps(lt) & 15u;
            b0 = (b1 & (unsigned)_mm256_movemask_ps(lt23)) | (~b1 & b0 & 15u);
        }
        lev[j] = (uint8_t)(tq_tcq_spread4[b0] | tq_tcq_spread4[b1] << 1);
        const __m256 c0 = _mm256_add_ps(_mm256_permutevar8x32_ps(cost, from_lo), _mm256_permutevar8x32_ps(e, k_lo));
        const __m256 c1 = _mm256_add_ps(_mm256_permutevar8x32_ps(cost, from_hi), _mm256_permutevar8x32_ps(e, k_hi));
        const __m256 lt = _mm256_cmp_ps(c1, c0, _CMP_LT_OQ);
        cost = _mm256_blendv_ps(c0, c1, lt);
        back[j] = (uint8_t)_mm256_movemask_ps(lt);
    }
    float c[TQ_TCQ_STATES];
    _mm256_storeu_ps(c, cost);
    return tq_tcq_end_state(c);
}

static void quantize_tq2t(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(2, 0, x, vy, nb, tcq_forward_x86); }
static void quantize_tq3t(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(3, 0, x, vy, nb, tcq_forward_x86); }
static void quantize_tq2ts(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(2, 1, x, vy, nb, tcq_forward_x86); }
static void quantize_tq3ts(const float *x, void *vy, size_t nb) { tq_tcq_quantize_rows(3, 1, x, vy, nb, tcq_forward_x86); }
