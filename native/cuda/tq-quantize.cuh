// tq-quantize.cuh: quantize one 64-value block on the GPU, for ggml-cuda's SET_ROWS (the KV-cache
// write) and CPY F32 -> tq (the K-shift). The arithmetic is tq-math.h's, the C codec's own, in
// IEEE round-to-nearest intrinsics, so a GPU writes the bytes the CPU writes (up to -use_fast_math's
// flush of float denormals). One thread codes one block, as ggml's k_set_rows_quant / cpy_f32_q
// expect: signature void(const float * x, block_t * y).
#pragma once

#include "tq-common.cuh"

#include <type_traits>

static __device__ void quantize_f32_tq2_block(const float * __restrict__ x, block_tq2 * __restrict__ y) {
    tq_quantize_block_tq2(x, y, 0);
}

static __device__ void quantize_f32_tq3_block(const float * __restrict__ x, block_tq3 * __restrict__ y) {
    tq_quantize_block_tq3(x, y, 0);
}

static __device__ void quantize_f32_tq4_block(const float * __restrict__ x, block_tq4 * __restrict__ y) {
    tq_quantize_block_tq4(x, y, 0);
}

static __device__ void quantize_f32_tq3j_block(const float * __restrict__ x, block_tq3j * __restrict__ y) {
    tq_quantize_block_tq3j(x, y, 0);
}

static __device__ void quantize_f32_tq4j_block(const float * __restrict__ x, block_tq4j * __restrict__ y) {
    tq_quantize_block_tq4j(x, y, 0);
}

static __device__ void quantize_f32_tq2t_block(const float * __restrict__ x, block_tq2t * __restrict__ y) {
    tq_quantize_block_tq2t(x, y, 0);
}

static __device__ void quantize_f32_tq3t_block(const float * __restrict__ x, block_tq3t * __restrict__ y) {
    tq_quantize_block_tq3t(x, y, 0);
}

// cpy.cu's cpy_kernel_t shape: void(const char * src_block, char * dst_block)
static __device__ void cpy_blck_f32_tq2(const char * cxi, char * cdsti) {
    quantize_f32_tq2_block((const float *) cxi, (block_tq2 *) cdsti);
}

static __device__ void cpy_blck_f32_tq3(const char * cxi, char * cdsti) {
    quantize_f32_tq3_block((const float *) cxi, (block_tq3 *) cdsti);
}

static __device__ void cpy_blck_f32_tq4(const char * cxi, char * cdsti) {
    quantize_f32_tq4_block((const float *) cxi, (block_tq4 *) cdsti);
}

static __device__ void cpy_blck_f32_tq3j(const char * cxi, char * cdsti) {
    quantize_f32_tq3j_block((const float *) cxi, (block_tq3j *) cdsti);
}

static __device__ void cpy_blck_f32_tq4j(const char * cxi, char * cdsti) {
    quantize_f32_tq4j_block((const float *) cxi, (block_tq4j *) cdsti);
}

static __device__ void cpy_blck_f32_tq2t(const char * cxi, char * cdsti) {
    quantize_f32_tq2t_block((const float *) cxi, (block_tq2t *) cdsti);
}

static __device__ void cpy_blck_f32_tq3t(const char * cxi, char * cdsti) {
    quantize_f32_tq3t_block((const float *) cxi, (block_tq3t *) cdsti);
}

