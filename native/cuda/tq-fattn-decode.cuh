// tq-fattn-decode.cuh: flash-attention decode (1..8 query tokens) over TurboQuant K/V caches.
//
// Why a kernel of its own: llama.cpp's vec kernel runs one thread block per QUERY head, so with
// grouped-query attention every K/V value is fetched and decoded G times, and its per-value readers
// gather from 2-byte-aligned blocks. Here one block serves all G query heads of a KV head (and all
// query tokens): a value is decoded once and used for G * n_tokens dot products / accumulations.
//
// Work split. Grid (row chunks x KV heads, key splits, sequences). The "rows" of a KV head are its
// G * n_tokens (query head, token) pairs, RB (1, 2 or 4) per block; more rows take more chunks,
// which re-read the same codes (adjacent in the grid, so mostly from L2) rather than holding more
// than 4 rows of query and accumulator in registers. A short cache, whose blocks would leave most
// of the GPU idle, takes fewer rows per block in more blocks (tq_fa_rows_per_block). Key splits
// fill the GPU in whole waves at the kernel's occupancy (tq_fa_tiles_per_split); each split writes
// its running max, sum and unnormalized output, and a small second kernel combines them (a single
// split writes the output directly). A tile whose keys no row of the block sees (found on the mask's
// raw fp16 -inf a tile ahead: the cells past the used ones, which llama.cpp pads to 256, a sliding
// window's before it) is neither copied nor scored by the one-row blocks that short caches get.
//
// Inside a block (128 threads), per tile of 16384/D keys:
//  * K phase: a thread takes one 64-value block of two keys (D/64 threads per key, their partial
//    scores added with xor-shuffles); the query rows sit in shared memory, pre-scaled by
//    scale * log2 e so that exp2 serves as exp, and one 16-byte load of a row's four values serves
//    both keys. So a K value is decoded once and used for the RB rows.
//  * Softmax: one running max per row for the whole block (warp shuffles, then shared memory), so
//    the V accumulators of all threads share it and need rescaling only when it moves, which is a
//    uniform branch and rare after the first tiles.
//  * V phase: a thread owns 16 output dims, the values whose codes sit in one 32-bit word of the
//    2-bit plane (64c + 4i + 16s + b, s and b = 0..3; tq3 adds one word of its 1-bit plane, tq4
//    takes two words of its 4-bit plane, which hold the same values), for every row, over 8 of the
//    tile's keys. The accumulators are summed across threads once, at the end.
//
// Memory. The tile's K and V codes go to shared memory with cp.async in 16-byte units (8 for head
// size 64), K of the next tile loading during this tile's V phase and V of the next during its K
// phase. A key row of one head is D/64 blocks of 18/26/34 bytes, so rows are only 2-byte aligned in
// general: each row (or, when the rows of a head are adjacent, the whole tile) is copied as the
// aligned window around it; the few bytes of neighbouring rows that come along are never read as
// data. A window that would cross the first or last byte of the tensor is copied two bytes at a
// time instead, so nothing outside K/V is read. Plane words are then read from shared memory as two
// aligned words and a funnel shift, the centroid of a code from a 4/8/16-entry table in shared
// memory (all lanes hit distinct banks or share a word: one conflict-free access per value). The
// mask goes through registers a tile ahead.
//
// Cost (H200, D 128, G 4, 32K keys, tq3): 48 us, 567 GB/s of codes. It is bound by latency at low
// occupancy, not by bandwidth or by how many instructions it issues: ncu finds 1.94 active warps
// per scheduler (2 blocks of ~190 registers per SM), 0.88 of them eligible, an instruction every
// 1.7 cycles. Fewer instructions did not help: both products on the tensor cores (f16 mma, the
// centroids looked up by byte permutes; git log --grep "tensor cores") issue fewer but chain them
// longer, and measured 54 us; with tf32 split in three for float accuracy, no faster either. (These
// figures are of the harness as built before native/CMakeLists.txt named sm_90 in time: compute_75
// PTX, whose tile copies take the synchronous fallback below, not cp.async.)
//
// The raw launcher (tq_fa_decode_launch) takes plain pointers, byte strides and a stream, so
// native/tests/tq_cuda_fattn_test.cu runs it without ggml; fattn.cu defines TQ_FA_DECODE_GGML
// before including this header to get the ggml entry tq_cuda_flash_attn_ext_decode.
#pragma once

#include "tq-common.cuh"

#include <cuda_runtime.h>

#include <float.h>
#include <stddef.h>
#include <stdint.h>

#define TQ_FA_NT  128 // threads per block
#define TQ_FA_VPT 16  // values of a key per thread
#define TQ_FA_LOG2E 1.4426950408889634f
#define TQ_FA_HALF_NINF 0xfc00u // -inf as fp16 bits

// ---- the block layouts as the kernel sees them -------------------------------------------------

// bits per code (the size of the centroid table: 2^bits), whether the code is trellis-coded, and the
// byte offset of a thread's second plane word (values 4i + 16s .. +3)
template <typename block_t> struct tq_fa_block;
template <> struct tq_fa_block<block_tq2> {
    static constexpr int bits = 2; // one word: qs[4i..]
    static constexpr bool tcq = false;
    static __device__ __forceinline__ int w1_off(int) { return 0; }
};
template <> struct tq_fa_block<block_tq3> {
    static constexpr int bits = 3; // the 1-bit plane word qh[4 (i & 1)..]
    static constexpr bool tcq = false;
    static __device__ __forceinline__ int w1_off(int i) { return (int) offsetof(block_tq3, qh) + 4 * (i & 1); }
};
template <> struct tq_fa_block<block_tq4> {
    static constexpr int bits = 4; // values 16 + 4i.. and 48 + 4i..: qs[16 + 4i..]
    static constexpr bool tcq = false;
    static __device__ __forceinline__ int w1_off(int i) { return (int) offsetof(block_tq4, qs) + 16 + 4 * i; }
};
// tq3t: a value's code indexes the 4-bit codebook (4 * level + subset, tq-math.h); w0 is the 2-bit
// level plane word qs[4i..] as for tq3, w1 the subset bits of the thread's values, from the branch word
template <> struct tq_fa_block<block_tq3t> {
    static constexpr int bits = 4;
    static constexpr bool tcq = true;
    static __device__ __forceinline__ int w1_off(int) { return (int) offsetof(block_tq3t, qu); }
};

// bit b of a nibble to bit 0 of byte b
static __device__ __forceinline__ uint32_t tq_fa_spread4(const uint32_t n) {
    return (n * 0x00204081u) & 0x01010101u;
}

// 4 * the codes of values j..j+3, j = 4i + 16s, from the thread's words w0 = qs[4i..] and w1
// (above; for tq3 already shifted right by i >> 1, the part of j >> 3 that does not depend on s)
template <typename block_t, int s>
static __device__ __forceinline__ uint32_t tq_fa_codes4x4(const uint32_t w0, const uint32_t w1) {
    if constexpr (tq_fa_block<block_t>::tcq) {
        // byte b: 4 * (4 * level + 2 * z1 + z0); w1 byte s holds the z1 bits of values 4i + 16s + b in
        // its low nibble and the z0 bits in its high nibble
        const uint32_t lvl = tq_cuda_shr_signed(w0, 2 * s - 4) & 0x30303030u;
        return lvl | tq_fa_spread4((w1 >> (8 * s)) & 0xfu) << 3 | tq_fa_spread4((w1 >> (8 * s + 4)) & 0xfu) << 2;
    } else if constexpr (tq_fa_block<block_t>::bits == 2) {
        return tq_cuda_codes4x4_w2(w0, s);
    } else if constexpr (tq_fa_block<block_t>::bits == 3) {
        return tq_cuda_codes4x4_w3(w0, w1 >> (2 * s), s);
    } else {
        return tq_cuda_codes4x4_w4((s & 1) ? w1 : w0, s >> 1);
    }
}

