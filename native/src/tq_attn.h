/* The flash-attention loop over tq K/V rows (tq_ggml_attn_f32), written once and instantiated by
 * each ISA file, which defines before including it:
 *   TQ_ATTN_NAME                         the kernel's name
 *   TQ_ATTN_OWN_DECODERS                 (optional) decode tq2/tq3/tq4/tq2t/tq3t/tq2ts/tq3ts rows
 *                                        with the file's own dequantize_*, inlined; else (the
 *                                        portable file, which NEON shares) and for the QJL types,
 *                                        the active table's
 *   attn_dot(a, b, n)                    sum of a[i] * b[i]
 *   attn_dots(a, rows, stride, nt, n, out) (optional, TQ_ATTN_HAVE_DOTS) out[j] = attn_dot(a, row j, n)
 *                                        for the nt <= TQ_ATTN_TILE rows stride bytes apart; out holds
 *                                        TQ_ATTN_TILE floats. An ISA scores a tile's keys together, so
 *                                        that their sums are reduced side by side, not one by one
 *   attn_accum(acc, p, rows, nt, n)      acc[i] += sum_j<nt p[j] * rows[j * n + i], skipping every
 *                                        j with p[j] == 0 (a masked key: its row may not be decoded)
 *   attn_scale(acc, s, n)                acc[i] *= s
 *   attn_exp(p, nt, m)                   (optional, TQ_ATTN_HAVE_EXP) p[j] = exp(p[j] - m) for j < nt,
 *                                        0 for a key at -inf, NaN for a NaN score; returns their sum
 *   attn_mask(m, slope, nt, out)         (optional, TQ_ATTN_HAVE_MASK) out[j] = slope * m[j] (fp16) for
 *                                        j < nt; returns the bits j of the keys not at -inf
 *   attn_scores(sk, sb, mv, nt, scale, p) (optional, TQ_ATTN_HAVE_SCORES) p[j] = (sk[j] (+ sb[j] if
 *                                        sb)) * scale + mv[j], -inf where mv[j] is; returns the
 *                                        largest p[j] that is not NaN (-inf if none)
 * Keys go TQ_ATTN_TILE at a time: the tile's K rows are decoded once and scored by every query
 * row, each row's softmax weights found with one rescale per tile (not one per key), then the
 * tile's V rows decoded once and accumulated into every row. A key that every row masks out
 * (-inf) is not decoded. Per-row work is f32 arithmetic on decoded rows held in L1. */

#define TQ_ATTN_TILE 16

#ifndef TQ_ATTN_HAVE_DOTS
static inline void attn_dots(const float *a, const float *rows, size_t stride, int nt, int n, float *out) {
    for (int j = 0; j < nt; j++) out[j] = attn_dot(a, (const float *)((const char *)rows + (size_t)j * stride), n);
}
#endif

