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

/* n values (n % TQ_BLOCK == 0) of one coded row to f32 */
static inline void attn_decode(int type, const void *row, float *out, int n) {
#ifdef TQ_ATTN_OWN_DECODERS
    switch (type) {
    case TQ_TYPE_TQ2: dequantize_tq2(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ3: dequantize_tq3(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ4: dequantize_tq4(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ2T: dequantize_tq2t(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ3T: dequantize_tq3t(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ2TS: dequantize_tq2ts(row, out, (size_t)n / TQ_BLOCK); return;
    case TQ_TYPE_TQ3TS: dequantize_tq3ts(row, out, (size_t)n / TQ_BLOCK); return;
    default: break;
    }
#endif
    tq_active_kernels()->dequantize[type](row, out, (size_t)n / TQ_BLOCK);
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

    for (int64_t j0 = lo; j0 < hi; j0 += tile) {
        int nt = a->n_kv - j0 < tile ? (int)(a->n_kv - j0) : tile;
        /* mv[r][j]: row r's mask term for key j0 + j (rows of one query position share a mask
         * row: converted once); live[j]: some row attends to the key */
        int live[TQ_ATTN_TILE] = {0}, last = -1;
        for (int r = 0; r < nr; r++) {
            if (r > 0 && a->mask[r] == a->mask[r - 1] && a->slope[r] == a->slope[r - 1]) {
                memcpy(mv[r], mv[r - 1], sizeof mv[r]);
                continue;
            }
            for (int j = 0; j < nt; j++) {
                mv[r][j] = a->mask[r] ? a->slope[r] * tq_fp16_to_fp32(a->mask[r][j0 + j]) : 0.0f;
                live[j] |= mv[r][j] != -INFINITY;
            }
        }
        for (int j = 0; j < nt; j++)
            if (live[j]) last = j;
        /* the keys after the tile's last live one are left out (a cache's cells past the used ones
         * are masked: most tiles of a short context); one no row attends to before it is not
         * decoded, but the tile's scores are summed for every key: its row holds zeros, not
         * whatever the stack held */
        if (last < 0) continue;
        nt = last + 1;
        for (int j = 0; j < nt; j++) {
            if (live[j]) attn_decode(a->k_type, k + (size_t)(j0 + j) * a->k_stride, kt + j * dk, dk);
            else memset(kt + j * dk, 0, sizeof(float) * dk);
        }

        for (int r = 0; r < nr; r++) {
            float sk[TQ_ATTN_TILE], sb[TQ_ATTN_TILE];
            attn_dots(a->q[r], kt, (size_t)dk * sizeof(float), nt, dk, sk);
            if (a->kb) attn_dots(a->qb[r], (const float *)((const char *)a->kb + (size_t)j0 * a->kb_stride), a->kb_stride, nt, a->nb, sb);
            float mt = -INFINITY;
            for (int j = 0; j < nt; j++) {
                if (mv[r][j] == -INFINITY) {
                    p[r][j] = -INFINITY;
                    continue;
                }
                float s = (a->kb ? sk[j] + sb[j] : sk[j]) * a->scale;
                if (a->softcap != 0.0f) s = a->softcap * tanhf(s);
                s += mv[r][j];
                p[r][j] = s;
                if (s > mt) mt = s;
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

        for (int j = 0; j < nt; j++)
            if (live[j]) attn_decode(a->v_type, v + (size_t)(j0 + j) * a->v_stride, vt + j * dv, dv);
        for (int r = 0; r < nr; r++) attn_accum(a->acc + (size_t)r * dv, p[r], vt, nt, dv);
    }
}
