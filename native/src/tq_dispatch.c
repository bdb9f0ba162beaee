/* The only file that knows about CPUs: feature detection and the kernel table. */
#include "tq_impl.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if TQ_IS_X86
#include <cpuid.h>
#endif

static unsigned detect(void) {
    unsigned mask = 0;
#if TQ_IS_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(osxsave && avx)) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 6) != 6) return 0; /* the OS must save XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
#if !defined(TQ_NO_AVX2)
    if (avx2 && fma && f16c) mask |= TQ_ISA_AVX2;
#endif
#if !defined(TQ_NO_AVX512)
    /* opmask, upper ZMM0-15 and ZMM16-31 state too */
    if ((mask & TQ_ISA_AVX2) && avx512f && avx512bw && avx512vl && (xlo & 0xe0) == 0xe0) mask |= TQ_ISA_AVX512;
#endif
    (void)xhi;
    (void)avx2; (void)fma; (void)f16c; (void)avx512f; (void)avx512bw; (void)avx512vl;
#elif TQ_IS_AARCH64 && !defined(TQ_NO_NEON)
    mask |= TQ_ISA_NEON; /* Advanced SIMD is mandatory on AArch64 */
#endif
    return mask;
}

static tq_kernels g_tables[3]; /* portable; + AVX2 or NEON; + AVX-512 */
static unsigned g_table_isa[3];
static atomic_int g_built;
static _Atomic(const tq_kernels *) g_active;
static atomic_uint g_active_isa;

static void build(void) {
    if (atomic_load_explicit(&g_built, memory_order_acquire)) return;
    /* Building twice from two threads writes the same bytes; g_built only skips repeat work. */
    unsigned avail = detect();
    tq_kernels_portable(&g_tables[0]);
    g_table_isa[0] = TQ_ISA_PORTABLE;
    g_tables[1] = g_tables[0];
    g_tables[2] = g_tables[0];
    g_table_isa[1] = g_table_isa[2] = 0; /* no table: what this CPU cannot run is never built */
    /* an ISA's table is built only where the CPU runs it: the compiler may use the ISA's
     * instructions in tq_kernels_<isa> itself (its table set-up loops), not only in the kernels */
#if TQ_IS_X86 && !defined(TQ_NO_AVX2)
    if (avail & TQ_ISA_AVX2) {
        tq_kernels_avx2(&g_tables[1]);
        g_tables[2] = g_tables[1];
        g_table_isa[1] = TQ_ISA_AVX2;
    }
#endif
#if TQ_IS_X86 && !defined(TQ_NO_AVX512)
    if (avail & TQ_ISA_AVX512) {
        tq_kernels_avx512(&g_tables[2]);
        g_table_isa[2] = TQ_ISA_AVX512;
    }
#endif
#if TQ_IS_AARCH64 && !defined(TQ_NO_NEON)
    tq_kernels_neon(&g_tables[1]);
    g_table_isa[1] = TQ_ISA_NEON;
#endif
    int best = 0;
    if (avail & (TQ_ISA_AVX2 | TQ_ISA_NEON)) best = 1;
    if (avail & TQ_ISA_AVX512) best = 2;
    /* TQ_ISA=portable|avx2|neon caps the choice (to measure a smaller CPU's kernels on this one,
     * also inside llama.cpp's tools); a name this CPU cannot run is said on stderr, not ignored */
    const char *cap = getenv("TQ_ISA");
    if (cap && *cap) {
        int found = -1;
        for (int i = 0; i <= best; i++)
            if (tq_isa_name(g_table_isa[i]) && !strcmp(cap, tq_isa_name(g_table_isa[i]))) found = i;
        if (found >= 0) best = found;
        else fprintf(stderr, "tq: TQ_ISA=%s is not an instruction set this CPU and build run; using %s\n", cap,
                     tq_isa_name(g_table_isa[best]));
    }
    atomic_store(&g_active_isa, g_table_isa[best]);
    atomic_store(&g_active, &g_tables[best]);
    atomic_store_explicit(&g_built, 1, memory_order_release);
}

const tq_kernels *tq_active_kernels(void) {
    const tq_kernels *k = atomic_load_explicit(&g_active, memory_order_acquire);
    if (k) return k;
    build();
    return atomic_load(&g_active);
}

const tq_kernels *tq_portable_kernels(void) {
    build();
    return &g_tables[0];
}

unsigned tq_cpu_isa_available(void) { return detect(); }

unsigned tq_isa_active(void) {
    tq_active_kernels();
    return atomic_load(&g_active_isa);
}

const char *tq_isa_name(unsigned isa) {
    switch (isa) {
    case TQ_ISA_PORTABLE: return "portable";
    case TQ_ISA_AVX2: return "avx2";
    case TQ_ISA_AVX512: return "avx512";
    case TQ_ISA_NEON: return "neon";
    default: return NULL;
    }
}

tq_status tq_force_isa(unsigned isa) {
    build();
    unsigned avail = detect();
    int idx;
    switch (isa) {
    case TQ_ISA_PORTABLE: idx = 0; break;
    case TQ_ISA_AVX2: idx = 1; break;
    case TQ_ISA_NEON: idx = 1; break;
    case TQ_ISA_AVX512: idx = 2; break;
    default: return TQ_ERR_ISA;
    }
    if (isa != TQ_ISA_PORTABLE && (!(avail & isa) || g_table_isa[idx] != isa)) return TQ_ERR_ISA;
    atomic_store(&g_active_isa, isa);
    atomic_store(&g_active, &g_tables[idx]);
    return TQ_OK;
}

void tq_reset_isa(void) {
    atomic_store(&g_built, 0);
    atomic_store(&g_active, NULL);
    build();
}