// One key row of one head in shared memory.
template <typename block_t, int D>
struct tq_fa_row {
    static constexpr int BS  = (int) sizeof(block_t);
    static constexpr int ROW = (D / TQ_BLOCK) * BS;
    static constexpr int U   = ROW >= 48 ? 16 : 8;                   // copy unit (bytes)
    static constexpr int SR  = (ROW + 2 * U - 4 + U - 1) / U * U;    // slot: the widest aligned window
    static constexpr int NUW = SR / U;                               // units per slot
};

// ---- kernel arguments -------------------------------------------------------------------------

struct tq_fa_decode_kparams {
    const char * Q;
    const char * K;
    const char * V;
    const char * mask;     // f16, NULL: none
    float      * dst;
    float      * part;     // [row][split][D] unnormalized outputs, n_splits > 1
    float2     * part_ml;  // [row][split] (max, sum) in the log2 domain
    int64_t nbq1, nbq2, nbq3;
    int64_t nbk1, nbk2, nbk3;
    int64_t nbv1, nbv2, nbv3;
    int64_t nbm1, nbm3;
    int     nem3;
    uintptr_t k_lo, k_hi;  // the bytes of K that may be read: [k_lo, k_hi)
    uintptr_t v_lo, v_hi;
    int     k_contig;      // nbk1 == row bytes: a tile is one span
    int     v_contig;
    int     n_tokens, G, n_q_heads, n_kv;
    int     n_rows;        // G * n_tokens rows per KV head
    int     n_chunks;      // ceil(n_rows / RB)
    int     n_splits;
    int     tiles_per_split;
    float   qscale;        // softmax scale * log2(e)
};

// ---- copies -----------------------------------------------------------------------------------

template <int U>
static __device__ __forceinline__ void tq_fa_cp_async(void * s, const char * g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t sa = (uint32_t) __cvta_generic_to_shared(s);
    const size_t   ga = __cvta_generic_to_global(g);
    if constexpr (U == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(sa), "l"(ga) : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" :: "r"(sa), "l"(ga), "n"(U) : "memory");
    }
#else
    if constexpr (U == 16) {
        *(uint4 *) s = *(const uint4 *) g;
    } else {
        *(uint2 *) s = *(const uint2 *) g;
    }
#endif
}

static __device__ __forceinline__ void tq_fa_cp_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
static __device__ __forceinline__ void tq_fa_cp_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

// One aligned unit at global address g into shared s, for the windows at the two ends of the tensor:
// only the bytes inside [lo, hi), two at a time, the others left unwritten. Out of line: rare, and
// the hot loop stays small enough for the instruction cache.
template <int U>
static __device__ __noinline__ void tq_fa_copy_unit_checked(uint8_t * s, const uintptr_t g, const uintptr_t lo, const uintptr_t hi) {
    for (int h = 0; h < U; h += 2) {
        if (g + h >= lo && g + h + 2 <= hi) {
            *(uint16_t *) (s + h) = *(const uint16_t *) (g + h);
        }
    }
}

// nk key rows (row r at g0 + r*nb1) into a tile buffer. Contiguous rows: one window over the span,
// row r's bytes at (g0 % U) + r*ROW. Else: row r's window in slot r, its bytes at r*SR + (g_r % U),
// copied by the NT/TK threads of row r (or one thread copying TK/NT rows). The bounds are checked once per window; only a window at an
// end of the tensor takes the checked copy.
template <typename block_t, int D, int TK>
static __device__ __forceinline__ void tq_fa_stage(uint8_t * buf, const char * g0, const int64_t nb1, const int nk,
                                                    const bool contig, const uintptr_t lo, const uintptr_t hi) {
    using L = tq_fa_row<block_t, D>;
    constexpr int U = L::U;
    constexpr uintptr_t M = U - 1;
    if (contig) {
        const uintptr_t a  = (uintptr_t) g0;
        const uintptr_t w0 = a & ~M;
        const uintptr_t we = (a + (uintptr_t) nk * L::ROW + M) & ~M;
        const int nu = (int) ((we - w0) / U);
        const bool safe = w0 >= lo && we <= hi;
        for (int x = threadIdx.x; x < nu; x += TQ_FA_NT) {
            if (safe) {
                tq_fa_cp_async<U>(buf + x * U, (const char *) (w0 + (uintptr_t) x * U));
            } else {
                tq_fa_copy_unit_checked<U>(buf + x * U, w0 + (uintptr_t) x * U, lo, hi);
            }
        }
    } else {
        constexpr int TPR = TK >= TQ_FA_NT ? 1 : TQ_FA_NT / TK;   // threads per row
        constexpr int RPT = TK >= TQ_FA_NT ? TK / TQ_FA_NT : 1;   // rows per thread
        constexpr int UPT = (L::NUW + TPR - 1) / TPR;             // units per thread and row, at most
        static_assert(TPR * TK == TQ_FA_NT * RPT, "threads and rows tile each other");
        const int part = threadIdx.x % TPR;
#pragma unroll
        for (int j = 0; j < RPT; ++j) {
            const int r = threadIdx.x / TPR + j * (TQ_FA_NT / TPR);
            if (r >= nk) {
                continue;
            }
            const uintptr_t a  = (uintptr_t) (g0 + r * nb1);
            const uintptr_t w0 = a & ~M;
            const int nu = (int) (((a & M) + L::ROW + M) / U);
            const bool safe = w0 >= lo && w0 + (uintptr_t) nu * U <= hi;
            uint8_t * s = buf + r * L::SR;
#pragma unroll
            for (int k = 0; k < UPT; ++k) {
                const int u = part + k * TPR;
                if (u < nu) {
                    if (safe) {
                        tq_fa_cp_async<U>(s + u * U, (const char *) (w0 + (uintptr_t) u * U));
                    } else {
                        tq_fa_copy_unit_checked<U>(s + u * U, w0 + (uintptr_t) u * U, lo, hi);
                    }
                }
            }
        }
    }
}

// 32-bit word at an even byte offset x of shared memory: two aligned words and a funnel shift
static __device__ __forceinline__ uint32_t tq_fa_lds_u32(const uint8_t * base, const int x) {
    const uint32_t * w = (const uint32_t *) (base + (x & ~3));
    return __funnelshift_r(w[0], w[1], (x & 2) * 8);
}

static __device__ __forceinline__ float tq_fa_centroid(const float * tab, const uint32_t cw4, const int b) {
    // cw4 holds 4 * code in each byte: the byte offset into the table
    return *(const float *) ((const uint8_t *) tab + __byte_perm(cw4, 0u, 0x4440u + b));
}

// ---- the kernel -------------------------------------------------------------------------------

