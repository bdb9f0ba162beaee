/* Kernel benchmark and quality table for native/README.md.
 *   tq_bench [values]   (default 1M values = 4 MiB of f32 per buffer)
 *   tq_bench attn [k_type] [head size] [keys] [reps] [rows] [term]
 * Prints markdown: per type and ISA, ns per 64-value block and GB/s for quantize (f32 in, codes
 * out), dequantize (codes in, f32 out) and dot (f32 query + codes in), next to memcpy of the same
 * f32 buffer; then the relative MSE |x - x_hat|^2 / |x|^2 on Gaussian data for every type, both
 * scale rules, and q4_0 (32-value blocks, fp16 scale = max/-8, as ggml codes it) for reference.
 * attn: the CPU attention loop alone (tq_ggml_attn_f32), G query rows over N keys of tq K/V codes
 * as one decode step's KV head calls it; best of R calls, microseconds and ns per key. Defaults:
 * tq3 64 4096 300 3 0; term 1 adds the keys' offset term (keys centred before RoPE: 64 floats per
 * key and row, as llama.cpp passes it). It prints a checksum of the output, alike for two builds
 * that compute the same values: to compare builds, run each one's binary in turn, a few times. */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq-ggml.h"
#include "turboquant.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static unsigned long long rng = 0x2545F4914F6CDD1Dull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float gauss(void) { return (float)(sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }

/* best of `reps` timed runs of fn, each over the whole buffer */
#define TIME(best, reps, stmt)                       \
    do {                                             \
        best = 1e30;                                 \
        for (int r_ = 0; r_ < (reps); r_++) {        \
            double t0_ = now();                      \
            stmt;                                    \
            double t_ = now() - t0_;                 \
            if (t_ < best) best = t_;                \
        }                                            \
    } while (0)

static float q4_0_rel_mse(const float *x, size_t n) {
    double err = 0, tot = 0;
    for (size_t b = 0; b < n; b += 32) {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[b + j]) > amax) amax = fabsf(x[b + j]), max = x[b + j];
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) {
            int q = (int)(x[b + j] * id + 8.5f);
            q = q < 0 ? 0 : q > 15 ? 15 : q;
            float y = (q - 8) * d;
            err += (x[b + j] - y) * (x[b + j] - y);
            tot += (double)x[b + j] * x[b + j];
        }
    }
    return (float)(err / tot);
}