#ifndef TQ_ATTN_HAVE_EXP
static inline float attn_exp(float *p, int nt, float m) {
    float sum = 0.0f;
    for (int j = 0; j < nt; j++) {
        /* a masked key weighs 0 (exp(-inf)); a NaN score stays NaN, as in ggml's loop */
        const float e = p[j] == -INFINITY ? 0.0f : expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    return sum;
}
#endif

#ifndef TQ_ATTN_HAVE_MASK
static inline unsigned attn_mask(const uint16_t *m, float slope, int nt, float *out) {
    unsigned live = 0;
    for (int j = 0; j < nt; j++) {
        out[j] = slope * tq_fp16_to_fp32(m[j]);
        live |= (unsigned)(out[j] != -INFINITY) << j;
    }
    return live;
}
#endif

#ifndef TQ_ATTN_HAVE_SCORES
static inline float attn_scores(const float *sk, const float *sb, const float *mv, int nt, float scale, float *p) {
    float mt = -INFINITY;
    for (int j = 0; j < nt; j++) {
        const float s = (sb ? sk[j] + sb[j] : sk[j]) * scale + mv[j];
        p[j] = mv[j] == -INFINITY ? -INFINITY : s;
        if (p[j] > mt) mt = p[j];
    }
    return mt;
}
#endif

/* the decoder of a row type: the file's own (TQ_ATTN_OWN_DECODERS) or the active table's; found
 * once per call, not once per row */
static inline tq_dequantize_fn attn_decoder(int type) {
#ifdef TQ_ATTN_OWN_DECODERS
    switch (type) {
    case TQ_TYPE_TQ2: return dequantize_tq2;
    case TQ_TYPE_TQ3: return dequantize_tq3;
    case TQ_TYPE_TQ4: return dequantize_tq4;
    case TQ_TYPE_TQ2T: return dequantize_tq2t;
    case TQ_TYPE_TQ3T: return dequantize_tq3t;
    case TQ_TYPE_TQ2TS: return dequantize_tq2ts;
    case TQ_TYPE_TQ3TS: return dequantize_tq3ts;
    default: break;
    }
#endif
    return tq_active_kernels()->dequantize[type];
}

/* the tile's nt rows of n values from row j0 on: the live ones (bit j of live) decoded, the others
 * zeros where zero_dead (K: their scores are summed with the rest, not whatever the stack held;
 * V's dead rows weigh 0 and attn_accum skips them) */
static inline void attn_decode_tile(tq_dequantize_fn decode, const char *base, size_t stride, int64_t j0,
                                    unsigned live, int nt, float *out, int n, int zero_dead) {
    for (int j = 0; j < nt; j++) {
        if (live >> j & 1u) decode(base + (size_t)(j0 + j) * stride, out + (size_t)j * n, (size_t)n / TQ_BLOCK);
        else if (zero_dead) memset(out + (size_t)j * n, 0, sizeof(float) * (size_t)n);
    }
}

static void TQ_ATTN_NAME(const tq_attn_args *a) {
    /* decoded K and V rows of one tile; for head sizes above 128 fewer keys fit per tile */
    float kt[TQ_ATTN_TILE * 128] __attribute__((aligned(64)));
    float vt[TQ_ATTN_TILE * 128] __attribute__((aligned(64)));
    float p[TQ_ATTN_MAX_ROWS][TQ_ATTN_TILE], mv[TQ_ATTN_MAX_ROWS][TQ_ATTN_TILE];
    const int dk = a->dk, dv = a->dv, nr = a->n_rows;
    const int dmax = dk > dv ? dk : dv;
    const int tile = dmax <= 128 ? TQ_ATTN_TILE : TQ_ATTN_TILE * 128 / dmax;
    const char *k = (const char *)a->k, *v = (const char *)a->v;

    /* keys that every row masks out at either end, a cache's cells past the used ones (llama.cpp
     * pads n_kv to 256) or a sliding window's before it, are left out whole tiles at a time, found
     * on the raw fp16 -inf (0xfc00) so that their tiles' masks are not converted; the tiles that
     * remain are the same, so the result is the same */
    int64_t lo = 0, hi = a->n_kv;
    int trim = 1;
    for (int r = 0; r < nr; r++) trim &= a->mask[r] != NULL && a->slope[r] > 0.0f;
    if (trim) {
        lo = a->n_kv;
        hi = 0;
        for (int r = 0; r < nr; r++) {
            if (r > 0 && a->mask[r] == a->mask[r - 1]) continue;
            const uint16_t *m = a->mask[r];
            int64_t e = a->n_kv, b = 0;
            while (e > hi && m[e - 1] == 0xfc00u) e--;
            while (b < e && b < lo && m[b] == 0xfc00u) b++;
            if (e > hi) hi = e;
            if (b < lo) lo = b;
        }
        lo -= lo % tile;
    }

    const tq_dequantize_fn decode_k = attn_decoder(a->k_type), decode_v = attn_decoder(a->v_type);
    const float scale = a->scale, softcap = a->softcap;
    const float *kb = a->kb;
    for (int64_t j0 = lo; j0 < hi; j0 += tile) {
        int nt = a->n_kv - j0 < tile ? (int)(a->n_kv - j0) : tile;
        /* mv[r][j]: row r's mask term for key j0 + j (rows of one query position share a mask
         * row: converted once); bit j of live: some row attends to the key */
        unsigned live = 0;
        for (int r = 0; r < nr; r++) {
            if (r > 0 && a->mask[r] == a->mask[r - 1] && a->slope[r] == a->slope[r - 1]) {
                memcpy(mv[r], mv[r - 1], sizeof mv[r]);
                continue;
            }
            if (a->mask[r]) {
                live |= attn_mask(a->mask[r] + j0, a->slope[r], nt, mv[r]);
            } else {
                memset(mv[r], 0, sizeof mv[r]);
                live |= (1u << nt) - 1u;
            }
        }
        /* the keys after the tile's last live one are left out (a cache's cells past the used ones
         * are masked: most tiles of a short context); one no row attends to before it is not
         * decoded */
        if (live == 0) continue;
        nt = 32 - __builtin_clz(live);
        attn_decode_tile(decode_k, k, a->k_stride, j0, live, nt, kt, dk, 1);

        for (int r = 0; r < nr; r++) {
            float sk[TQ_ATTN_TILE], sb[TQ_ATTN_TILE];
            attn_dots(a->q[r], kt, (size_t)dk * sizeof(float), nt, dk, sk);
            if (kb) attn_dots(a->qb[r], (const float *)((const char *)kb + (size_t)j0 * a->kb_stride), a->kb_stride, nt, a->nb, sb);
            float mt;
            if (softcap == 0.0f) {
                mt = attn_scores(sk, kb ? sb : NULL, mv[r], nt, scale, p[r]);
            } else {
                mt = -INFINITY;
                for (int j = 0; j < nt; j++) {
                    if (mv[r][j] == -INFINITY) {
                        p[r][j] = -INFINITY;
                        continue;
                    }
                    const float s = softcap * tanhf((kb ? sk[j] + sb[j] : sk[j]) * scale) + mv[r][j];
                    p[r][j] = s;
                    if (s > mt) mt = s;
                }
            }
            if (mt > a->M[r]) { /* a new maximum: rescale what this row holds */
                if (a->M[r] != -INFINITY) {
                    const float ms = expf(a->M[r] - mt);
                    a->S[r] *= ms;
                    attn_scale(a->acc + (size_t)r * dv, ms, dv);
                }
                a->M[r] = mt;
            }
            a->S[r] += attn_exp(p[r], nt, a->M[r]);
        }

        attn_decode_tile(decode_v, v, a->v_stride, j0, live, nt, vt, dv, 0);
        for (int r = 0; r < nr; r++) attn_accum(a->acc + (size_t)r * dv, p[r], vt, nt, dv);
    }
}