// the words that hold the codes of values 4i + 16s .. +3 of the block at byte offset xb, for all s:
// w0 = qs[4i..] and w1 = tq3: qh[4 (i & 1)..] >> (i >> 1) (the part of its shift fixed by i), tq4: qs[16 + 4i..]
template <typename block_t>
static __device__ __forceinline__ void tq_fa_words(const uint8_t * base, const int xb, const int i, uint32_t & w0, uint32_t & w1) {
    w0 = tq_fa_lds_u32(base, xb + (int) offsetof(block_t, qs) + 4 * i);
    if constexpr (tq_fa_block<block_t>::tcq) {
        // the subsets of values 4i + 16s + b (tq_tcq_subset_words)
        const int xu = xb + tq_fa_block<block_t>::w1_off(i);
        const uint64_t u = (uint64_t) tq_fa_lds_u32(base, xu) | (uint64_t) tq_fa_lds_u32(base, xu + 4) << 32;
        uint64_t z1, z0;
        tq_tcq_subset_words(u, &z1, &z0);
        z1 >>= 4 * i;
        z0 >>= 4 * i;
        w1 = 0u;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            w1 |= (uint32_t) ((z1 >> (16 * s)) & 0xfu) << (8 * s) | (uint32_t) ((z0 >> (16 * s)) & 0xfu) << (8 * s + 4);
        }
    } else if constexpr (tq_fa_block<block_t>::bits == 3) {
        w1 = tq_fa_lds_u32(base, xb + tq_fa_block<block_t>::w1_off(i)) >> (i >> 1);
    } else if constexpr (tq_fa_block<block_t>::bits == 4) {
        w1 = tq_fa_lds_u32(base, xb + tq_fa_block<block_t>::w1_off(i));
    } else {
        w1 = 0u;
    }
}

// part[r] += q[r][4i + 16s .. +3] . centroids, for two keys a and b sharing the query loads
// (sqi: the query at 4i of this block, rows qstride apart)
template <typename block_t, int RB, int s>
static __device__ __forceinline__ void tq_fa_dot2(const float * tab, const float * sqi, const int qstride,
                                                  const uint32_t a0, const uint32_t a1, const uint32_t b0, const uint32_t b1,
                                                  float (&pa)[RB], float (&pb)[RB]) {
    float4 q4[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        q4[r] = *(const float4 *) (sqi + r * qstride + 16 * s);
    }
    const uint32_t ca = tq_fa_codes4x4<block_t, s>(a0, a1);
    const uint32_t cb = tq_fa_codes4x4<block_t, s>(b0, b1);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        const float va = tq_fa_centroid(tab, ca, b);
        const float vb = tq_fa_centroid(tab, cb, b);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const float qv = b == 0 ? q4[r].x : b == 1 ? q4[r].y : b == 2 ? q4[r].z : q4[r].w;
            pa[r] = fmaf(qv, va, pa[r]);
            pb[r] = fmaf(qv, vb, pb[r]);
        }
    }
}

// acc[r][4s..4s+3] += pd[r] * centroids of values 4i + 16s .. +3 (i: the thread's word, runtime)
template <typename block_t, int RB, int s>
static __device__ __forceinline__ void tq_fa_axpy16(const float * tab, const uint32_t w0, const uint32_t w1,
                                                    const float (&pd)[RB], float (&acc)[RB][TQ_FA_VPT]) {
    const uint32_t cw4 = tq_fa_codes4x4<block_t, s>(w0, w1);
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        const float cv = tq_fa_centroid(tab, cw4, b);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            acc[r][4 * s + b] = fmaf(pd[r], cv, acc[r][4 * s + b]);
        }
    }
}

template <int RB>
static __device__ __forceinline__ void tq_fa_ld_rows(const float * src, float (&v)[RB]) {
    if constexpr (RB == 4) {
        const float4 t = *(const float4 *) src;
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    } else if constexpr (RB == 2) {
        const float2 t = *(const float2 *) src;
        v[0] = t.x; v[1] = t.y;
    } else {
        v[0] = src[0];
    }
}

