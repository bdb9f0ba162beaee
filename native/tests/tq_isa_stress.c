/* Many-block check of every compiled ISA against portable, plus rough timings.
 * tq_selftest's few blocks rarely expose a changed rounding order (one ulp in a sum seldom moves
 * an fp16 scale or a code); over ~10^5 blocks of Gaussian data at random scales it does.
 * Then the attention loop (tq_ggml_attn_f32) of every ISA against portable's, within float
 * rounding, over head sizes, row counts, partial tiles, masked keys and the per-key term.
 * Usage: tq_isa_stress [blocks] (default 65536). Exit status = number of failures. */
#define _ISOC11_SOURCE
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq-ggml.h"
#include "turboquant.h"

static unsigned long long rng = 0x243f6a8885a308d3ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float gauss(void) { return (float)(sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* One attention case on every ISA against portable: M, S and acc agree within float rounding
 * (sums in another order); returns the failures. kb: with the per-key term of keys centred
 * before RoPE. Prints the time of each ISA's call where n_kv is large enough to time. */
static int attn_case(unsigned avail, tq_type kt, tq_type vt, int nr, int d, int n_kv, int masked, int kb) {
    const unsigned isas[] = {TQ_ISA_PORTABLE, TQ_ISA_AVX2, TQ_ISA_AVX512, TQ_ISA_NEON};
    const size_t kr = tq_row_bytes(kt, d), vr = tq_row_bytes(vt, d);
    float *x = malloc(sizeof(float) * d * n_kv), *q = malloc(sizeof(float) * d * nr);
    float *qb = malloc(sizeof(float) * d * nr), *kbt = malloc(sizeof(float) * d * n_kv);
    unsigned char *kc = malloc(kr * n_kv), *vc = malloc(vr * n_kv);
    uint16_t *mask = malloc(sizeof(uint16_t) * n_kv * nr);
    float M[2][TQ_ATTN_MAX_ROWS], S[2][TQ_ATTN_MAX_ROWS], *acc[2] = {malloc(sizeof(float) * d * nr), malloc(sizeof(float) * d * nr)};
    for (int i = 0; i < d * n_kv; i++) x[i] = gauss();
    tq_quantize(kt, x, kc, (size_t)d * n_kv);
    for (int i = 0; i < d * n_kv; i++) x[i] = gauss(), kbt[i] = gauss();
    tq_quantize(vt, x, vc, (size_t)d * n_kv);
    for (int i = 0; i < d * nr; i++) q[i] = 3 * gauss(), qb[i] = gauss();
    /* fp16 mask: 0 (0x0000), -1.5 (0xbe00) or -inf (0xfc00) for a share of the keys */
    for (int i = 0; i < n_kv * nr; i++) mask[i] = urand() * 100 < masked ? 0xfc00 : urand() < 0.5 ? 0 : 0xbe00;
    tq_attn_args a;
    memset(&a, 0, sizeof a);
    a.k_type = kt, a.v_type = vt, a.dk = a.dv = d, a.n_rows = nr;
    for (int r = 0; r < nr; r++) a.q[r] = q + r * d, a.mask[r] = mask + r * n_kv, a.slope[r] = 1, a.qb[r] = qb + r * d;
    a.k = kc, a.v = vc, a.k_stride = kr, a.v_stride = vr, a.n_kv = n_kv, a.scale = 0.125f;
    if (kb) a.kb = kbt, a.kb_stride = sizeof(float) * d, a.nb = d;
    int fails = 0;
    for (unsigned k = 0; k < sizeof isas / sizeof *isas; k++) {
        if (isas[k] && !(avail & isas[k])) continue;
        if (tq_force_isa(isas[k]) != TQ_OK) continue;
        const int o = isas[k] != TQ_ISA_PORTABLE;
        double best = 1e30;
        for (int rep = 0; rep < (n_kv >= 1024 ? 20 : 1); rep++) {
            for (int r = 0; r < nr; r++) M[o][r] = -INFINITY, S[o][r] = 0;
            memset(acc[o], 0, sizeof(float) * d * nr);
            a.M = M[o], a.S = S[o], a.acc = acc[o];
            double t0 = now();
            if (tq_ggml_attn_f32(&a) != TQ_OK) fails++;
            best = fmin(best, now() - t0);
        }
        if (n_kv >= 1024)
            printf("attn %s/%s d=%d rows=%d keys=%d%s %-8s %8.1f us\n", tq_type_name(kt), tq_type_name(vt), d, nr, n_kv,
                   kb ? " +term" : "", tq_isa_name(isas[k]), 1e6 * best);
        if (!o) continue;
        for (int r = 0; r < nr; r++) {
            int bad = !(fabsf(M[1][r] - M[0][r]) <= 1e-4f * (1 + fabsf(M[0][r]))) && !(M[0][r] == -INFINITY && M[1][r] == -INFINITY);
            bad |= !(fabsf(S[1][r] - S[0][r]) <= 1e-4f * (1 + S[0][r]));
            for (int i = 0; i < d; i++) bad |= !(fabsf(acc[1][r * d + i] - acc[0][r * d + i]) <= 1e-4f * (1 + S[0][r]));
            if (bad) {
                printf("FAIL attn %s/%s d=%d rows=%d keys=%d masked=%d%% term=%d %s: row %d M %g/%g S %g/%g\n", tq_type_name(kt),
                       tq_type_name(vt), d, nr, n_kv, masked, kb, tq_isa_name(isas[k]), r, M[1][r], M[0][r], S[1][r], S[0][r]);
                fails++;
                break;
            }
        }
    }
    free(x), free(q), free(qb), free(kbt), free(kc), free(vc), free(mask), free(acc[0]), free(acc[1]);
    return fails;
}

int main(int argc, char **argv) {
    size_t nb = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 65536;
    size_t n = nb * TQ_BLOCK;
    /* 64-byte aligned, as ggml's buffers are (n * 4 is a multiple of 64) */
    float *x = aligned_alloc(64, n * sizeof *x), *q = aligned_alloc(64, n * sizeof *q),
          *rx = aligned_alloc(64, n * sizeof *rx), *gx = aligned_alloc(64, n * sizeof *gx);
    unsigned char *ry = aligned_alloc(64, n), *gy = aligned_alloc(64, n);
    if (!x || !q || !rx || !gx || !ry || !gy) return 99;
    for (size_t b = 0; b < nb; b++) {
        float s = (float)exp(urand() * 20 - 10); /* block scale from e^-10 to e^10 */
        for (size_t j = 0; j < TQ_BLOCK; j++) x[b * TQ_BLOCK + j] = gauss() * s;
    }
    for (size_t i = 0; i < n; i++) q[i] = gauss();
    const unsigned isas[] = {TQ_ISA_PORTABLE, TQ_ISA_AVX2, TQ_ISA_AVX512, TQ_ISA_NEON};
    unsigned avail = tq_cpu_isa_available();
    int fails = 0;
    /* the types with SIMD kernels (the QJL types run the portable code on every ISA) */
    const tq_type types[] = {TQ_TYPE_TQ2, TQ_TYPE_TQ3, TQ_TYPE_TQ4, TQ_TYPE_TQ2T, TQ_TYPE_TQ3T, TQ_TYPE_TQ2TS, TQ_TYPE_TQ3TS};
    for (unsigned ti = 0; ti < sizeof types / sizeof *types; ti++) {
        const tq_type t = types[ti];
        size_t bytes = tq_row_bytes(t, n);
        double t_ref[3] = {0, 0, 0};
        for (unsigned k = 0; k < sizeof isas / sizeof *isas; k++) {
            if (isas[k] && !(avail & isas[k])) continue;
            if (tq_force_isa(isas[k]) != TQ_OK) continue;
            unsigned char *y = isas[k] ? gy : ry;
            float *xo = isas[k] ? gx : rx, dot = 0;
            double tm[3] = {1e30, 1e30, 1e30};
            for (size_t rep = 0; rep < 3 + (1u << 22) / n; rep++) { /* best of a few */
                double t0 = now();
                tq_quantize(t, x, y, n);
                double t1 = now();
                tq_dequantize(t, ry, xo, n);
                double t2 = now();
                tq_dot(t, q, ry, n, &dot);
                double t3 = now();
                tm[0] = fmin(tm[0], t1 - t0), tm[1] = fmin(tm[1], t2 - t1), tm[2] = fmin(tm[2], t3 - t2);
            }
            if (!isas[k]) {
                memcpy(t_ref, tm, sizeof tm);
            } else {
                size_t diff = 0, first = 0;
                for (size_t i = 0; i < bytes; i++)
                    if (ry[i] != gy[i] && !diff++) first = i;
                if (diff) printf("FAIL %s %s: %zu code bytes differ, first at %zu\n", tq_type_name(t),
                                 tq_isa_name(isas[k]), diff, first);
                if (memcmp(rx, gx, n * sizeof *rx))
                    printf("FAIL %s %s: dequantized values differ\n", tq_type_name(t), tq_isa_name(isas[k]));
                fails += diff != 0;
                fails += memcmp(rx, gx, n * sizeof *rx) != 0;
            }
            printf("%s %-8s quantize %7.2f ns/value (x%.1f)  dequantize %6.2f (x%.1f)  dot %6.2f (x%.1f)  dot=%.6g\n",
                   tq_type_name(t), tq_isa_name(isas[k]), 1e9 * tm[0] / n, t_ref[0] / tm[0],
                   1e9 * tm[1] / n, t_ref[1] / tm[1], 1e9 * tm[2] / n, t_ref[2] / tm[2], dot);
        }
    }
    /* head sizes 64..512 (tiles of 16 down to 4 keys), partial tiles, 1..16 rows, masked keys */
    const int shapes[][4] = {{1, 64, 1, 0}, {3, 64, 100, 30}, {16, 128, 37, 10}, {4, 256, 50, 50}, {2, 512, 9, 0}, {5, 64, 33, 100}};
    int n_attn = 0;
    for (unsigned si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int kb = 0; kb < 2; kb++)
            for (unsigned ti = 0; ti < sizeof types / sizeof *types; ti++, n_attn++)
                fails += attn_case(avail, types[ti], TQ_TYPE_TQ3, shapes[si][0], shapes[si][1], shapes[si][2], shapes[si][3], kb);
    /* timed: a decode step's KV head of SmolLM2 at depth 4096 (3 query rows), with and without the term */
    for (int kb = 0; kb < 2; kb++, n_attn += 2) {
        fails += attn_case(avail, TQ_TYPE_TQ3, TQ_TYPE_TQ3, 3, 64, 4096, 0, kb);
        fails += attn_case(avail, TQ_TYPE_TQ3T, TQ_TYPE_TQ3, 3, 64, 4096, 0, kb);
    }
    tq_reset_isa();
    printf("%d failures over %zu blocks and %d attention cases (ISAs available: 0x%x)\n", fails, nb, n_attn, avail);
    free(x), free(q), free(rx), free(gx), free(ry), free(gy);
    return fails;
}
