// tq-fattn.cuh: the flash-attention vector kernel (ggml-cuda fattn-vec.cuh) reading TurboQuant
// codes directly, in the shapes of fattn-common.cuh's typedefs:
//   vec_dot_KQ_t   float(const char * K_c, const void * Q_v, const int * Q_q8, const void * Q_ds)
//   dequantize_V_t void(const void * vx, void * dst, int64_t i0)
// K and Q are both in the rotated basis (the graph rotates Q and K alike), so K.Q is the dot of the
// float query with the decoded key; V is accumulated in the rotated basis and the graph un-rotates
// the attention output.
//
// K.Q: the query stays float (no q8_1 re-quantization; fattn-vec.cuh treats tq K like F16 there),
// so each group of nthreads = 8 threads holds, for every 64-value block c of the head, the float
// pairs Q_v[4c .. 4c+3] = query values 64c + 8t .. 64c + 8t + 7 (t = thread % 8), the layout of the
// F16 path with 16-byte copies. A thread reads the scale and its 8 codes (one or two 32-bit words
// per plane), sums q_j * centroid(code_j) and scales the block sum once.
//
// V: 4 consecutive values per call (the quantized-V layout of fattn-vec.cuh): one word per plane,
// one shift and one mask.
#pragma once

#include "tq-common.cuh"

#include <type_traits>

