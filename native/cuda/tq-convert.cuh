// tq-convert.cuh: dequantize TurboQuant blocks two values at a time, in the shape of ggml-cuda's
// dequantize_kernel_t (void(const void * vx, int64_t ib, int iqs, float2 & v): values iqs and
// iqs+1 of block ib, qr = 1). convert.cu's to_fp16 / to_fp32 (contiguous and _nc; the flash-
// attention MMA path and the vec fallback turn K/V into f16 through them) and getrows.cu use it.
// Values equal the C decoder's (tq-math.h): d * centroid, plus for the QJL types the term
// gamma * sqrt(pi/2)/64 * (S^T z)_j.
#pragma once

#include "tq-common.cuh"

template <typename block_t>
static __device__ __forceinline__ void tq_cuda_dequantize_pair(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_t * b = (const block_t *) vx + ib;
    constexpr int bits = tq_cuda_traits<block_t>::bits;
    const uint32_t codes = tq_cuda_traits<block_t>::codes4(b, iqs & ~3);
    const int sh = 8 * (iqs & 3);
    const float d = tq_cuda_half(b->d);
    v.x = TQ_MUL(d, tq_cuda_centroid<bits>((codes >> sh) & 0xff));
    v.y = TQ_MUL(d, tq_cuda_centroid<bits>((codes >> (sh + 8)) & 0xff));
}

template <typename block_t>
static __device__ __forceinline__ void tq_cuda_dequantize_pair_qjl(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_t * b = (const block_t *) vx + ib;
    tq_cuda_dequantize_pair<block_t>(vx, ib, iqs, v);
    float t0, t1;
    tq_cuda_qjl_term2(b->qj, iqs, t0, t1);
    const float a = TQ_MUL(tq_cuda_half(b->gamma), TQ_QJL_SCALE);
    v.x = TQ_ADD(v.x, TQ_MUL(a, t0));
    v.y = TQ_ADD(v.y, TQ_MUL(a, t1));
}

static __device__ __forceinline__ void dequantize_tq2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    tq_cuda_dequantize_pair<block_tq2>(vx, ib, iqs, v);
}

static __device__ __forceinline__ void dequantize_tq3(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    tq_cuda_dequantize_pair<block_tq3>(vx, ib, iqs, v);
}

static __device__ __forceinline__ void dequantize_tq4(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    tq_cuda_dequantize_pair<block_tq4>(vx, ib, iqs, v);
}

// QJL: a 64-point transform per call, i.e. per pair of values. Correct, and the conversion path
// only (prefill / the vec fallback); no flash-attention vec kernel reads QJL codes directly.
static __device__ __forceinline__ void dequantize_tq3j(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    tq_cuda_dequantize_pair_qjl<block_tq3j>(vx, ib, iqs, v);
}

static __device__ __forceinline__ void dequantize_tq4j(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    tq_cuda_dequantize_pair_qjl<block_tq4j>(vx, ib, iqs, v);
}

// Trellis codes: values iqs, iqs+1 (iqs even) from the branch word's window and the level bits
// (tq_tcq_dequant's arithmetic); the conversion path only, like the QJL types.
static __device__ __forceinline__ uint32_t tq_cuda_tcq_subset_pair(const uint8_t * qu, const int iqs) {
    uint64_t z1, z0;
    tq_tcq_subset_words(tq_load_word(qu), &z1, &z0);
    const uint32_t a = (uint32_t) (z1 >> iqs) & 3u, c = (uint32_t) (z0 >> iqs) & 3u;
    return ((a & 1u) << 1 | (c & 1u)) | ((a & 2u) | (c >> 1)) << 2; // subset of iqs | of iqs+1 << 2
}

static __device__ __forceinline__ void dequantize_tq2t(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_tq2t * b = (const block_tq2t *) vx + ib;
    const uint32_t k = tq_cuda_tcq_subset_pair(b->qu, iqs);
    const uint32_t l = (uint32_t) (tq_load_word(b->ql) >> iqs) & 3u;
    const float d = tq_cuda_half(b->d);
    v.x = TQ_MUL(d, tq_cuda_centroid<3>(4 * (l & 1u) + (k & 3u)));
    v.y = TQ_MUL(d, tq_cuda_centroid<3>(4 * (l >> 1) + (k >> 2)));
}

static __device__ __forceinline__ void dequantize_tq3t(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_tq3t * b = (const block_tq3t *) vx + ib;
    const uint32_t k = tq_cuda_tcq_subset_pair(b->qu, iqs);
    const int j0 = iqs, j1 = iqs + 1;
    const uint32_t l0 = (b->qs[j0 & 15] >> (2 * (j0 >> 4))) & 3u;
    const uint32_t l1 = (b->qs[j1 & 15] >> (2 * (j1 >> 4))) & 3u;
    const float d = tq_cuda_half(b->d);
    v.x = TQ_MUL(d, tq_cuda_centroid<4>(4 * l0 + (k & 3u)));
    v.y = TQ_MUL(d, tq_cuda_centroid<4>(4 * l1 + (k >> 2)));
}