/* tq_bench attn ...: argv[1..] after "attn" */
static int attn_bench(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "tq3";
    const int d = argc > 2 ? atoi(argv[2]) : 64, n = argc > 3 ? atoi(argv[3]) : 4096;
    const int reps = argc > 4 ? atoi(argv[4]) : 300, nr = argc > 5 ? atoi(argv[5]) : 3;
    const int term = argc > 6 && atoi(argv[6]) != 0, nb = 64;
    const int t = tq_type_from_name(name);
    if (t < 0 || d % TQ_BLOCK || d > TQ_ATTN_MAX_DIM || n < 1 || reps < 1 || nr < 1 || nr > TQ_ATTN_MAX_ROWS) {
        fprintf(stderr, "usage: tq_bench attn [k_type] [head size] [keys] [reps] [rows] [term]\n");
        return 2;
    }
    const size_t rb = tq_row_bytes((tq_type)t, (size_t)d);
    char *k = malloc(rb * n), *v = malloc(rb * n);
    float *x = malloc(sizeof(float) * d), *q = malloc(sizeof(float) * nr * d), *qb = malloc(sizeof(float) * nr * nb);
    float *kb = malloc(sizeof(float) * nb * n), *acc = calloc((size_t)nr * d, sizeof(float));
    float M[TQ_ATTN_MAX_ROWS], S[TQ_ATTN_MAX_ROWS];
    uint16_t *mask = calloc((size_t)n, sizeof(uint16_t)); /* fp16 zeros: every key attended */
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < d; i++) x[i] = gauss();
        tq_quantize((tq_type)t, x, k + rb * j, (size_t)d);
        for (int i = 0; i < d; i++) x[i] = gauss();
        tq_quantize((tq_type)t, x, v + rb * j, (size_t)d);
        for (int i = 0; i < nb; i++) kb[(size_t)j * nb + i] = 0.1f * gauss();
    }
    for (int i = 0; i < nr * d; i++) q[i] = gauss();
    for (int i = 0; i < nr * nb; i++) qb[i] = gauss();
    tq_attn_args a;
    memset(&a, 0, sizeof a);
    a.k_type = a.v_type = t;
    a.dk = a.dv = d;
    a.n_rows = nr;
    for (int r = 0; r < nr; r++) {
        a.q[r] = q + (size_t)r * d;
        a.mask[r] = mask;
        a.slope[r] = 1.0f;
        if (term) a.qb[r] = qb + (size_t)r * nb;
    }
    a.k = k;
    a.v = v;
    a.k_stride = a.v_stride = rb;
    a.n_kv = n;
    a.scale = 1.0f / sqrtf((float)d);
    a.M = M;
    a.S = S;
    a.acc = acc;
    if (term) {
        a.kb = kb;
        a.kb_stride = sizeof(float) * nb;
        a.nb = nb;
    }
    double best = 1e30;
    for (int it = 0; it < reps; it++) {
        for (int r = 0; r < nr; r++) M[r] = -INFINITY, S[r] = 0.0f;
        memset(acc, 0, sizeof(float) * nr * d);
        double t;
        tq_status st = TQ_OK;
        TIME(t, 1, st = tq_ggml_attn_f32(&a));
        if (st != TQ_OK) {
            fprintf(stderr, "tq_ggml_attn_f32: %s\n", tq_strerror(st));
            return 1;
        }
        if (t < best) best = t;
    }
    double chk = 0;
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < d; i++) chk += acc[(size_t)r * d + i] / S[r];
    printf("%s/%s d=%d rows=%d keys=%d%s %s: %.1f us, %.2f ns per key (checksum %.9g)\n", name, name, d, nr, n,
           term ? " +term" : "", tq_isa_name(tq_isa_active()), best * 1e6, best * 1e9 / n, chk);
    free(k), free(v), free(x), free(q), free(qb), free(kb), free(acc), free(mask);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "attn") == 0) return attn_bench(argc - 1, argv + 1);
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : (1u << 20);
    n -= n % TQ_BLOCK;
    float *x = malloc(n * sizeof(float)), *q = malloc(n * sizeof(float)), *o = malloc(n * sizeof(float));
    unsigned char *y = malloc(n);
    for (size_t i = 0; i < n; i++) x[i] = gauss(), q[i] = gauss();
    const size_t nb = n / TQ_BLOCK;
    const int reps = 7;
    double t;
    TIME(t, reps, memcpy(o, x, n * sizeof(float)));
    printf("memcpy of %zu MiB: %.1f GB/s (read + write)\n\n", n * 4 >> 20, 2.0 * n * 4 / t / 1e9);
    printf("| type | ISA | quantize ns/block | quantize GB/s | dequantize ns/block | dequantize GB/s | dot ns/block | dot GB/s |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    const unsigned isas[] = {TQ_ISA_PORTABLE, TQ_ISA_AVX2, TQ_ISA_AVX512, TQ_ISA_NEON};
    volatile float sink = 0;
    for (int ty = 0; ty < TQ_TYPE_COUNT; ty++) {
        const size_t cb = tq_row_bytes((tq_type)ty, n);
        for (unsigned k = 0; k < 4; k++) {
            if (tq_force_isa(isas[k]) != TQ_OK) continue;
            double tq, td, tv;
            TIME(tq, reps, tq_quantize((tq_type)ty, x, y, n));
            TIME(td, reps, tq_dequantize((tq_type)ty, y, o, n));
            float s;
            TIME(tv, reps, (tq_dot((tq_type)ty, q, y, n, &s), sink += s));
            printf("| %s | %s | %.1f | %.2f | %.1f | %.2f | %.1f | %.2f |\n", tq_type_name((tq_type)ty),
                   tq_isa_name(isas[k]), tq / nb * 1e9, (n * 4.0 + cb) / tq / 1e9, td / nb * 1e9,
                   (n * 4.0 + cb) / td / 1e9, tv / nb * 1e9, (n * 4.0 + cb) / tv / 1e9);
        }
    }
    tq_reset_isa();
    printf("\n| type | bits/value | relative MSE (shipped scale: <x, x_hat> = <x, x>) | relative MSE (RMS scale) |\n|---|---|---|---|\n");
    for (int ty = 0; ty < TQ_TYPE_COUNT; ty++) {
        double mse[2];
        for (int m = 0; m < 2; m++) {
            if (m == 0) tq_quantize((tq_type)ty, x, y, n);
            else tq_quantize_rms_scale((tq_type)ty, x, y, n);
            tq_dequantize((tq_type)ty, y, o, n);
            double e = 0, tot = 0;
            for (size_t i = 0; i < n; i++) e += (double)(x[i] - o[i]) * (x[i] - o[i]), tot += (double)x[i] * x[i];
            mse[m] = e / tot;
        }
        printf("| %s | %.3f | %.5f | %.5f |\n", tq_type_name((tq_type)ty), tq_bits_per_value((tq_type)ty), mse[0], mse[1]);
    }
    printf("| q4_0 (ggml rounding) | 4.500 | %.5f | |\n", q4_0_rel_mse(x, n));
    (void)sink;
    free(x), free(q), free(o), free(y);
    return 0;
}