template <int RB>
static __device__ __forceinline__ void tq_fa_st_rows(float * dst, const float (&v)[RB]) {
    if constexpr (RB == 4) {
        *(float4 *) dst = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (RB == 2) {
        *(float2 *) dst = make_float2(v[0], v[1]);
    } else {
        dst[0] = v[0];
    }
}

// (128, 1): ptxas then keeps ~190 registers and 2 blocks per SM, 7 % faster on an H200 than the
// 168 registers and 3 blocks it picks from (128) alone (measured at D 128, G 4, 32K keys)
template <typename KB, typename VB, int D, int RB>
static __global__ void __launch_bounds__(TQ_FA_NT, 1)
tq_fa_decode_kernel(const tq_fa_decode_kparams p) {
    static_assert(D % TQ_BLOCK == 0 && D >= 64 && D <= 256, "head size 64, 128 or 256");
    static_assert(RB == 1 || RB == 2 || RB == 4, "1, 2 or 4 rows per block");
    constexpr int NB   = D / TQ_BLOCK;            // 64-value blocks per key row
    constexpr int TK   = 2 * TQ_FA_NT / NB;       // keys per tile: a K thread takes one block of two keys
    constexpr int NDG  = D / TQ_FA_VPT;           // V: groups of 16 dims
    constexpr int NKG  = TQ_FA_NT / NDG;          // V: key groups
    constexpr int VKPT = TK / NKG;                // V: keys per thread per tile
    constexpr int NW   = TQ_FA_NT / 32;
    constexpr int QS   = TQ_BLOCK + 4;            // query floats per block: the blocks' quads in distinct banks
    constexpr int KBITS = tq_fa_block<KB>::bits;
    constexpr int VBITS = tq_fa_block<VB>::bits;
    using LK = tq_fa_row<KB, D>;
    using LV = tq_fa_row<VB, D>;
    constexpr int KBUF = TK * LK::SR;
    constexpr int VBUF = TK * LV::SR;
    constexpr int RED  = NW * RB * D * (int) sizeof(float);
    // +16: a plane word at the end of the last row is read as two aligned words
    constexpr int SMEM = (KBUF + VBUF > RED ? KBUF + VBUF : RED) + 16;
    constexpr int MPT  = (RB * TK + TQ_FA_NT - 1) / TQ_FA_NT; // mask values per thread per tile
    static_assert(32 % NB == 0 && 32 % NDG == 0, "the threads of a key, and of a dim group's keys, lie within a warp");
    static_assert(NKG * VKPT == TK, "V threads cover the tile");

    __shared__ __align__(16) uint8_t sm[SMEM];      // K and V tiles, then the cross-warp reduction
    __shared__ __align__(16) float sq[RB * NB * QS]; // query rows, scaled by scale * log2 e
    __shared__ __align__(16) float smask[TK * RB];   // [key][row], log2 domain, -inf past the keys
    __shared__ __align__(16) float sp[TK * RB];      // [key][row] probabilities of the tile
    __shared__ float ktab[16];
    __shared__ float vtab[16];
    __shared__ float wmax[NW][RB];
    __shared__ float red_l[NW][RB];
    __shared__ float red_M[RB];

    tq_cuda_pdl_trigger();
    const int tid  = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    // K: block kc of keys ka and ka + TK/2 of the tile
    const int kc = tid % NB;
    const int ka = tid / NB;
    // V: 16 dims (block vc, 2-bit plane word vi) of keys vkg + NKG*j
    const int vdg = tid % NDG;
    const int vkg = tid / NDG;
    const int vc  = vdg >> 2;
    const int vi  = vdg & 3;

    const int chunk = blockIdx.x % p.n_chunks;
    const int kvh   = blockIdx.x / p.n_chunks;
    const int split = blockIdx.y;
    const int seq   = blockIdx.z;
    const int r0    = chunk * RB;

    if (tid < 16) {
        ktab[tid] = tid < (1 << KBITS) ? tq_cuda_centroid<KBITS>(tid) : 0.0f;
        vtab[tid] = tid < (1 << VBITS) ? tq_cuda_centroid<VBITS>(tid) : 0.0f;
    }

    const int kbeg   = split * p.tiles_per_split * TK;
    const int kend   = min(p.n_kv, kbeg + p.tiles_per_split * TK);
    const int ntiles = kend > kbeg ? (kend - kbeg + TK - 1) / TK : 0;

    const char * Kh = p.K + seq * p.nbk3 + kvh * p.nbk2;
    const char * Vh = p.V + seq * p.nbv3 + kvh * p.nbv2;

    tq_cuda_pdl_wait(); // the query, and this token's K and V, come from the kernels before
    for (int e = tid; e < RB * D; e += TQ_FA_NT) {
        const int r = e / D;
        const int d = e % D;
        const int row = r0 + r;
        float v = 0.0f;
        if (row < p.n_rows) {
            const int tok = row / p.G;
            const int head = kvh * p.G + (row - tok * p.G);
            v = ((const float *) (p.Q + seq * p.nbq3 + head * p.nbq2 + tok * p.nbq1))[d] * p.qscale;
        }
        sq[(r * NB + d / TQ_BLOCK) * QS + d % TQ_BLOCK] = v;
    }

    // mask elements e = tid + 128 n of a tile: key e / RB, row e % RB (rows of one token repeat it)
    const uint16_t * mptr[MPT];
    uint32_t mraw[MPT];
#pragma unroll
    for (int n = 0; n < MPT; ++n) {
        const int e = tid + TQ_FA_NT * n;
        const int row = r0 + e % RB;
        mptr[n] = nullptr;
        mraw[n] = TQ_FA_HALF_NINF;
        if (p.mask && e < RB * TK && row < p.n_rows) {
            mptr[n] = (const uint16_t *) (p.mask + (seq % p.nem3) * p.nbm3 + (row / p.G) * p.nbm1) + e / RB;
        }
    }
    // raw fp16 -inf where a key is past the split or a row is past the rows (both read as -inf)
    auto mask_load = [&](const int k0) {
#pragma unroll
        for (int n = 0; n < MPT; ++n) {
            const int e = tid + TQ_FA_NT * n;
            mraw[n] = mptr[n] && k0 + e / RB < kend ? mptr[n][k0] : TQ_FA_HALF_NINF;
        }
    };
    // whether this thread's part of the tile in mraw has a key that some row sees (a tile that no
    // row sees would have probabilities of 0 only)
    auto mask_live = [&]() {
        bool any = p.mask == nullptr;
#pragma unroll
        for (int n = 0; n < MPT; ++n) {
            any |= mraw[n] != TQ_FA_HALF_NINF;
        }
        return any;
    };
    auto mask_store = [&](const int k0) {
#pragma unroll
        for (int n = 0; n < MPT; ++n) {
            const int e = tid + TQ_FA_NT * n;
            if (e < RB * TK) {
                const float mv = p.mask ? __half2float(__ushort_as_half((unsigned short) mraw[n])) * TQ_FA_LOG2E : 0.0f;
                smask[e] = k0 + e / RB < kend ? mv : -INFINITY;
            }
        }
    };
    auto stage_k = [&](const int k0) {
        tq_fa_stage<KB, D, TK>(sm, Kh + k0 * p.nbk1, p.nbk1, min(TK, kend - k0), p.k_contig, p.k_lo, p.k_hi);
    };
    auto stage_v = [&](const int k0) {
        tq_fa_stage<VB, D, TK>(sm + KBUF, Vh + k0 * p.nbv1, p.nbv1, min(TK, kend - k0), p.v_contig, p.v_lo, p.v_hi);
    };
    auto rowoff_k = [&](const uint32_t g0, const int kl) {
        return p.k_contig ? (int) (g0 & (LK::U - 1)) + kl * LK::ROW
                          : kl * LK::SR + (int) ((g0 + (uint32_t) kl * (uint32_t) p.nbk1) & (LK::U - 1));
    };
    auto rowoff_v = [&](const uint32_t g0, const int kl) {
        return p.v_contig ? (int) (g0 & (LV::U - 1)) + kl * LV::ROW
                          : kl * LV::SR + (int) ((g0 + (uint32_t) kl * (uint32_t) p.nbv1) & (LV::U - 1));
    };

    // one running max per row for the whole block (so that every thread's V accumulators share it);
    // finite start: exp2(M_old - M_new) stays a number while every key so far was masked
    float M[RB];
    float l[RB];                  // K threads of block 0: sums of their keys' probabilities
    float acc[RB][TQ_FA_VPT];     // V threads: unnormalized outputs of their 16 dims over their keys
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        M[r] = -FLT_MAX / 2;
        l[r] = 0.0f;
#pragma unroll
        for (int v = 0; v < TQ_FA_VPT; ++v) {
            acc[r][v] = 0.0f;
        }
    }

    // pipeline: the K tile of t+1 loads during V(t), the V tile of t+1 during K(t+1); live: whether
    // any row sees a key of tile t (the same in every thread). Only the one-row blocks skip dead
    // tiles: the plan gives short caches one row per block (tq_fa_rows_per_block), and the check cost
    // the 4-row blocks 4-9 % over long caches (204 registers against 196; H200, harness, 4K-32K keys)
    constexpr bool SKIP = RB == 1;
    bool live = false;
    if (ntiles > 0) {
        mask_load(kbeg);
        live = SKIP ? __syncthreads_or(mask_live()) : true;
        mask_store(kbeg);
        if (ntiles > 1) {
            mask_load(kbeg + TK);
        }
        if (live) {
            stage_k(kbeg);
        }
    }
    tq_fa_cp_commit();
    if (live) {
        stage_v(kbeg);
    }
    tq_fa_cp_commit();

    for (int it = 0; it < ntiles; ++it) {
        const int k0 = kbeg + it * TK;
        const int nk = min(TK, kend - k0);

        tq_fa_cp_wait<1>();   // K(t) is in (V(t) may not be)
        __syncthreads();

        // ---- K: scores of two keys for every row (the NB threads of a key each do one block) ----
        float sa[RB];
        float sb[RB];
        const bool run = !SKIP || live; // the tile is scored and read
        if (run) {
            const uint32_t kg0 = (uint32_t) (uintptr_t) (Kh + k0 * p.nbk1);
            const int kla = ka;
            const int klb = ka + TK / 2;
            const int xa = rowoff_k(kg0, kla) + kc * LK::BS;
            const int xb = rowoff_k(kg0, klb) + kc * LK::BS;
            const float da = tq_cuda_half(*(const uint16_t *) (sm + xa));
            const float db = tq_cuda_half(*(const uint16_t *) (sm + xb));
            float pa[RB], pb[RB];
#pragma unroll
            for (int r = 0; r < RB; ++r) {
                pa[r] = 0.0f;
                pb[r] = 0.0f;
            }
            // a loop, not unrolled: the unrolled body overflows the instruction cache
#pragma unroll 1
            for (int i = 0; i < 4; ++i) {
                uint32_t a0, a1, b0, b1;
                tq_fa_words<KB>(sm, xa, i, a0, a1);
                tq_fa_words<KB>(sm, xb, i, b0, b1);
                const float * sqi = sq + kc * QS + 4 * i;
                tq_fa_dot2<KB, RB, 0>(ktab, sqi, NB * QS, a0, a1, b0, b1, pa, pb);
                tq_fa_dot2<KB, RB, 1>(ktab, sqi, NB * QS, a0, a1, b0, b1, pa, pb);
                tq_fa_dot2<KB, RB, 2>(ktab, sqi, NB * QS, a0, a1, b0, b1, pa, pb);
                tq_fa_dot2<KB, RB, 3>(ktab, sqi, NB * QS, a0, a1, b0, b1, pa, pb);
            }

            float ma[RB], mb[RB];
            tq_fa_ld_rows<RB>(smask + kla * RB, ma);
            tq_fa_ld_rows<RB>(smask + klb * RB, mb);
#pragma unroll
            for (int r = 0; r < RB; ++r) {
                pa[r] *= da;
                pb[r] *= db;
#pragma unroll
                for (int off = 1; off < NB; off <<= 1) {
                    pa[r] += __shfl_xor_sync(0xffffffffu, pa[r], off);
                    pb[r] += __shfl_xor_sync(0xffffffffu, pb[r], off);
                }
                // select, not add: rows past the tile hold stale codes that may decode to NaN
                sa[r] = kla < nk ? pa[r] + ma[r] : -INFINITY;
                sb[r] = klb < nk ? pb[r] + mb[r] : -INFINITY;
            }
        }

        // ---- the tile's max per row over the block ----
        if (run) {
#pragma unroll
            for (int r = 0; r < RB; ++r) {
                float mx = fmaxf(sa[r], sb[r]);
#pragma unroll
                for (int off = NB; off < 32; off <<= 1) {
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
                }
                if (lane == 0) {
                    wmax[warp][r] = mx;
                }
            }
        }
        // K tile read, warp maxima written; the mask of tile t+1 is in mraw
        bool live_next = it + 1 < ntiles;
        if constexpr (SKIP) {
            live_next = __syncthreads_or(live_next && mask_live());
        } else {
            __syncthreads();
        }

        if (live_next) {
            stage_k(k0 + TK);
        }
        tq_fa_cp_commit();

        bool moved = false;
        float f[RB];
        if (run) {
#pragma unroll
            for (int r = 0; r < RB; ++r) {
                float mn = M[r];
#pragma unroll
                for (int w = 0; w < NW; ++w) {
                    mn = fmaxf(mn, wmax[w][r]);
                }
                moved |= mn > M[r];
                f[r] = exp2f(M[r] - mn);
                M[r] = mn;
                sa[r] = exp2f(sa[r] - mn);
                sb[r] = exp2f(sb[r] - mn);
            }
            if (kc == 0) {
                tq_fa_st_rows<RB>(sp + ka * RB, sa);
                tq_fa_st_rows<RB>(sp + (ka + TK / 2) * RB, sb);
#pragma unroll
                for (int r = 0; r < RB; ++r) {
                    l[r] = l[r] * f[r] + sa[r] + sb[r];
                }
            }
        }
        // the mask of tile t+1 (its last reader, K(t), is done), then the loads for t+2
        if (it + 1 < ntiles) {
            mask_store(k0 + TK);
            if (it + 2 < ntiles) {
                mask_load(k0 + 2 * TK);
            }
        }

        tq_fa_cp_wait<1>();   // V(t) is in (K(t+1) may not be)
        __syncthreads();       // probabilities and the V tile visible

        // ---- V: acc += p * v over this thread's keys of the tile ----
        if (run && moved) {
            // every thread computed the same maxima: a uniform branch, taken rarely after the first tiles
#pragma unroll
            for (int r = 0; r < RB; ++r) {
#pragma unroll
                for (int v = 0; v < TQ_FA_VPT; ++v) {
                    acc[r][v] *= f[r];
                }
            }
        }
        if (run) {
            const uint32_t vg0 = (uint32_t) (uintptr_t) (Vh + k0 * p.nbv1);
            const uint8_t * Vs = sm + KBUF;
#pragma unroll 1
            for (int j = 0; j < VKPT; ++j) {
                const int kl = vkg + NKG * j;
                const int xb = rowoff_v(vg0, kl) + vc * LV::BS;
                const float d = tq_cuda_half(*(const uint16_t *) (Vs + xb));
                uint32_t w0, w1;
                tq_fa_words<VB>(Vs, xb, vi, w0, w1);
                float pv[RB];
                tq_fa_ld_rows<RB>(sp + kl * RB, pv);
                float pd[RB];
#pragma unroll
                for (int r = 0; r < RB; ++r) {
                    // select, not multiply: p = 0 times a stale scale of inf or NaN is NaN
                    pd[r] = kl < nk ? pv[r] * d : 0.0f;
                }
                tq_fa_axpy16<VB, RB, 0>(vtab, w0, w1, pd, acc);
                tq_fa_axpy16<VB, RB, 1>(vtab, w0, w1, pd, acc);
                tq_fa_axpy16<VB, RB, 2>(vtab, w0, w1, pd, acc);
                tq_fa_axpy16<VB, RB, 3>(vtab, w0, w1, pd, acc);
            }
        }
        __syncthreads();   // V tile and probabilities read

        if (live_next) {
            stage_v(k0 + TK);
        }
        tq_fa_cp_commit();
        live = live_next;
    }

    // ---- sums over the block: all threads share the maxima M, so no rescaling is left ----
    tq_fa_cp_wait<0>();
    __syncthreads();

#pragma unroll
    for (int r = 0; r < RB; ++r) {
        float L = l[r];
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            L += __shfl_xor_sync(0xffffffffu, L, off);
        }
        if (lane == 0) {
            red_l[warp][r] = L;
        }
        if (tid == 0) {
            red_M[r] = M[r];
        }
    }
    // the key groups of a warp hold the same dims in lanes vdg, vdg + NDG, ...
