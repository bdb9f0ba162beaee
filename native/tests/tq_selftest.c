/* C-level check of every compiled ISA against the portable kernels (BLAKE3's habit): codes and
 * dequantized values byte-identical, dots within the float-rounding bound. Runs under ASan/UBSan
 * without Python (scripts/sanitize.sh). Exit status = number of failures. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "turboquant.h"

#define N (TQ_BLOCK * 8)

static unsigned long long rng = 88172645463325252ull;
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float gauss(void) { return (float)(sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand())); }

static void fill(float *x, int kind) {
    for (int i = 0; i < N; i++) {
        switch (kind) {
        case 0: x[i] = gauss(); break;
        case 1: x[i] = 0.0f; break;
        case 2: x[i] = gauss() * 1e6f; break;              /* past the fp16 scale range */
        case 3: x[i] = gauss() * 1e-41f; break;            /* float denormals */
        case 4: x[i] = (i % 97 == 3) ? 1000.0f : 0.0f; break; /* single spikes */
        case 5: x[i] = gauss() * 1e-6f; break;             /* fp16-subnormal scales */
        case 6: x[i] = (float)(i % 64) - 31.5f; break;     /* ties and a ramp */
        default: x[i] = gauss() * 3e19f; break;            /* sum of squares overflows */
        }
    }
}

int main(void) {
    int fails = 0;
    unsigned avail = tq_cpu_isa_available();
    const unsigned isas[] = {TQ_ISA_AVX2, TQ_ISA_AVX512, TQ_ISA_NEON};
    static float x[N], q[N], ref_x[N], got_x[N];
    static unsigned char ref_y[N * 2], got_y[N * 2];
    for (int t = 0; t < TQ_TYPE_COUNT; t++) {
        for (int kind = 0; kind < 8; kind++) {
            fill(x, kind);
            for (int i = 0; i < N; i++) q[i] = gauss();
            size_t bytes = tq_row_bytes((tq_type)t, N);
            tq_force_isa(TQ_ISA_PORTABLE);
            tq_quantize((tq_type)t, x, ref_y, N);
            tq_dequantize((tq_type)t, ref_y, ref_x, N);
            float ref_dot, got_dot;
            tq_dot((tq_type)t, q, ref_y, N, &ref_dot);
            double mag = 0;
            for (int i = 0; i < N; i++) mag += fabs((double)q[i] * ref_x[i]);
            for (unsigned k = 0; k < sizeof isas / sizeof *isas; k++) {
                if (!(avail & isas[k])) continue;
                if (tq_force_isa(isas[k]) != TQ_OK) continue;
                tq_quantize((tq_type)t, x, got_y, N);
                tq_dequantize((tq_type)t, ref_y, got_x, N);
                tq_dot((tq_type)t, q, ref_y, N, &got_dot);
                const char *isa = tq_isa_name(isas[k]);
                if (memcmp(ref_y, got_y, bytes)) {
                    size_t b = 0;
                    while (ref_y[b] == got_y[b]) b++;
                    printf("FAIL %s %s data %d: codes differ at byte %zu\n", tq_type_name((tq_type)t), isa, kind, b);
                    fails++;
                }
                if (memcmp(ref_x, got_x, sizeof ref_x)) {
                    printf("FAIL %s %s data %d: dequantized values differ\n", tq_type_name((tq_type)t), isa, kind);
                    fails++;
                }
                /* |simd - portable| <= 2 * N * 2^-24 * sum |q_j * x_j|: two summation orders. */
                double bound = 2.0 * N * 5.960464477539063e-08 * mag;
                if (!(fabs((double)got_dot - ref_dot) <= bound) && !(isnan(got_dot) && isnan(ref_dot))) {
                    printf("FAIL %s %s data %d: dot %.9g vs %.9g (bound %.3g)\n", tq_type_name((tq_type)t), isa, kind,
                           got_dot, ref_dot, bound);
                    fails++;
                }
            }
        }
    }
    tq_reset_isa();
    printf("%d failures (ISAs available: 0x%x, active: %s)\n", fails, avail, tq_isa_name(tq_isa_active()));
    return fails;
}
