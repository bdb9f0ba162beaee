// Shared by the standalone CUDA programs of native/tests and native/bench: a CUDA error check and the
// deterministic random numbers their data come from (define TQ_TEST_SEED before including to change
// the stream).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(2); } } while (0)

#ifndef TQ_TEST_SEED
#define TQ_TEST_SEED 0x9e3779b97f4a7c15ull
#endif

static uint64_t rng_state = TQ_TEST_SEED;
// uniform in (0, 1)
static double urand() {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
// standard normal (Box-Muller)
static float grand() { return (float) (sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())); }
