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
// the block's sum of squares (tq_block_sumsq, on every lane) and whether a valid block holds a
// non-finite value (*bad, on every lane of the half warp)
static __device__ __forceinline__ float tq_cuda_sumsq16(const float x[4], const bool valid, bool * bad) {
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
    *bad = ((__ballot_sync(0xffffffffu, valid && !finite) >> (16 * half)) & 0xffffu) != 0;
    return tq_cuda_fold16(acc);
}

template <int bits>
static __device__ __forceinline__ tq_half tq_cuda_quantize_codes16(const float x[4], const bool valid, uint32_t c[4]) {
    bool bad;
    const float sumsq = tq_cuda_sumsq16(x, valid, &bad);

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

// ---- trellis-coded blocks (tq2t, tq3t) on 16 lanes ----------------------------------------------
// tq_tcq_forward's Viterbi search with one trellis state per lane: lane l runs state l % 8 (lanes
// 8..15 repeat 0..7, so that all 16 take part in every shuffle). The subsets' errors at each value do
// not depend on the path: the 16 lanes compute them first (lane l: values l + 16 r) into shared
// memory. The recursion then costs two shuffles per value (the two predecessors' costs), and each
// state's survivor branch word travels with it (register exchange), so there is no backtrace. Same
// sums, same ties (c1 < c0, the lower end state), same bytes as the C codec.

// one float4 of subset errors per value, per half warp of a CUDA block of at most 256 threads
// (set-rows: 256 x 1, the fused write: 32 x 4)
static __device__ __forceinline__ float4 * tq_cuda_tcq_scratch() {
    __shared__ float4 dist[16][TQ_BLOCK];
    return dist[(threadIdx.y * blockDim.x + threadIdx.x) / 16];
}

// the branch word of the least-cost path for x * inv (x: values l + 16 r of lane l)
template <int bits>
static __device__ __forceinline__ uint64_t tq_cuda_tcq_path16(const float x[4], const float inv, float4 * dist) {
    const float * A  = tq_codebook_for(bits + 1);
    constexpr int nl = 1 << (bits - 1);
    const int l = threadIdx.x % 16;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const float v = TQ_MUL(x[r], inv);
        float e0, e1, e2, e3;
        tq_tcq_level(A, nl, v, 0, &e0);
        tq_tcq_level(A, nl, v, 1, &e1);
        tq_tcq_level(A, nl, v, 2, &e2);
        tq_tcq_level(A, nl, v, 3, &e3);
        dist[l + 16 * r] = make_float4(e0, e1, e2, e3);
    }
    __syncwarp();
    const int s  = l & 7;
    const int k0 = tq_tcq_subset((unsigned) s);     // from state s >> 1
    const int k1 = tq_tcq_subset((unsigned) s + 8); // from state (s >> 1) + 4
    const int p0 = s >> 1;
    const int p1 = p0 + 4;
    const float * d = (const float *) dist;
    float    cost = s == 0 ? 0.0f : TQ_TCQ_FAR;
    uint64_t path = 0;
#pragma unroll 8
    for (int j = 0; j < TQ_BLOCK; ++j) {
        const float c0 = TQ_ADD(__shfl_sync(0xffffffffu, cost, p0, 16), d[4 * j + k0]);
        const float c1 = TQ_ADD(__shfl_sync(0xffffffffu, cost, p1, 16), d[4 * j + k1]);
        const bool  hi = c1 < c0;
        cost = hi ? c1 : c0;
        path = __shfl_sync(0xffffffffu, path, hi ? p1 : p0, 16) | ((uint64_t) (s & 1) << j);
    }
    int   best = 0;
    float bc   = __shfl_sync(0xffffffffu, cost, 0, 16);
#pragma unroll
    for (int t = 1; t < TQ_TCQ_STATES; ++t) {
        const float ct = __shfl_sync(0xffffffffu, cost, t, 16);
        best = ct < bc ? t : best;
        bc   = ct < bc ? ct : bc;
    }
    const uint64_t u = __shfl_sync(0xffffffffu, path, best, 16);
    __syncwarp(); // the next pass rewrites dist
    return u;
}

// idx[r] = 4 * level + subset of value l + 16 r on the path u (tq_tcq_path's idx)
template <int bits>
static __device__ __forceinline__ void tq_cuda_tcq_codes16(const float x[4], const float inv, const uint64_t u, uint32_t idx[4]) {
    const float * A  = tq_codebook_for(bits + 1);
    constexpr int nl = 1 << (bits - 1);
    const int l = threadIdx.x % 16;
    uint64_t z1, z0;
    tq_tcq_subset_words(u, &z1, &z0);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int j = l + 16 * r;
        const int k = (int) (((z1 >> j) & 1u) << 1 | ((z0 >> j) & 1u));
        float e;
        idx[r] = (uint32_t) (4 * tq_tcq_level(A, nl, TQ_MUL(x[r], inv), k, &e) + k);
    }
}