#pragma unroll
    for (int off = NDG; off < 32; off <<= 1) {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
#pragma unroll
            for (int v = 0; v < TQ_FA_VPT; ++v) {
                acc[r][v] += __shfl_xor_sync(0xffffffffu, acc[r][v], off);
            }
        }
    }
    float * red = (float *) sm; // [NW][RB][D]
    if (lane < NDG) {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
#pragma unroll
            for (int s = 0; s < 4; ++s) {
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    red[(warp * RB + r) * D + 64 * vc + 4 * vi + 16 * s + b] = acc[r][4 * s + b];
                }
            }
        }
    }
    __syncthreads();

    for (int e = tid; e < RB * D; e += TQ_FA_NT) {
        const int r   = e / D;
        const int dd  = e % D;
        const int row = r0 + r;
        if (row >= p.n_rows) {
            continue;
        }
        float a = 0.0f;
        float L = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            a += red[(w * RB + r) * D + dd];
            L += red_l[w][r];
        }
        const int tok  = row / p.G;
        const int head = kvh * p.G + (row - tok * p.G);
        const int64_t rg = ((int64_t) seq * p.n_tokens + tok) * p.n_q_heads + head; // dst row: [D, heads, tokens, seqs]
        if (p.n_splits == 1) {
            // every key masked: 0, as the CPU backend writes
            p.dst[rg * D + dd] = L > 0.0f ? a / L : 0.0f;
        } else {
            p.part[(rg * p.n_splits + split) * D + dd] = a;
            if (dd == 0) {
                p.part_ml[rg * p.n_splits + split] = make_float2(red_M[r], L);
            }
        }
    }
}

