// tq-set-rows.cuh: SET_ROWS (the KV-cache write) and CPY between F32 and the tq types on the GPU,
// for ggml-cuda's set-rows.cu and cpy.cu, which include this file and call tq_cuda_set_rows /
// tq_cuda_cpy for every tq type. The block math is tq-quantize.cuh's (the C codec's own).
//   SET_ROWS: tq2/tq3/tq4 and the trellis types tq2t/tq3t code one 64-value block per 16 lanes
//   (tq_cuda_quantize_block16), which is what makes the per-token write cheap at decode; the QJL
//   types one block per thread.
//   CPY (the K-shift's cast and copy back): one block per thread, any strides.
// Needs ggml-cuda's common.cuh (fast_div_modulo, init_fastdiv_values) first.
#pragma once

#include "tq-quantize.cuh"

static constexpr int TQ_CUDA_ROWS_BLOCK_SIZE = 256;

template <typename block_t> static constexpr bool tq_cuda_half_warp_block() {
    return std::is_same_v<block_t, block_tq2> || std::is_same_v<block_t, block_tq3> || std::is_same_v<block_t, block_tq4> ||
           std::is_same_v<block_t, block_tq2t> || std::is_same_v<block_t, block_tq3t>;
}

template <typename block_t>
static __device__ __forceinline__ void tq_cuda_quantize_one(const float * __restrict__ x, block_t * __restrict__ y) {
    if constexpr (std::is_same_v<block_t, block_tq2>)  { quantize_f32_tq2_block(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq3>)  { quantize_f32_tq3_block(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq4>)  { quantize_f32_tq4_block(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq3j>) { quantize_f32_tq3j_block(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq4j>) { quantize_f32_tq4j_block(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq2t>) { quantize_f32_tq2t_block(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq3t>) { quantize_f32_tq3t_block(x, y); }
}

template <typename block_t>
static __device__ __forceinline__ void tq_cuda_dequantize_one(const block_t * __restrict__ x, float * __restrict__ y) {
    if constexpr (std::is_same_v<block_t, block_tq2>)  { tq_dequantize_block_tq2(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq3>)  { tq_dequantize_block_tq3(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq4>)  { tq_dequantize_block_tq4(x, y);  }
    if constexpr (std::is_same_v<block_t, block_tq3j>) { tq_dequantize_block_tq3j(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq4j>) { tq_dequantize_block_tq4j(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq2t>) { tq_dequantize_block_tq2t(x, y); }
    if constexpr (std::is_same_v<block_t, block_tq3t>) { tq_dequantize_block_tq3t(x, y); }
}

// Block i of the source (64 values along dim 0) goes to row src1[i01, i02 % ne11, i03 % ne12] of the
// destination, as SET_ROWS defines it; `lanes` threads code one block.
template <typename idx_t, typename block_t, int lanes>
static __global__ void tq_k_set_rows(const float * src0, const idx_t * src1, block_t * dst,
                                     const int64_t n_blocks, const int64_t s01, const int64_t s02, const int64_t s03,
                                     const int64_t s10, const int64_t s11, const int64_t s12,
                                     const int64_t s1, const int64_t s2, const int64_t s3,
                                     const uint3 ne00_fd, const uint3 ne01_fd, const uint3 ne02_fd,
                                     const uint3 ne11_fd, const uint3 ne12_fd) {
    tq_cuda_pdl_trigger();
    const int64_t i     = (int64_t(blockDim.x) * blockIdx.x + threadIdx.x) / lanes;
    const bool    valid = i < n_blocks;

    const float * x = src0;
    block_t     * y = dst;
    tq_cuda_pdl_wait();
    if (valid) {
        uint2 dm = fast_div_modulo((uint32_t) (i * TQ_BLOCK), ne00_fd);
        const int64_t i00 = dm.y;
        dm = fast_div_modulo(dm.x, ne01_fd);
        const int64_t i01 = dm.y;
        dm = fast_div_modulo(dm.x, ne02_fd);
        const int64_t i02 = dm.y;
        const int64_t i03 = dm.x;
        const int64_t row = src1[i01*s10 + fastmodulo((uint32_t) i02, ne11_fd)*s11 + fastmodulo((uint32_t) i03, ne12_fd)*s12];
        x = src0 + i01*s01 + i02*s02 + i03*s03 + i00;
        y = (block_t *) ((char *) dst + row*s1 + i02*s2 + i03*s3) + i00 / TQ_BLOCK;
    }
    if constexpr (lanes == 16) {
        tq_cuda_quantize_block16<block_t>(x, y, valid); // every lane takes part (shuffles), valid or not
    } else if (valid) {
        tq_cuda_quantize_one<block_t>(x, y);
    }
}

template <typename idx_t, typename block_t>
static void tq_cuda_set_rows_t(const float * src0, const idx_t * src1, void * dst,
                               const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
                               const int64_t ne11, const int64_t ne12,
                               const size_t nb01, const size_t nb02, const size_t nb03,
                               const size_t nb10, const size_t nb11, const size_t nb12,
                               const size_t nb1, const size_t nb2, const size_t nb3, cudaStream_t stream) {
    constexpr int lanes = tq_cuda_half_warp_block<block_t>() ? 16 : 1;
    GGML_ASSERT(ne00 % TQ_BLOCK == 0);
    const int64_t n_blocks = ne00 * ne01 * ne02 * ne03 / TQ_BLOCK;
    if (n_blocks == 0 || ne11 == 0 || ne12 == 0) {
        return;
    }
    GGML_ASSERT(n_blocks * TQ_BLOCK <= UINT32_MAX); // the fast division works on 32-bit indices
    const int64_t grid = (n_blocks * lanes + TQ_CUDA_ROWS_BLOCK_SIZE - 1) / TQ_CUDA_ROWS_BLOCK_SIZE;
    tq_cuda_launch(tq_k_set_rows<idx_t, block_t, lanes>, grid, TQ_CUDA_ROWS_BLOCK_SIZE, 0, stream,
        src0, src1, (block_t *) dst, n_blocks,
        nb01/sizeof(float), nb02/sizeof(float), nb03/sizeof(float),
        nb10/sizeof(idx_t), nb11/sizeof(idx_t), nb12/sizeof(idx_t), nb1, nb2, nb3,
        init_fastdiv_values((uint32_t) ne00), init_fastdiv_values((uint32_t) ne01), init_fastdiv_values((uint32_t) ne02),
        init_fastdiv_values((uint32_t) ne11), init_fastdiv_values((uint32_t) ne12));
}

// the one call set-rows.cu makes for a tq destination (F32 source rows)
template <typename idx_t>
static void tq_cuda_set_rows(const ggml_type type, const float * src0, const idx_t * src1, void * dst,
                             const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
                             const int64_t ne11, const int64_t ne12,
                             const size_t nb01, const size_t nb02, const size_t nb03,
                             const size_t nb10, const size_t nb11, const size_t nb12,
                             const size_t nb1, const size_t nb2, const size_t nb3, cudaStream_t stream) {
#define TQ_SET_ROWS(T, block_t) \
    case T: tq_cuda_set_rows_t<idx_t, block_t>(src0, src1, dst, ne00, ne01, ne02, ne03, ne11, ne12, \
                nb01, nb02, nb03, nb10, nb11, nb12, nb1, nb2, nb3, stream); break;
    switch (type) {
        TQ_SET_ROWS(GGML_TYPE_TQ2,  block_tq2)
        TQ_SET_ROWS(GGML_TYPE_TQ3,  block_tq3)
        TQ_SET_ROWS(GGML_TYPE_TQ4,  block_tq4)
        TQ_SET_ROWS(GGML_TYPE_TQ3J, block_tq3j)
        TQ_SET_ROWS(GGML_TYPE_TQ4J, block_tq4j)
        TQ_SET_ROWS(GGML_TYPE_TQ2T, block_tq2t)
        TQ_SET_ROWS(GGML_TYPE_TQ3T, block_tq3t)
        default: GGML_ABORT("tq_cuda_set_rows: %s is not a tq type", ggml_type_name(type));
    }
#undef TQ_SET_ROWS
}

// ---- CPY F32 <-> tq: one 64-value block per thread, element strides as ggml gives them ----------

// the byte offset of element i (a multiple of 64) of a tensor with sizes ne and byte strides nb,
// where dim 0 counts blocks of 64 when `blocks` (the tq side)
static __device__ __forceinline__ int64_t tq_cuda_offset(int64_t i, const int64_t ne[3], const int64_t nb[4], const bool blocks) {
    const int64_t i0 = i % ne[0]; i /= ne[0];
    const int64_t i1 = i % ne[1]; i /= ne[1];
    const int64_t i2 = i % ne[2];
    const int64_t i3 = i / ne[2];
    return (blocks ? i0 / TQ_BLOCK : i0) * nb[0] + i1*nb[1] + i2*nb[2] + i3*nb[3];
}

struct tq_cuda_shape {
    int64_t ne[3];
    int64_t nb[4];
};

template <typename block_t, bool to_tq>
static __global__ void tq_k_cpy(const char * src, char * dst, const int64_t n_blocks,
                                const tq_cuda_shape s, const tq_cuda_shape d) {
    tq_cuda_pdl_trigger();
    tq_cuda_pdl_wait();
    const int64_t b = int64_t(blockDim.x) * blockIdx.x + threadIdx.x;
    if (b >= n_blocks) {
        return;
    }
    const int64_t i = b * TQ_BLOCK;
    const char * x = src + tq_cuda_offset(i, s.ne, s.nb, !to_tq);
    char       * y = dst + tq_cuda_offset(i, d.ne, d.nb, to_tq);
    if constexpr (to_tq) {
        tq_cuda_quantize_one<block_t>((const float *) x, (block_t *) y);
    } else {
        tq_cuda_dequantize_one<block_t>((const block_t *) x, (float *) y);
    }
}

// the one call cpy.cu makes for F32 -> tq or tq -> F32; the F32 side must be contiguous along dim 0
static void tq_cuda_cpy(const ggml_tensor * src, const ggml_tensor * dst, cudaStream_t stream) {
    const bool to_tq = ggml_type_is_tq(dst->type);
    GGML_ASSERT(to_tq ? src->type == GGML_TYPE_F32 : (ggml_type_is_tq(src->type) && dst->type == GGML_TYPE_F32));
    GGML_ASSERT(src->ne[0] % TQ_BLOCK == 0 && dst->ne[0] % TQ_BLOCK == 0);
    GGML_ASSERT((to_tq ? src->nb[0] : dst->nb[0]) == sizeof(float));
    const int64_t n_blocks = ggml_nelements(src) / TQ_BLOCK;
    if (n_blocks == 0) {
        return;
    }
    const tq_cuda_shape s = { { src->ne[0], src->ne[1], src->ne[2] }, { (int64_t) src->nb[0], (int64_t) src->nb[1], (int64_t) src->nb[2], (int64_t) src->nb[3] } };
    const tq_cuda_shape d = { { dst->ne[0], dst->ne[1], dst->ne[2] }, { (int64_t) dst->nb[0], (int64_t) dst->nb[1], (int64_t) dst->nb[2], (int64_t) dst->nb[3] } };
    const int64_t grid = (n_blocks + TQ_CUDA_ROWS_BLOCK_SIZE - 1) / TQ_CUDA_ROWS_BLOCK_SIZE;
    GGML_ASSERT(grid <= INT_MAX);
    const char * x = (const char *) src->data;
    char       * y = (char *) dst->data;
#define TQ_CPY(T, block_t) \
    case T: tq_cuda_launch(to_tq ? tq_k_cpy<block_t, true> : tq_k_cpy<block_t, false>, grid, TQ_CUDA_ROWS_BLOCK_SIZE, 0, stream, \
                           x, y, n_blocks, s, d); break;
    switch (to_tq ? dst->type : src->type) {
        TQ_CPY(GGML_TYPE_TQ2,  block_tq2)
        TQ_CPY(GGML_TYPE_TQ3,  block_tq3)
        TQ_CPY(GGML_TYPE_TQ4,  block_tq4)
        TQ_CPY(GGML_TYPE_TQ3J, block_tq3j)
        TQ_CPY(GGML_TYPE_TQ4J, block_tq4j)
        TQ_CPY(GGML_TYPE_TQ2T, block_tq2t)
        TQ_CPY(GGML_TYPE_TQ3T, block_tq3t)
        default: GGML_ABORT("tq_cuda_cpy: no tq type");
    }
#undef TQ_CPY
}
