/* Many-block check of every compiled ISA against portable, plus rough timings.
 * tq_selftest's few blocks rarely expose a changed rounding order (one ulp in a sum seldom moves
 * an fp16 scale or a code); over ~10^5 blocks of Gaussian data at random scales it does.
 * Usage: tq_isa_stress [blocks] (default 65536). Exit status = number of failures. */
#define _ISOC11_SOURCE
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    const tq_type types[] = {TQ_TYPE_TQ2, TQ_TYPE_TQ3, TQ_TYPE_TQ4, TQ_TYPE_TQ2T, TQ_TYPE_TQ3T};
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
    tq_reset_isa();
    printf("%d failures over %zu blocks (ISAs available: 0x%x)\n", fails, nb, avail);
    free(x), free(q), free(rx), free(gx), free(ry), free(gy);
    return fails;
}
