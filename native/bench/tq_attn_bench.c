/* The CPU attention loop alone (tq_ggml_attn_f32): G query rows over N keys of tq K/V codes, as one
 * decode step's KV head calls it; best of R calls, microseconds and ns per key. To compare two
 * builds of the library, run each build's binary in turn, a few times (the VM drifts).
 *   tq_attn_bench [k_type] [head size] [keys] [reps] [rows] [term]
 * defaults: tq3 64 4096 300 3 0; term 1 adds the keys' offset term (keys centred before RoPE: 64
 * floats per key and row, as llama.cpp passes it). Prints a checksum of the output, which two builds
 * that compute the same values print alike. */
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

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "tq3";
    const int d = argc > 2 ? atoi(argv[2]) : 64, n = argc > 3 ? atoi(argv[3]) : 4096;
    const int reps = argc > 4 ? atoi(argv[4]) : 300, nr = argc > 5 ? atoi(argv[5]) : 3;
    const int term = argc > 6 && atoi(argv[6]) != 0, nb = 64;
    const int t = tq_type_from_name(name);
    if (t < 0 || d % TQ_BLOCK || d > TQ_ATTN_MAX_DIM || n < 1 || reps < 1 || nr < 1 || nr > TQ_ATTN_MAX_ROWS) {
        fprintf(stderr, "usage: tq_attn_bench [k_type] [head size] [keys] [reps] [rows] [term]\n");
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
        const double t0 = now();
        if (tq_ggml_attn_f32(&a) != TQ_OK) {
            fprintf(stderr, "tq_ggml_attn_f32 failed\n");
            return 1;
        }
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    double chk = 0;
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < d; i++) chk += acc[(size_t)r * d + i] / S[r];
    printf("%s/%s d=%d rows=%d keys=%d%s %s: %.1f us, %.2f ns per key (checksum %.9g)\n", name, name, d, nr, n,
           term ? " +term" : "", tq_isa_name(tq_isa_active()), best * 1e6, best * 1e9 / n, chk);
    free(k), free(v), free(x), free(q), free(qb), free(kb), free(acc), free(mask);
    return 0;
}
