// tq-common.cuh: device helpers shared by the TurboQuant CUDA headers (quantize, convert,
// flash attention). Header-only: ggml-cuda is built without relocatable device code, so every
// function is `static __device__ __forceinline__` and the only globals are the codebook tables
// of tq-codebooks.h, which tq-math.h declares `static const __device__` under CUDA.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "tq-blocks.h"
#include "tq-math.h"

#include <stdlib.h>
#include <utility>

// ---- programmatic dependent launch ------------------------------------------------------------
// ggml-cuda launches its kernels with programmatic stream serialization on Hopper and later
// (GGML_CUDA_USE_PDL, common.cuh): a kernel's blocks are scheduled while its predecessor finishes
// and wait in cudaGridDependencySynchronize before they touch what it wrote. A kernel launched the
// plain way waits for all of its predecessor, and its successor for all of it, so each plain launch
// in a chain of PDL kernels costs a kernel start's latency on both sides. The tq kernels that run
// inside ggml-cuda therefore launch the same way (tq_cuda_launch) and keep its rules:
//   - tq_cuda_pdl_wait before a block's first read or write of global memory that another kernel
//     writes or reads: it returns once the predecessor has finished and its writes are visible;
//   - tq_cuda_pdl_trigger at the start: the successor may be scheduled from then on (it waits in
//     its own tq_cuda_pdl_wait / ggml_cuda_pdl_sync, so the trigger's place only moves its start);
//   - no __restrict__ on the kernel's pointer parameters: local copies carry TQ_CUDA_RESTRICT,
//     empty where the kernel may wait, as ggml-cuda's GGML_CUDA_RESTRICT (with it the compiler
//     may move loads above the wait).
// Outside ggml-cuda (the native harnesses) and with TQ_CUDA_PDL=0 they launch the plain way.
#if defined(GGML_CUDA_USE_PDL) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define TQ_CUDA_PDL_DEVICE 1
#define TQ_CUDA_RESTRICT
#else
#define TQ_CUDA_RESTRICT __restrict__
#endif

static __device__ __forceinline__ void tq_cuda_pdl_wait() {
#ifdef TQ_CUDA_PDL_DEVICE
    cudaGridDependencySynchronize();
#endif
}

static __device__ __forceinline__ void tq_cuda_pdl_trigger() {
#ifdef TQ_CUDA_PDL_DEVICE
    cudaTriggerProgrammaticLaunchCompletion();
#endif
}

// TQ_CUDA_PDL=0: the plain launch, for A/B timing in one binary (GGML_CUDA_PDL=0 turns off
// ggml-cuda's own and, through ggml_cuda_kernel_launch, these as well)
static inline bool tq_cuda_pdl_enabled() {
    static const bool on = []() {
        const char * e = getenv("TQ_CUDA_PDL");
        return e == nullptr || atoi(e) != 0;
    }();
    return on;
}

// pdl false: the plain launch (where the programmatic one measured slower)
template <typename... P, typename... A>
static inline void tq_cuda_launch_if(const bool pdl, void (*kernel)(P...), const dim3 grid, const dim3 block,
                                     const size_t smem, cudaStream_t stream, A &&... args) {
#if defined(GGML_CUDA_USE_PDL)
    if (pdl && tq_cuda_pdl_enabled()) {
        // ggml's launcher: the attribute only where the kernel was built for sm_90 or later
        ggml_cuda_kernel_launch(kernel, ggml_cuda_kernel_launch_params(grid, block, smem, stream), std::forward<A>(args)...);
        return;
    }
#else
    (void) pdl;
#endif
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
}

template <typename... P, typename... A>
static inline void tq_cuda_launch(void (*kernel)(P...), const dim3 grid, const dim3 block, const size_t smem,
                                  cudaStream_t stream, A &&... args) {
    tq_cuda_launch_if(true, kernel, grid, block, smem, stream, std::forward<A>(args)...);
}

// fp16 scale bits -> float (exact, the same value as tq_fp16_to_fp32)
static __device__ __forceinline__ float tq_cuda_half(const tq_half h) {
    return __half2float(__ushort_as_half(h));
}

// 32-bit little-endian word at a 2-byte aligned address: tq blocks are 18/26/34 bytes long, so
// their planes are only 2-byte aligned in a row of blocks
static __device__ __forceinline__ uint32_t tq_cuda_load_u32(const uint8_t * p) {
    const uint16_t * p16 = (const uint16_t *) p;
    return (uint32_t) p16[0] | ((uint32_t) p16[1] << 16);
}

