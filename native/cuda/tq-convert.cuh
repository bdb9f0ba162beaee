// tq-convert.cuh: dequantize TurboQuant blocks two values at a time, in the shape of ggml-cuda's
// dequantize_kernel_t (void(const void * vx, int64_t ib, int iqs, float2 & v): values iqs and
// iqs+1 of block ib, qr = 1), which getrows.cu uses; and whole tensors 8 values per thread
// (tq_cuda_convert_cont / _nc), convert.cu's to_fp16 / to_fp32 / to_bf16, through which the flash-
// attention MMA path and the vec fallback turn K/V into f16.
// Values equal the C decoder's (tq-math.h): d * centroid, plus for the QJL types the term
// gamma * sqrt(pi/2)/64 * (S^T z)_j.
#pragma once

#include "tq-common.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

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

// ---- whole tensors: to_fp16 / to_fp32 / to_bf16, contiguous and not -------------------------------
// What the flash-attention MMA kernel (a prefill over a tq cache) runs on K and V, in full, for every
// ubatch: at a 32K cache that is 2 x 33.5M values per layer of an 8B model. A thread decodes 8
// consecutive values (a quarter of a plane word pair, the block's scale and plane words loaded once)
// and writes them in one 16-byte store (f16/bf16; two for f32), where ggml-cuda's generic kernel
// decodes 2 values per thread into two 2-byte stores.

template <typename dst_t>
static __device__ __forceinline__ void tq_cuda_store8(dst_t * __restrict__ y, const float2 (&v)[4]) {
    if constexpr (std::is_same_v<dst_t, float>) {
        ((float4 *) y)[0] = make_float4(v[0].x, v[0].y, v[1].x, v[1].y);
        ((float4 *) y)[1] = make_float4(v[2].x, v[2].y, v[3].x, v[3].y);
    } else {
        uint4 w;
        uint32_t * p = (uint32_t *) &w;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if constexpr (std::is_same_v<dst_t, half>) {
                const half2 h = __floats2half2_rn(v[k].x, v[k].y);
                p[k] = *(const uint32_t *) &h;
            } else {
                const nv_bfloat162 h = __floats2bfloat162_rn(v[k].x, v[k].y);
                p[k] = *(const uint32_t *) &h;
            }
        }
        *(uint4 *) y = w;
    }
}

// VPT (8, or 2 for A/B timing) values per thread; rows of ne00 values (ne00 % 64 == 0), block
// strides s01/s02/s03; y dense in the same order. threadIdx.x runs along a row, threadIdx.y over rows.
template <void (*dq)(const void *, int64_t, int, float2 &), int VPT, typename dst_t>
static __global__ void tq_cuda_convert(const void * vx_ptr, dst_t * y_ptr,
        const int64_t ne00, const int64_t ne01, const uint32_t ne02, const uint32_t ne0203,
        const int64_t s01, const int64_t s02, const int64_t s03) {
    static_assert(VPT == 8 || VPT == 2, "tq: 8 values per thread, or 2 as ggml-cuda's generic kernel");
    tq_cuda_pdl_trigger();
    tq_cuda_pdl_wait();
    const void * TQ_CUDA_RESTRICT vx = vx_ptr;
    dst_t      * TQ_CUDA_RESTRICT y  = y_ptr;
    const int64_t i00 = VPT * ((int64_t) blockDim.x * blockIdx.x + threadIdx.x);
    if (i00 >= ne00) {
        return;
    }
    const int j = (int) (i00 % TQ_BLOCK);
    for (int64_t i01 = (int64_t) blockIdx.y * blockDim.y + threadIdx.y; i01 < ne01; i01 += (int64_t) gridDim.y * blockDim.y) {
        for (uint32_t i0203 = blockIdx.z; i0203 < ne0203; i0203 += gridDim.z) {
            const uint32_t i02 = i0203 % ne02, i03 = i0203 / ne02;
            const int64_t ib = i03 * s03 + i02 * s02 + i01 * s01 + i00 / TQ_BLOCK;
            float2 v[VPT / 2];
#pragma unroll
            for (int k = 0; k < VPT / 2; ++k) {
                dq(vx, ib, j + 2 * k, v[k]);
            }
            dst_t * o = y + ((int64_t) i0203 * ne01 + i01) * ne00 + i00;
            if constexpr (VPT == 8) {
                tq_cuda_store8(o, v);
            } else {
                o[0] = (dst_t) v[0].x;
                o[1] = (dst_t) v[0].y;
            }
        }
    }
}

// 8 per thread: as many rows per thread block as fill it (16 rows of a 128-value head, as a cache
// that is not one piece hands them over); 2 per thread: ggml-cuda's launch, one row per block row
template <void (*dq)(const void *, int64_t, int, float2 &), int VPT, typename dst_t>
static void tq_cuda_convert_launch(const void * vx, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02,
        const int64_t ne03, const int64_t s01, const int64_t s02, const int64_t s03, cudaStream_t stream) {
    constexpr int nth = 256;
    const int64_t per_row = ne00 / VPT;
    const int tx = VPT == 8 ? (int) std::min<int64_t>(per_row, nth) : nth, ty = nth / tx;
    const dim3 grid((unsigned) ((per_row + tx - 1) / tx), (unsigned) std::min<int64_t>((ne01 + ty - 1) / ty, 65535),
                    (unsigned) std::min<int64_t>(ne02 * ne03, 65535));
    tq_cuda_launch(tq_cuda_convert<dq, VPT, dst_t>, grid, dim3(tx, ty), 0, stream, vx, y, ne00, ne01, (uint32_t) ne02,
                   (uint32_t) (ne02 * ne03), s01, s02, s03);
}

// TQ_CUDA_CONVERT_PAIRS=1: 2 values per thread, for A/B timing against ggml-cuda's generic pattern
static inline bool tq_cuda_convert_pairs() {
    static const bool pairs = []() {
        const char * e = getenv("TQ_CUDA_CONVERT_PAIRS");
        return e != nullptr && atoi(e) != 0;
    }();
    return pairs;
}

// the to_t_nc_cuda_t signature of convert.cuh (strides in blocks)
template <void (*dq)(const void *, int64_t, int, float2 &), typename dst_t>
static void tq_cuda_convert_nc(const void * vx, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02,
        const int64_t ne03, const int64_t s01, const int64_t s02, const int64_t s03, cudaStream_t stream) {
    if (tq_cuda_convert_pairs() || (uintptr_t) y % 16 != 0) {
        tq_cuda_convert_launch<dq, 2>(vx, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
    } else {
        tq_cuda_convert_launch<dq, 8>(vx, y, ne00, ne01, ne02, ne03, s01, s02, s03, stream);
    }
}

// the to_t_cuda_t signature: k values in a row
template <void (*dq)(const void *, int64_t, int, float2 &), typename dst_t>
static void tq_cuda_convert_cont(const void * vx, dst_t * y, const int64_t k, cudaStream_t stream) {
    tq_cuda_convert_nc<dq, dst_t>(vx, y, k, 1, 1, 1, k / TQ_BLOCK, k / TQ_BLOCK, k / TQ_BLOCK, stream);
}