// dst row = sum over splits of 2^(m_s - M) * part_s / sum of 2^(m_s - M) * l_s
template <int D>
static __global__ void __launch_bounds__(D)
tq_fa_decode_combine(const float * __restrict__ part, const float2 * __restrict__ ml, float * __restrict__ dst, const int n_splits) {
    const int64_t row = blockIdx.x;
    const int dd = threadIdx.x;
    part += row * n_splits * D;
    ml   += row * n_splits;

    float M = -FLT_MAX;
    for (int s = 0; s < n_splits; ++s) {
        M = fmaxf(M, ml[s].x);
    }
    float a = 0.0f;
    float L = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
        const float2 v = ml[s];
        const float f = exp2f(v.x - M);
        a += f * part[s * D + dd];
        L += f * v.y;
    }
    dst[row * D + dd] = L > 0.0f ? a / L : 0.0f;
}

// ---- host side --------------------------------------------------------------------------------

// The raw problem: ggml's FLASH_ATTN_EXT layouts with byte strides.
//   Q    f32 [D, n_tokens, n_q_heads, n_seq]           (nbq1: token, nbq2: head, nbq3: sequence)
//   K, V tq  [D, n_kv, n_kv_heads, n_seq] rows of D/64 blocks, block 0 at the row's address
//   mask f16 [>= n_kv, >= n_tokens, 1, nem3] or NULL, sequence s reads slice s % nem3
//   dst  f32 [D, n_q_heads, n_tokens, n_seq], contiguous
struct tq_fa_decode_args {
    int k_bits, v_bits;  // 2, 3 or 4 (tq2, tq3, tq4)
    int k_tcq, v_tcq;    // 1: trellis-coded (tq3t, with bits 3)
    int D, n_tokens, n_q_heads, n_kv_heads, n_kv, n_seq;
    const void * Q;    int64_t nbq1, nbq2, nbq3;
    const void * K;    int64_t nbk1, nbk2, nbk3;
    const void * V;    int64_t nbv1, nbv2, nbv3;
    const void * mask; int64_t nbm1, nbm3; int nem3;
    float scale;
    float * dst;
};

typedef void (*tq_fa_kernel_t)(const tq_fa_decode_kparams);

struct tq_fa_decode_plan {
    tq_fa_kernel_t kernel;
    int RB, TK, n_chunks, n_splits, tiles_per_split, blocks_per_sm;
    size_t scratch_floats; // 0 with one split
};

struct tq_fa_kernel_info {
    tq_fa_kernel_t kernel;
    int TK;
    int blocks_per_sm;
};

template <typename KB, typename VB, int D, int RB>
static tq_fa_kernel_info tq_fa_info() {
    // occupancy once per instance: it bounds how many key splits fill the GPU
    static const int bps = []() {
        int n = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, tq_fa_decode_kernel<KB, VB, D, RB>, TQ_FA_NT, 0) != cudaSuccess || n < 1) {
            (void) cudaGetLastError();
            n = 1;
        }
        return n;
    }();
    return { tq_fa_decode_kernel<KB, VB, D, RB>, 2 * TQ_FA_NT / (D / TQ_BLOCK), bps };
}

template <typename KB, typename VB, int D>
static tq_fa_kernel_info tq_fa_info_rb(const int RB) {
    switch (RB) {
        case 1:  return tq_fa_info<KB, VB, D, 1>();
        case 2:  return tq_fa_info<KB, VB, D, 2>();
        default: return tq_fa_info<KB, VB, D, 4>();
    }
}

template <typename KB, typename VB>
static tq_fa_kernel_info tq_fa_info_d(const int D, const int RB) {
    switch (D) {
        case 64:  return tq_fa_info_rb<KB, VB,  64>(RB);
        case 128: return tq_fa_info_rb<KB, VB, 128>(RB);
        case 256: return tq_fa_info_rb<KB, VB, 256>(RB);
        default:  return { nullptr, 0, 0 };
    }
}

// the compiled K/V pairs: each type with itself, and tq4 keys with tq3, tq2 or tq3t values
static inline tq_fa_kernel_info tq_fa_info_types(const int k_bits, const int v_bits, const int k_tcq, const int v_tcq,
                                                 const int D, const int RB) {
    if (k_tcq || v_tcq) {
        if (k_tcq && v_tcq && k_bits == 3 && v_bits == 3) return tq_fa_info_d<block_tq3t, block_tq3t>(D, RB);
        if (!k_tcq && k_bits == 4 && v_bits == 3) return tq_fa_info_d<block_tq4, block_tq3t>(D, RB);
        return { nullptr, 0, 0 };
    }
    if (k_bits == 2 && v_bits == 2) return tq_fa_info_d<block_tq2, block_tq2>(D, RB);
    if (k_bits == 3 && v_bits == 3) return tq_fa_info_d<block_tq3, block_tq3>(D, RB);
    if (k_bits == 4 && v_bits == 4) return tq_fa_info_d<block_tq4, block_tq4>(D, RB);
    if (k_bits == 4 && v_bits == 3) return tq_fa_info_d<block_tq4, block_tq3>(D, RB);
    if (k_bits == 4 && v_bits == 2) return tq_fa_info_d<block_tq4, block_tq2>(D, RB);
    return { nullptr, 0, 0 };
}

static_assert(sizeof(block_tq3t) == sizeof(block_tq3), "a tq3t row is as long as a tq3 row");
static inline size_t tq_fa_block_bytes(const int bits) {
    return bits == 2 ? sizeof(block_tq2) : bits == 3 ? sizeof(block_tq3) : sizeof(block_tq4);
}

static inline bool tq_fa_decode_supported(const tq_fa_decode_args & a) {
    const bool pair = (a.k_tcq || a.v_tcq)
        ? (a.v_tcq && a.v_bits == 3 && ((a.k_tcq && a.k_bits == 3) || (!a.k_tcq && a.k_bits == 4)))
        : (a.k_bits == a.v_bits && a.k_bits >= 2 && a.k_bits <= 4) || (a.k_bits == 4 && (a.v_bits == 3 || a.v_bits == 2));
    if (!pair || !(a.D == 64 || a.D == 128 || a.D == 256)) return false;
    if (a.n_tokens < 1 || a.n_tokens > 8 || a.n_kv < 1 || a.n_seq < 1) return false;
    if (a.n_kv_heads < 1 || a.n_q_heads < a.n_kv_heads || a.n_q_heads % a.n_kv_heads != 0) return false;
    if (!a.Q || !a.K || !a.V || !a.dst) return false;
    // tq rows are made of 2-byte fields: every row must start at an even address
    if ((((uintptr_t) a.K | (uintptr_t) a.V | (uintptr_t) a.nbk1 | (uintptr_t) a.nbk2 | (uintptr_t) a.nbk3 |
          (uintptr_t) a.nbv1 | (uintptr_t) a.nbv2 | (uintptr_t) a.nbv3) & 1) != 0) return false;
    if ((((uintptr_t) a.Q | (uintptr_t) a.nbq1 | (uintptr_t) a.nbq2 | (uintptr_t) a.nbq3) & 3) != 0) return false;
    if (a.nbk1 < 0 || a.nbk2 < 0 || a.nbk3 < 0 || a.nbv1 < 0 || a.nbv2 < 0 || a.nbv3 < 0) return false;
    if (a.mask && (a.nem3 < 1 || ((((uintptr_t) a.mask | (uintptr_t) a.nbm1 | (uintptr_t) a.nbm3) & 1) != 0))) return false;
    return true;
}