// and back, one block to 64 floats (CPY tq -> F32), with the C decoder's arithmetic
static __device__ void cpy_blck_tq2_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq2((const block_tq2 *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq3_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq3((const block_tq3 *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq4_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq4((const block_tq4 *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq3j_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq3j((const block_tq3j *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq4j_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq4j((const block_tq4j *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq2t_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq2t((const block_tq2t *) cxi, (float *) cdsti);
}

static __device__ void cpy_blck_tq3t_f32(const char * cxi, char * cdsti) {
    tq_dequantize_block_tq3t((const block_tq3t *) cxi, (float *) cdsti);
}

// ---- one block per 16 lanes (half a warp), for SET_ROWS ---------------------------------------
// The single-thread quantizers above run the whole block serially, which at decode (a handful of
// blocks per layer) is pure latency. Here 16 lanes share a block, lane l holding values
// l, l+16, l+32, l+48: exactly the lanes of the canonical sums (tq_impl.h), whose fold
// (acc[i] += acc[i+h], h = 8, 4, 2, 1) is a shuffle-down, so codes and scale are bit-identical to
// the C codec's. The 2- and 4-bit planes need no exchange (byte l of qs holds lane l's values);
// the 1-bit plane is four ballots. All 32 lanes of the warp run every shuffle and ballot (full
// mask, no divergence around them); lanes with `valid` false compute on zeros and store nothing.

// the canonical fold of the 16 lanes' partial sums, broadcast to all 16
static __device__ __forceinline__ float tq_cuda_fold16(float acc) {
#pragma unroll
    for (int h = 8; h >= 1; h >>= 1) {
        acc = TQ_ADD(acc, __shfl_down_sync(0xffffffffu, acc, h, 16));
    }
    return __shfl_sync(0xffffffffu, acc, 0, 16);
}

template <int bits>
static __device__ __forceinline__ void tq_cuda_assign4(const float x[4], const float inv, uint32_t c[4]) {
    const float * bnd = tq_bounds_for(bits);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const float v = TQ_MUL(x[r], inv);
        uint32_t k = 0;
#pragma unroll
        for (int i = 0; i < (1 << bits) - 1; ++i) {
            k += v > bnd[i];
        }
        c[r] = k;
    }
}

// tq_refit_sums over the half warp
template <int bits>
static __device__ __forceinline__ void tq_cuda_refit_sums16(const float x[4], const uint32_t c[4], float * xcs, float * ccs) {
    const float * cb = tq_codebook_for(bits);
    float v = cb[c[0]];
    float xc = TQ_MUL(x[0], v);
    float cc = TQ_MUL(v, v);
#pragma unroll
    for (int r = 1; r < 4; ++r) {
        v = cb[c[r]];
        xc = TQ_ADD(xc, TQ_MUL(x[r], v));
        cc = TQ_ADD(cc, TQ_MUL(v, v));
    }
    *xcs = tq_cuda_fold16(xc);
    *ccs = tq_cuda_fold16(cc);
}

// codes c[r] of values l + 16 r and the fp16 scale: tq_quantize_codes(bits, x, c, TQ_SCALE_UNBIASED) on 16 lanes.
// Every path runs the same shuffles; the block's case (non-finite, zero, past fp16, normal) only
// selects among the results at the end.
template <int bits>
static __device__ __forceinline__ tq_half tq_cuda_quantize_codes16(const float x[4], const bool valid, uint32_t c[4]) {
    const int half = (threadIdx.x / 16) % 2;
    bool finite = true;
    float acc = TQ_MUL(x[0], x[0]);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        finite = finite && isfinite(x[r]);
        if (r > 0) {
            acc = TQ_ADD(acc, TQ_MUL(x[r], x[r]));
        }
    }
    const bool bad = ((__ballot_sync(0xffffffffu, valid && !finite) >> (16 * half)) & 0xffffu) != 0;
    const float sumsq = tq_cuda_fold16(acc);

    float inv = 0.0f, rms = 1.0f;
    const int kind = tq_first_scale(sumsq, &inv, &rms);

    uint32_t c1[4], c2[4];
    tq_cuda_assign4<bits>(x, inv, c1);
    float xc, cc;
    tq_cuda_refit_sums16<bits>(x, c1, &xc, &cc);
    const float d1 = tq_lsq_scale(xc, cc, rms);
    tq_cuda_assign4<bits>(x, kind == 1 ? TQ_DIV(1.0f, d1) : inv, c2);
    tq_cuda_refit_sums16<bits>(x, c2, &xc, &cc);
    const float d2 = tq_unbiased_scale(sumsq, xc, tq_lsq_scale(xc, cc, d1));

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        c[r] = (bad || kind == 0) ? 0u : kind == 2 ? c1[r] : c2[r];
    }
    if (bad) {
        return (tq_half) TQ_HALF_NAN;
    }
    if (kind == 0) {
        return (tq_half) 0;
    }
    return tq_store_scale(kind == 2 ? TQ_FP16_MAX : d2);
}

// bit `bit` of the codes of values j + 8 g (g = 0..7) as byte j of a 1-bit plane (tq_pack1), valid
// on lanes j < 8 of each half warp
static __device__ __forceinline__ uint8_t tq_cuda_plane1(const uint32_t c[4], const int bit, const int l) {
    const int half = (threadIdx.x / 16) % 2;
    uint32_t m[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        m[r] = (__ballot_sync(0xffffffffu, (c[r] >> bit) & 1) >> (16 * half)) & 0xffffu;
    }
    uint32_t v = 0;
#pragma unroll
    for (int g = 0; g < 8; ++g) {
        v |= ((m[g >> 1] >> ((l & 7) + 8 * (g & 1))) & 1u) << g;
    }
    return (uint8_t) v;
}

// Quantize the 64 values at x into *y with the 16 lanes of a half warp (lane l = threadIdx.x % 16
// reads x[l + 16 r]); tq2, tq3, tq4.
template <typename block_t>
static __device__ __forceinline__ void tq_cuda_quantize_block16(const float * __restrict__ x, block_t * __restrict__ y, const bool valid) {
    constexpr int bits = tq_cuda_traits<block_t>::bits;
    static_assert(std::is_same_v<block_t, block_tq2> || std::is_same_v<block_t, block_tq3> || std::is_same_v<block_t, block_tq4>,
        "tq_cuda_quantize_block16: tq2, tq3 or tq4 (QJL types use the single-thread quantizer)");
    const int l = threadIdx.x % 16;
    float xr[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        xr[r] = valid ? x[l + 16 * r] : 0.0f;
    }
    uint32_t c[4];
    const tq_half d = tq_cuda_quantize_codes16<bits>(xr, valid, c);

    uint8_t qh = 0;
    if constexpr (bits == 3) {
        qh = tq_cuda_plane1(c, 2, l);
    }
    if (!valid) {
        return;
    }
    if (l == 0) {
        y->d = d;
    }
    if constexpr (bits == 4) {
        y->qs[l]      = (uint8_t) ((c[0] & 15) | (c[2] & 15) << 4);
        y->qs[l + 16] = (uint8_t) ((c[1] & 15) | (c[3] & 15) << 4);
    } else {
        y->qs[l] = (uint8_t) ((c[0] & 3) | (c[1] & 3) << 2 | (c[2] & 3) << 4 | (c[3] & 3) << 6);
        if constexpr (bits == 3) {
            if (l < 8) {
                y->qh[l] = qh;
            }
        }
    }
}