template <typename block_t, int D, int nthreads>
static __device__ __forceinline__ float tq_cuda_vec_dot_KQ(const char * __restrict__ K_c, const void * __restrict__ Q_v) {
    static_assert(nthreads == 8, "tq K.Q expects the F16 query layout: 8 threads x 8 values per 64-value block");
    static_assert(D % TQ_BLOCK == 0, "head size must be a multiple of the 64-value tq block");
    constexpr int bits = tq_cuda_traits<block_t>::bits;

    const block_t * K = (const block_t *) K_c;
    const float2  * Q = (const float2  *) Q_v;
    const int t = threadIdx.x % nthreads;

    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < D/TQ_BLOCK; ++c) {
        const uint32_t c0 = tq_cuda_traits<block_t>::codes4(K + c, 8*t + 0);
        const uint32_t c1 = tq_cuda_traits<block_t>::codes4(K + c, 8*t + 4);
        const float d = tq_cuda_half(K[c].d);

        float s = 0.0f;
#pragma unroll
        for (int l = 0; l < 2; ++l) {
            const uint32_t cw = l == 0 ? c0 : c1;
            const float2 qa = Q[4*c + 2*l + 0];
            const float2 qb = Q[4*c + 2*l + 1];
            s += qa.x * tq_cuda_centroid<bits>((cw >>  0) & 0xff);
            s += qa.y * tq_cuda_centroid<bits>((cw >>  8) & 0xff);
            s += qb.x * tq_cuda_centroid<bits>((cw >> 16) & 0xff);
            s += qb.y * tq_cuda_centroid<bits>((cw >> 24) & 0xff);
        }
        sum += d * s;
    }
    return sum;
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_tq2(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    (void) Q_q8; (void) Q_ds_v;
    return tq_cuda_vec_dot_KQ<block_tq2, D, nthreads>(K_c, Q_v);
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_tq3(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    (void) Q_q8; (void) Q_ds_v;
    return tq_cuda_vec_dot_KQ<block_tq3, D, nthreads>(K_c, Q_v);
}

template <int D, int nthreads>
static __device__ __forceinline__ float vec_dot_fattn_vec_KQ_tq4(
    const char * __restrict__ K_c, const void * __restrict__ Q_v, const int * __restrict__ Q_q8, const void * __restrict__ Q_ds_v) {
    (void) Q_q8; (void) Q_ds_v;
    return tq_cuda_vec_dot_KQ<block_tq4, D, nthreads>(K_c, Q_v);
}

// ne (2 or 4) consecutive values of V starting at element i0 (i0 % ne == 0) into dst (float or half)
template <typename block_t, typename T, int ne>
static __device__ __forceinline__ void tq_cuda_dequantize_V(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    static_assert(ne == 2 || ne == 4, "tq V: 2 or 4 values per call");
    constexpr int bits = tq_cuda_traits<block_t>::bits;

    const block_t * b = (const block_t *) vx + i0/TQ_BLOCK;
    const int j = i0 % TQ_BLOCK;
    const uint32_t codes = tq_cuda_traits<block_t>::codes4(b, j & ~3) >> (8*(j & 3));
    const float d = tq_cuda_half(b->d);

    if constexpr (std::is_same_v<T, float>) {
#pragma unroll
        for (int l = 0; l < ne; ++l) {
            ((float *) dst)[l] = d * tq_cuda_centroid<bits>((codes >> (8*l)) & 0xff);
        }
    } else if constexpr (std::is_same_v<T, half>) {
#pragma unroll
        for (int l = 0; l < ne; ++l) {
            ((half *) dst)[l] = __float2half(d * tq_cuda_centroid<bits>((codes >> (8*l)) & 0xff));
        }
    } else {
        static_assert(std::is_same_v<T, void>, "unsupported type");
    }
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_tq2(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    tq_cuda_dequantize_V<block_tq2, T, ne>(vx, dst, i0);
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_tq3(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    tq_cuda_dequantize_V<block_tq3, T, ne>(vx, dst, i0);
}

template <typename T, int ne>
static __device__ __forceinline__ void dequantize_V_tq4(const void * __restrict__ vx, void * __restrict__ dst, const int64_t i0) {
    tq_cuda_dequantize_V<block_tq4, T, ne>(vx, dst, i0);
}

// The vector kernel's dispatch cases for every K-V pair with a tq2/tq3/tq4 side, for fattn.cu's
// ggml_cuda_get_fattn_vec_case (FATTN_VEC_CASES_ALL_D is fattn.cu's; a pair whose instance was not
// compiled, GGML_CUDA_FA_QUANTS, compiles to nothing). The instance files are written at configure
// time (cmake/llamacpp.cmake).
#define TQ_FATTN_VEC_CASES_V(V)                                                             \
    FATTN_VEC_CASES_ALL_D(F16, V) FATTN_VEC_CASES_ALL_D(Q4_0, V) FATTN_VEC_CASES_ALL_D(Q4_1, V) \
    FATTN_VEC_CASES_ALL_D(Q5_0, V) FATTN_VEC_CASES_ALL_D(Q5_1, V) FATTN_VEC_CASES_ALL_D(Q8_0, V) \
    FATTN_VEC_CASES_ALL_D(BF16, V) FATTN_VEC_CASES_ALL_D(TQ2, V) FATTN_VEC_CASES_ALL_D(TQ3, V)   \
    FATTN_VEC_CASES_ALL_D(TQ4, V)
#define TQ_FATTN_VEC_CASES_K(K)                                                             \
    FATTN_VEC_CASES_ALL_D(K, F16) FATTN_VEC_CASES_ALL_D(K, Q4_0) FATTN_VEC_CASES_ALL_D(K, Q4_1) \
    FATTN_VEC_CASES_ALL_D(K, Q5_0) FATTN_VEC_CASES_ALL_D(K, Q5_1) FATTN_VEC_CASES_ALL_D(K, Q8_0) \
    FATTN_VEC_CASES_ALL_D(K, BF16)
#define TQ_FATTN_VEC_CASES_ALL_D                                                            \
    TQ_FATTN_VEC_CASES_V(TQ2) TQ_FATTN_VEC_CASES_V(TQ3) TQ_FATTN_VEC_CASES_V(TQ4)           \
    TQ_FATTN_VEC_CASES_K(TQ2) TQ_FATTN_VEC_CASES_K(TQ3) TQ_FATTN_VEC_CASES_K(TQ4)