// Tiles of keys per split, for ntiles tiles, base blocks per split (row chunks x KV heads x
// sequences) and slots blocks resident on the GPU at once: the split that finishes first, a block's
// time being its tiles and the kernel's the waves of blocks times that, plus one tile for the
// combine's launch when there are splits (ties to fewer splits). Splitting to fill the GPU "about
// once" gave 16 sequences of 8K keys 3 splits, 384 blocks where 264 fit, and a second wave as long as
// the first: 211.3 us against 157.7 us with the 2 splits chosen here (H200, tq3, D 128, 8 KV heads;
// native/tests/tq_cuda_fattn_test.cu). The combine's tile keeps a cache of two tiles (a decode step
// at depth 0 reads 256 keys) in one split, whose second tile, dead while fewer than 129 cells are
// used, costs the block a barrier or two.
static inline int tq_fa_tiles_per_split(const int ntiles, const int64_t base, const int64_t slots, const int combine_tiles = 1) {
    int64_t best = INT64_MAX;
    int tps_best = ntiles;
    for (int64_t want = 1; want <= ntiles; ++want) {
        const int64_t tps    = (ntiles + want - 1) / want;
        const int64_t splits = (ntiles + tps - 1) / tps;
        const int64_t cost   = (base * splits + slots - 1) / slots * tps + (splits > 1 ? combine_tiles : 0);
        if (cost < best) {
            best = cost;
            tps_best = (int) tps;
        }
        if (base * want >= 2 * slots) {
            break; // past a second wave more splits only tie
        }
    }
    return tps_best;
}

// Rows per block for n_rows rows, base blocks per row chunk (KV heads x sequences) and ntiles tiles
// of keys, with slots(RB) blocks resident on the GPU at once: 4 rows share each decoded value
// four ways, but a block's instructions run one after another, so where even one block per tile
// leaves the GPU mostly empty (a short cache: a step at depth 0 reads 256 keys, 2 tiles) fewer rows
// per block, in more blocks, finish sooner: 10.4 us against 13.5 us for 256 keys with RB 1 and 4,
// while at 4K keys RB 4 is the faster again (18.0 against 21.3 us; H200, tq3, D 128, G 4, 8 KV heads).
// The smallest RB whose blocks, one tile each, fit in one wave.
static inline int tq_fa_rows_max(const int n_rows) {
    return n_rows <= 1 ? 1 : n_rows <= 2 ? 2 : 4; // the most rows a block takes for n_rows
}

template <typename F>
static inline int tq_fa_rows_per_block(const int n_rows, const int64_t base, const int ntiles, F slots) {
    const int rb_max = tq_fa_rows_max(n_rows);
    for (int rb = 1; rb < rb_max; rb *= 2) {
        if ((int64_t) ((n_rows + rb - 1) / rb) * base * ntiles <= slots(rb)) {
            return rb;
        }
    }
    return rb_max;
}

// Rows per block (tq_fa_rows_per_block), chunks, and key splits (tq_fa_tiles_per_split).
// force_splits, force_rb: 0 = choose (the test harness sets them to reach every path); combine_tiles:
// the combine's launch counted as that many tiles (tq_fa_tiles_per_split; 0 for A/B timing only)
static inline tq_fa_decode_plan tq_fa_decode_make_plan(const tq_fa_decode_args & a, const int nsm, const int force_splits,
                                                       const int force_rb = 0, const int combine_tiles = 1) {
    tq_fa_decode_plan pl = {};
    const int G = a.n_q_heads / a.n_kv_heads;
    const int n_rows = G * a.n_tokens;
    const int64_t nsm1 = nsm > 0 ? nsm : 1;
    {
        // tiles of keys are as long for every RB (TK depends on D only)
        const tq_fa_kernel_info k4 = tq_fa_info_types(a.k_bits, a.v_bits, a.k_tcq, a.v_tcq, a.D, 4);
        if (!k4.kernel) {
            return pl;
        }
        pl.RB = tq_fa_rows_per_block(n_rows, (int64_t) a.n_kv_heads * a.n_seq, (a.n_kv + k4.TK - 1) / k4.TK, [&](const int rb) {
            return nsm1 * tq_fa_info_types(a.k_bits, a.v_bits, a.k_tcq, a.v_tcq, a.D, rb).blocks_per_sm;
        });
    }
    if (force_rb == 1 || force_rb == 2 || force_rb == 4) {
        pl.RB = force_rb;
    }
    const tq_fa_kernel_info ki = tq_fa_info_types(a.k_bits, a.v_bits, a.k_tcq, a.v_tcq, a.D, pl.RB);
    if (!ki.kernel) {
        return pl;
    }
    pl.kernel = ki.kernel;
    pl.TK = ki.TK;
    pl.blocks_per_sm = ki.blocks_per_sm;
    pl.n_chunks = (n_rows + pl.RB - 1) / pl.RB;

    const int ntiles = (a.n_kv + pl.TK - 1) / pl.TK;
    const int64_t base = (int64_t) pl.n_chunks * a.n_kv_heads * a.n_seq;
    pl.tiles_per_split = force_splits > 0 ? (ntiles + force_splits - 1) / force_splits
                                          : tq_fa_tiles_per_split(ntiles, base, nsm1 * ki.blocks_per_sm, combine_tiles);
    pl.n_splits = (ntiles + pl.tiles_per_split - 1) / pl.tiles_per_split;
    const size_t rows_total = (size_t) a.n_seq * a.n_tokens * a.n_q_heads;
    pl.scratch_floats = pl.n_splits > 1 ? rows_total * pl.n_splits * (a.D + 2) : 0;
    return pl;
}