// The codes of values j..j+3 of a block (j % 4 == 0) as the four bytes of one word, from the plane
// words that hold them: one shift and one mask per bit plane (the layouts of tq-blocks.h).
//   2-bit plane: qs_word = qs[j % 16 .. +3];  1-bit plane: qh_word = qh[j % 8 .. +3];
//   4-bit plane: qs_word = qs[j % 32 .. +3].
// Split from the loads so that a kernel holding the words already (the flash-attention decode
// kernel stages them through shared memory) decodes with the same arithmetic.
static __device__ __forceinline__ uint32_t tq_cuda_codes4_w2(const uint32_t qs_word, const int j) {
    return (qs_word >> (2 * (j >> 4))) & 0x03030303u;
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4_w3(const uint32_t qs_word, const uint32_t qh_word, const int j) {
    return tq_cuda_codes4_w2(qs_word, j) | (((qh_word >> (j >> 3)) & 0x01010101u) << 2);
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4_w4(const uint32_t qs_word, const int j) {
    return (qs_word >> (4 * (j >> 5))) & 0x0f0f0f0fu;
}

// 4 * the same codes, i.e. the byte offsets of their centroids in a table of floats, with the << 2
// folded into the plane shifts: one shift and one mask per plane. sq = j >> 4 for the 2-bit plane,
// j >> 5 for the 4-bit plane; qh_word is taken already shifted right by j >> 3.
static __device__ __forceinline__ uint32_t tq_cuda_shr_signed(const uint32_t x, const int k) {
    return k >= 0 ? x >> k : x << -k;
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4x4_w2(const uint32_t qs_word, const int sq) {
    return tq_cuda_shr_signed(qs_word, 2 * sq - 2) & 0x0c0c0c0cu;
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4x4_w3(const uint32_t qs_word, const uint32_t qh_shifted, const int sq) {
    return tq_cuda_codes4x4_w2(qs_word, sq) | ((qh_shifted << 4) & 0x10101010u);
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4x4_w4(const uint32_t qs_word, const int sq) {
    return tq_cuda_shr_signed(qs_word, 4 * sq - 2) & 0x3c3c3c3cu;
}

// the same read from a block in memory: one load per plane
static __device__ __forceinline__ uint32_t tq_cuda_codes4_tq2(const block_tq2 * b, const int j) {
    return tq_cuda_codes4_w2(tq_cuda_load_u32(b->qs + (j & 15)), j);
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4_tq3(const block_tq3 * b, const int j) {
    return tq_cuda_codes4_w3(tq_cuda_load_u32(b->qs + (j & 15)), tq_cuda_load_u32(b->qh + (j & 7)), j);
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4_tq4(const block_tq4 * b, const int j) {
    return tq_cuda_codes4_w4(tq_cuda_load_u32(b->qs + (j & 31)), j);
}

// the same for the MSE codes of the QJL types (tq3j: 2-bit planes of tq2, tq4j: 3-bit of tq3)
static __device__ __forceinline__ uint32_t tq_cuda_codes4_tq3j(const block_tq3j * b, const int j) {
    return tq_cuda_codes4_w2(tq_cuda_load_u32(b->qs + (j & 15)), j);
}

static __device__ __forceinline__ uint32_t tq_cuda_codes4_tq4j(const block_tq4j * b, const int j) {
    return tq_cuda_codes4_w3(tq_cuda_load_u32(b->qs + (j & 15)), tq_cuda_load_u32(b->qh + (j & 7)), j);
}

// Type traits for templates: block struct, code bits, codebook.
template <typename block_t> struct tq_cuda_traits;
template <> struct tq_cuda_traits<block_tq2> {
    static constexpr int bits = 2;
    static __device__ __forceinline__ uint32_t codes4(const block_tq2 * b, int j) { return tq_cuda_codes4_tq2(b, j); }
};
template <> struct tq_cuda_traits<block_tq3> {
    static constexpr int bits = 3;
    static __device__ __forceinline__ uint32_t codes4(const block_tq3 * b, int j) { return tq_cuda_codes4_tq3(b, j); }
};
template <> struct tq_cuda_traits<block_tq4> {
    static constexpr int bits = 4;
    static __device__ __forceinline__ uint32_t codes4(const block_tq4 * b, int j) { return tq_cuda_codes4_tq4(b, j); }
};
template <> struct tq_cuda_traits<block_tq3j> {
    static constexpr int bits = 2;
    static __device__ __forceinline__ uint32_t codes4(const block_tq3j * b, int j) { return tq_cuda_codes4_tq3j(b, j); }
};
template <> struct tq_cuda_traits<block_tq4j> {
    static constexpr int bits = 3;
    static __device__ __forceinline__ uint32_t codes4(const block_tq4j * b, int j) { return tq_cuda_codes4_tq4j(b, j); }
};

// centroid of a code at unit scale
template <int bits>
static __device__ __forceinline__ float tq_cuda_centroid(const uint32_t code) {
    if constexpr (bits == 2) {
        return TQ_CODEBOOK_2[code];
    } else if constexpr (bits == 3) {
        return TQ_CODEBOOK_3[code];
    } else {
        static_assert(bits == 4, "tq: 2, 3 or 4 code bits");
        return TQ_CODEBOOK_4[code];
    }
}

// QJL term of value j: (S^T z)_j / sqrt(64) = D1_j * (H * D2 * H * z)_j for the sign vector z of qj.
// H*z is computed whole (64-point butterflies), the last H only for row j. Every intermediate is a
// multiple of 1/64 below 2^7, so this is exactly the value of tq_qjl_direction(qj)[j].
static __device__ __forceinline__ void tq_cuda_qjl_term2(const uint8_t * qj, const int j, float & t0, float & t1) {
    float w[TQ_BLOCK];
#pragma unroll
    for (int k = 0; k < TQ_BLOCK; ++k) {
        w[k] = ((qj[k & 7] >> (k >> 3)) & 1) ? 1.0f : -1.0f;
    }
    tq_fwht64(w);
    tq_flip64(w, TQ_QJL_D2);
    float s0 = 0.0f;
    float s1 = 0.0f;
#pragma unroll
    for (int k = 0; k < TQ_BLOCK; ++k) {
        s0 += (__popc(j & k) & 1) ? -w[k] : w[k];
        s1 += (__popc((j + 1) & k) & 1) ? -w[k] : w[k];
    }
    s0 *= 0.125f;
    s1 *= 0.125f;
    t0 = ((TQ_QJL_D1 >> j) & 1) ? -s0 : s0;
    t1 = ((TQ_QJL_D1 >> (j + 1)) & 1) ? -s1 : s1;
}