// tq_tcq_quantize_with(bits, ..., TQ_SCALE_UNBIASED) and tq_tcq_store on 16 lanes. As in
// tq_cuda_quantize_codes16, every block runs both passes and every shuffle; its case only selects.
template <typename block_t>
static __device__ __forceinline__ void tq_cuda_quantize_tcq16(const float * __restrict__ x, block_t * __restrict__ y, const bool valid) {
    constexpr int bits = std::is_same_v<block_t, block_tq3t> ? 3 : 2;
    const int l    = threadIdx.x % 16;
    const int half = (threadIdx.x / 16) % 2;
    float xr[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        xr[r] = valid ? x[l + 16 * r] : 0.0f;
    }
    bool bad;
    const float sumsq = tq_cuda_sumsq16(xr, valid, &bad);
    float inv = 0.0f, rms = 1.0f;
    const int kind = tq_first_scale(sumsq, &inv, &rms);

    float4 * dist = tq_cuda_tcq_scratch();
    // first pass: at 0.875 * RMS, or at the clamped scale of a block past fp16 (kind 2, final)
    const float d0   = TQ_MUL(rms, TQ_TCQ_FIRST);
    const float inv1 = kind == 2 ? inv : TQ_DIV(1.0f, d0);
    uint64_t u = tq_cuda_tcq_path16<bits>(xr, inv1, dist);
    uint32_t idx[4];
    tq_cuda_tcq_codes16<bits>(xr, inv1, u, idx);
    float xc, cc;
    tq_cuda_refit_sums16<bits + 1>(xr, idx, &xc, &cc);
    const float d1   = tq_lsq_scale(xc, cc, d0);
    const float inv2 = TQ_DIV(1.0f, d1);
    const uint64_t u2 = tq_cuda_tcq_path16<bits>(xr, inv2, dist);
    uint32_t idx2[4];
    tq_cuda_tcq_codes16<bits>(xr, inv2, u2, idx2);
    tq_cuda_refit_sums16<bits + 1>(xr, idx2, &xc, &cc);
    const float d2 = tq_unbiased_scale(sumsq, xc, tq_lsq_scale(xc, cc, d1));

    const bool zero = bad || kind == 0;
    if (kind == 1) {
        u = u2;
    }
    uint32_t lev[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        lev[r] = zero ? 0u : (kind == 1 ? idx2[r] : idx[r]) >> 2;
    }
    u = zero ? 0u : u;
    uint64_t lw = 0; // tq2t's level word: bit j = level of value j
    if constexpr (bits == 2) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            lw |= (uint64_t) ((__ballot_sync(0xffffffffu, lev[r] & 1u) >> (16 * half)) & 0xffffu) << (16 * r);
        }
    }
    if (!valid) {
        return;
    }
    if (l == 0) {
        y->d = bad ? (tq_half) TQ_HALF_NAN : kind == 0 ? (tq_half) 0 : tq_store_scale(kind == 2 ? TQ_FP16_MAX : d2);
    }
    if (l < 8) {
        y->qu[l] = (uint8_t) (u >> (8 * l));
        if constexpr (bits == 2) {
            y->ql[l] = (uint8_t) (lw >> (8 * l));
        }
    }
    if constexpr (bits == 3) {
        y->qs[l] = (uint8_t) (lev[0] | lev[1] << 2 | lev[2] << 4 | lev[3] << 6);
    }
}

// tq2, tq3, tq4 (the Lloyd-Max codes) on 16 lanes
template <typename block_t>
static __device__ __forceinline__ void tq_cuda_quantize_lm16(const float * __restrict__ x, block_t * __restrict__ y, const bool valid) {
    constexpr int bits = tq_cuda_traits<block_t>::bits;
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

// Quantize the 64 values at x into *y with the 16 lanes of a half warp (lane l = threadIdx.x % 16
// reads x[l + 16 r]); tq2, tq3, tq4, tq2t, tq3t (the QJL types use the single-thread quantizer).
template <typename block_t>
static __device__ __forceinline__ void tq_cuda_quantize_block16(const float * __restrict__ x, block_t * __restrict__ y, const bool valid) {
    if constexpr (std::is_same_v<block_t, block_tq2t> || std::is_same_v<block_t, block_tq3t>) {
        tq_cuda_quantize_tcq16<block_t>(x, y, valid);
    } else {
        static_assert(std::is_same_v<block_t, block_tq2> || std::is_same_v<block_t, block_tq3> || std::is_same_v<block_t, block_tq4>,
            "tq_cuda_quantize_block16: tq2, tq3, tq4, tq2t or tq3t");
        tq_cuda_quantize_lm16<block_t>(x, y, valid);
    }
}