// Launches the decode (and the combine when the keys are split). scratch: plan.scratch_floats
// floats of device memory (may be NULL when that is 0).
static inline cudaError_t tq_fa_decode_launch(const tq_fa_decode_args & a, const tq_fa_decode_plan & pl, float * scratch, cudaStream_t stream) {
    if (!pl.kernel || (pl.n_splits > 1 && !scratch)) {
        return cudaErrorInvalidValue;
    }
    const size_t rows_total = (size_t) a.n_seq * a.n_tokens * a.n_q_heads;
    const size_t kr = (size_t) (a.D / TQ_BLOCK) * tq_fa_block_bytes(a.k_bits);
    const size_t vr = (size_t) (a.D / TQ_BLOCK) * tq_fa_block_bytes(a.v_bits);

    tq_fa_decode_kparams p = {};
    p.Q = (const char *) a.Q;
    p.K = (const char *) a.K;
    p.V = (const char *) a.V;
    p.mask = (const char *) a.mask;
    p.dst = a.dst;
    p.part = pl.n_splits > 1 ? scratch : nullptr;
    p.part_ml = pl.n_splits > 1 ? (float2 *) (scratch + rows_total * pl.n_splits * a.D) : nullptr;
    p.nbq1 = a.nbq1; p.nbq2 = a.nbq2; p.nbq3 = a.nbq3;
    p.nbk1 = a.nbk1; p.nbk2 = a.nbk2; p.nbk3 = a.nbk3;
    p.nbv1 = a.nbv1; p.nbv2 = a.nbv2; p.nbv3 = a.nbv3;
    p.nbm1 = a.nbm1; p.nbm3 = a.nbm3; p.nem3 = a.mask ? a.nem3 : 1;
    // the last byte any row reaches, with non-negative strides
    p.k_lo = (uintptr_t) a.K;
    p.k_hi = p.k_lo + (uintptr_t) ((a.n_kv - 1) * a.nbk1 + (a.n_kv_heads - 1) * a.nbk2 + (a.n_seq - 1) * a.nbk3) + kr;
    p.v_lo = (uintptr_t) a.V;
    p.v_hi = p.v_lo + (uintptr_t) ((a.n_kv - 1) * a.nbv1 + (a.n_kv_heads - 1) * a.nbv2 + (a.n_seq - 1) * a.nbv3) + vr;
    p.k_contig = a.nbk1 == (int64_t) kr;
    p.v_contig = a.nbv1 == (int64_t) vr;
    p.n_tokens = a.n_tokens;
    p.G = a.n_q_heads / a.n_kv_heads;
    p.n_q_heads = a.n_q_heads;
    p.n_kv = a.n_kv;
    p.n_rows = p.G * a.n_tokens;
    p.n_chunks = pl.n_chunks;
    p.n_splits = pl.n_splits;
    p.tiles_per_split = pl.tiles_per_split;
    p.qscale = a.scale * TQ_FA_LOG2E;

    const dim3 grid((unsigned) (pl.n_chunks * a.n_kv_heads), (unsigned) pl.n_splits, (unsigned) a.n_seq);
    // A programmatic launch only where the keys are not split (short caches, no combine): split, at
    // 32K keys, it measured 3 % slower end to end on an H100 than the plain launch of the decode
    // kernel and its combine, at depth 0 1-3 % faster (docs/results.md, "Programmatic dependent launches")
    tq_cuda_launch_if(pl.n_splits == 1, pl.kernel, grid, TQ_FA_NT, 0, stream, p);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || pl.n_splits == 1) {
        return err;
    }
    switch (a.D) {
        case 64:  tq_fa_decode_combine< 64><<<(unsigned) rows_total,  64, 0, stream>>>(p.part, p.part_ml, a.dst, pl.n_splits); break;
        case 128: tq_fa_decode_combine<128><<<(unsigned) rows_total, 128, 0, stream>>>(p.part, p.part_ml, a.dst, pl.n_splits); break;
        default:  tq_fa_decode_combine<256><<<(unsigned) rows_total, 256, 0, stream>>>(p.part, p.part_ml, a.dst, pl.n_splits); break;
    }
    return cudaGetLastError();
}

// ---- ggml entry (fattn.cu defines TQ_FA_DECODE_GGML before including this header) -------------
#ifdef TQ_FA_DECODE_GGML

static inline int tq_fa_ggml_bits(const ggml_type type) {
    switch (type) {
        case GGML_TYPE_TQ2: return 2;
        case GGML_TYPE_TQ3: return 3;
        case GGML_TYPE_TQ4: return 4;
        case GGML_TYPE_TQ3T: return 3; // with tcq (tq_fa_decode_args)
        default:            return 0;
    }
}

// FLASH_ATTN_EXT on tq2/tq3/tq4/tq3t K/V for 1..8 query tokens; false (nothing launched) for anything
// else, which then takes the generic kernels. For A/B timing: TQ_CUDA_FA_DECODE=0 switches it off,
// TQ_CUDA_FA_RB=1|2|4 fixes its rows per block, TQ_CUDA_FA_COMBINE_TILES=0 splits short caches as if
// the combine cost nothing.
static inline bool tq_cuda_flash_attn_ext_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    static const bool enabled = []() {
        const char * e = getenv("TQ_CUDA_FA_DECODE");
        return e == nullptr || atoi(e) != 0;
    }();
    static const int force_rb = []() {
        const char * e = getenv("TQ_CUDA_FA_RB");
        return e ? atoi(e) : 0;
    }();
    static const int combine_tiles = []() {
        const char * e = getenv("TQ_CUDA_FA_COMBINE_TILES");
        return e ? atoi(e) : 1;
    }();
    if (!enabled || dst->op != GGML_OP_FLASH_ATTN_EXT) {
        return false;
    }
    const ggml_tensor * Q     = dst->src[0];
    const ggml_tensor * K     = dst->src[1];
    const ggml_tensor * V     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];
    if (!Q || !K || !V || sinks) {
        return false;
    }

    float scale = 1.0f, max_bias = 0.0f, logit_softcap = 0.0f;
    memcpy(&scale,         (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias,      (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&logit_softcap, (const float *) dst->op_params + 2, sizeof(float));
    if (max_bias != 0.0f || logit_softcap != 0.0f) {
        return false;
    }

    const int k_bits = tq_fa_ggml_bits(K->type);
    const int v_bits = tq_fa_ggml_bits(V->type);
    if (!k_bits || !v_bits || Q->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32) {
        return false;
    }
    if (Q->nb[0] != sizeof(float) || K->nb[0] != ggml_type_size(K->type) || V->nb[0] != ggml_type_size(V->type) ||
        !ggml_is_contiguous(dst)) {
        return false;
    }
    const int64_t D = Q->ne[0];
    if (K->ne[0] != D || V->ne[0] != D || K->ne[1] != V->ne[1] || K->ne[2] != V->ne[2] ||
        K->ne[3] != Q->ne[3] || V->ne[3] != Q->ne[3] || K->ne[1] > INT32_MAX ||
        dst->ne[0] != D || dst->ne[1] != Q->ne[2] || dst->ne[2] != Q->ne[1] || dst->ne[3] != Q->ne[3]) {
        return false;
    }
    if (mask && (mask->type != GGML_TYPE_F16 || mask->nb[0] != sizeof(half) || mask->ne[0] < K->ne[1] ||
                 mask->ne[1] < Q->ne[1] || mask->ne[2] != 1 || Q->ne[3] % mask->ne[3] != 0)) {
        return false;
    }

    tq_fa_decode_args a = {};
    a.k_bits = k_bits;
    a.v_bits = v_bits;
    a.k_tcq = K->type == GGML_TYPE_TQ3T;
    a.v_tcq = V->type == GGML_TYPE_TQ3T;
    a.D = (int) D;
    a.n_tokens = (int) Q->ne[1];
    a.n_q_heads = (int) Q->ne[2];
    a.n_kv_heads = (int) K->ne[2];
    a.n_kv = (int) K->ne[1];
    a.n_seq = (int) Q->ne[3];
    a.Q = Q->data; a.nbq1 = Q->nb[1]; a.nbq2 = Q->nb[2]; a.nbq3 = Q->nb[3];
    a.K = K->data; a.nbk1 = K->nb[1]; a.nbk2 = K->nb[2]; a.nbk3 = K->nb[3];
    a.V = V->data; a.nbv1 = V->nb[1]; a.nbv2 = V->nb[2]; a.nbv3 = V->nb[3];
    if (mask) {
        a.mask = mask->data; a.nbm1 = mask->nb[1]; a.nbm3 = mask->nb[3]; a.nem3 = (int) mask->ne[3];
    }
    a.scale = scale;
    a.dst = (float *) dst->data;
    if (!tq_fa_decode_supported(a)) {
        return false;
    }

    const tq_fa_decode_plan pl = tq_fa_decode_make_plan(a, ggml_cuda_info().devices[ctx.device].nsm, 0, force_rb, combine_tiles);
    if (!pl.kernel) {
        return false;
    }
    ggml_cuda_pool_alloc<float> scratch(ctx.pool());
    if (pl.scratch_floats > 0) {
        scratch.alloc(pl.scratch_floats);
    }
    CUDA_CHECK(tq_fa_decode_launch(a, pl, scratch.ptr, ctx.stream()));
    return true;
}

#endif // TQ_FA_DECODE_GGML
