// tq-fused-write.cuh: the per-token work around a tq cache as one kernel per chain, for ggml-cuda's
// graph evaluation (ggml_cuda_try_fuse calls tq_cuda_try_fuse). llama builds, per layer,
//   K:  RoPE, x - mean, * s (centring, native/llama/tq-kv-center.cpp), Hadamard rotation (MUL_MAT
//       with the Hadamard hint), SET_ROWS into the tq cache;
//   V:  Hadamard rotation, SET_ROWS;
//   Q:  RoPE, q / s, Hadamard rotation;
// which ggml-cuda runs as 2-5 small kernels each; at decode every one of them is a launch and a
// round trip through memory for a few hundred values. Here one warp reads a segment of n_rot values
// once, applies RoPE, the element-wise steps and the rotation in registers, and either codes its
// 64-value blocks into the cache rows (16 lanes per block, tq-quantize.cuh) or stores the rotated
// floats. The arithmetic is that of the unfused kernels, op for op (rope.cu's angles and rotation
// for its NORM and NEOX modes; binbcast's a - b, a * b, a / b; fwht.cu's butterflies; repeated here
// because those files keep them inside their kernels; the SET_ROWS coder), so the fused chain writes
// the bytes the unfused one writes. RoPE joins a chain only where its segment is one whole head
// (n_rot = the rotated dims = the head size): NEOX pairs values half a head apart.
// A chain that does not match exactly is left to the unfused kernels. The chains of a layer's Q, K
// and V, one after another in the graph (tq-kv-center.cpp puts the three projections before them at
// decode), run in one launch, each on thread blocks of its own: at decode each chain is a few
// thread blocks whose time is latency, so three launches cost about three times one.
// Needs ggml-cuda's common.cuh, ggml-impl.h (use counts) and fwht.cuh first.
#pragma once

#include "tq-set-rows.cuh"

// an element-wise operand, broadcast over the source as ggml broadcasts src1 (dim 0 not broadcast)
struct tq_cuda_operand {
    const float * d = nullptr;
    int64_t ne[4] = { 1, 1, 1, 1 };
    int64_t nb[4] = { 0, 0, 0, 0 }; // in floats
};

// RoPE of the chain's source (GGML_OP_ROPE, forward, mode NORM or NEOX, every value of the head
// rotated), with rope.cu's parameters
struct tq_cuda_rope {
    const int32_t * pos = nullptr;   // a position per token (dim 2 of the source); null: no RoPE
    const float   * ff  = nullptr;   // frequency factors, or null
    float theta_scale = 1.0f;        // freq_base^(-2 / n_dims)
    float freq_scale  = 1.0f;
    float ext_factor  = 0.0f;
    float attn_factor = 1.0f;
    float corr0 = 0.0f, corr1 = 0.0f; // YaRN's correction dims (ggml_rope_yarn_corr_dims)
    bool  neox = false;
};

// cos and sin of pair k's angle at position p, as rope.cu's rope_yarn computes them (iw = 2k there)
static __device__ __forceinline__ void tq_cuda_rope_cs(const tq_cuda_rope & r, const int32_t p, const int k, float & c, float & s) {
    const float theta_base   = p * powf(r.theta_scale, (2 * k) / 2.0f);
    const float theta_extrap = theta_base / (r.ff ? r.ff[k] : 1.0f);
    const float theta_interp = r.freq_scale * theta_extrap;
    float theta  = theta_interp;
    float mscale = r.attn_factor;
    if (r.ext_factor != 0.0f) {
        const float y        = (k - r.corr0) / max(0.001f, r.corr1 - r.corr0);
        const float ramp_mix = (1.0f - min(1.0f, max(0.0f, y))) * r.ext_factor;
        theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix;
        mscale *= 1.0f + 0.1f * logf(1.0f / r.freq_scale);
    }
    c = cosf(theta) * mscale;
    s = sinf(theta) * mscale;
}

struct tq_cuda_fusion {
    int n_nodes = 0;                         // graph nodes the kernel replaces; 0: no match
    const ggml_tensor * rope     = nullptr;  // RoPE of x first, or none
    const ggml_tensor * x        = nullptr;  // the chain's source: F32; contiguous, or rows of RoPE's source
    const ggml_tensor * shape    = nullptr;  // the chain's values as the element-wise steps see them (contiguous)
    const ggml_tensor * sub      = nullptr;  // x - sub (the centring's mean)
    const ggml_tensor * mul      = nullptr;  // * mul (the centring's factors)
    const ggml_tensor * div      = nullptr;  // / div (the query's factors)
    const ggml_tensor * rot      = nullptr;  // MUL_MAT with the Hadamard hint; without a write, the output
    const ggml_tensor * set_rows = nullptr;  // SET_ROWS into a tq2/tq3/tq4/tq2t/tq3t cache, or none
};

// One chain's arguments for the kernel (tq_cuda_chain_args); a launch runs up to TQ_CUDA_MAX_CHAINS of them,
// each on its own thread blocks
struct tq_cuda_chain {
    const float * x = nullptr;                  // read in rows of N values: row r1 of token r2 at r1 * xs1 + r2 * xs2 + r3 * xs3
    int64_t xne1 = 1, xne2 = 1, xs1 = 0, xs2 = 0, xs3 = 0;
    tq_cuda_rope    rope;
    tq_cuda_operand sub, mul, div;
    int64_t n_seg = 0;                          // segments of N values
    int64_t ne0 = 1, ne1 = 1, ne2 = 1;          // the element-wise steps' shape (the operands' broadcast)
    float * out = nullptr;                      // no write: the rotated values go here
    const void * idx = nullptr;                 // SET_ROWS: the rows' indices (I32 or I64), every idx_s0-th
    int64_t  idx_s0 = 0;
    bool     idx64  = false;
    char *   dst = nullptr;                     // the cache, rows of dst_ne0 values dst_nb1 bytes apart
    int64_t  dst_ne0 = 1;
    size_t   dst_nb1 = 0;
    ggml_type type = GGML_TYPE_F32;             // the cache's type (F32: no write)
    int      n_rot = 0;                         // the rotation's size: N, or (a chain of the rotation alone) less
    float    scale = 1.0f;                      // 1/sqrt(n_rot), as fwht.cu's host code computes it
    unsigned block0 = 0;                        // the chain's first thread block in the launch
};

// K's, V's and the query's chains of one layer come one after another in llama's graph
static constexpr int TQ_CUDA_MAX_CHAINS = 3;
struct tq_cuda_chains {
    tq_cuda_chain c[TQ_CUDA_MAX_CHAINS];
    int n = 0;
};

// the chains are read where the thread block's index puts them, which needs their address: without
// __grid_constant__ (compute capability 7.0 on) the compiler copies the whole parameter to local memory
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define TQ_CUDA_GRID_CONSTANT __grid_constant__
#else
#define TQ_CUDA_GRID_CONSTANT
#endif

// the N rotated values of segment e0 (in shared memory, s) coded into their cache row
template <int N, typename block_t>
static __device__ __forceinline__ void tq_cuda_fused_code(const tq_cuda_chain & c, const float * s, const int64_t e0, const int lane) {
    // SET_ROWS: row e0 / dst_ne0 of the source goes to cache row idx[that row] (N divides dst_ne0)
    const int64_t ir  = (e0 / c.dst_ne0) * c.idx_s0;
    const int64_t row = c.idx64 ? ((const int64_t *) c.idx)[ir] : ((const int32_t *) c.idx)[ir];
    block_t * y = (block_t *) (c.dst + row * c.dst_nb1) + (e0 % c.dst_ne0) / TQ_BLOCK;
    constexpr int NB = N / TQ_BLOCK;
#pragma unroll
    for (int b = 0; b < NB; b += 2) {
        const int  bb    = b + lane / 16;
        const bool valid = bb < NB;
        tq_cuda_quantize_block16<block_t>(s + (valid ? bb : b) * TQ_BLOCK, y + (valid ? bb : b), valid);
    }
}

// TCQ: the trellis coders too (their Viterbi tables take 16 KiB of shared memory)
template <int N, bool TCQ>
__launch_bounds__(128, 1)
static __global__ void tq_k_fused_write(const TQ_CUDA_GRID_CONSTANT tq_cuda_chains cs) {
    constexpr int W  = 32;
    constexpr int EL = N / W;
    tq_cuda_pdl_trigger();
    int jc = 0;
#pragma unroll
    for (int k = 1; k < TQ_CUDA_MAX_CHAINS; ++k) {
        jc += k < cs.n && blockIdx.x >= cs.c[k].block0;
    }
    const tq_cuda_chain & c = cs.c[jc];
    const int     lane = threadIdx.x;
    const int64_t seg  = (int64_t) (blockIdx.x - c.block0) * blockDim.y + threadIdx.y;
    if (seg >= c.n_seg) {
        return; // the whole warp: seg depends on threadIdx.y only
    }
    const int64_t e0 = seg * N;
    // a segment lies in one row of x (N divides ne0): the operands' row offsets once per segment
    const int64_t i0 = e0 % c.ne0;
    int64_t       r  = e0 / c.ne0;
    const int64_t i1 = r % c.ne1;
    r /= c.ne1;
    const int64_t i2 = r % c.ne2;
    const int64_t i3 = r / c.ne2;
    const auto at = [&](const tq_cuda_operand & o) {
        return o.d ? o.d + (i1 % o.ne[1]) * o.nb[1] + (i2 % o.ne[2]) * o.nb[2] + (i3 % o.ne[3]) * o.nb[3] + i0 : nullptr;
    };
    const float * ps = at(c.sub);
    const float * pm = at(c.mul);
    const float * pd = at(c.div);
    // the segment in x's own shape (rows of N values; a view's strides): row xr1 of token xr2
    int64_t       xr  = e0 / N;
    const int64_t xr1 = xr % c.xne1;
    xr /= c.xne1;
    const int64_t xr2 = xr % c.xne2;
    const int64_t xr3 = xr / c.xne2;
    const float * px  = c.x + xr1 * c.xs1 + xr2 * c.xs2 + xr3 * c.xs3;

    tq_cuda_pdl_wait();
    float reg[EL];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        reg[i] = px[i * W + lane];
    }
    const tq_cuda_rope & rope = c.rope;
    if (rope.pos) {
        const int32_t p = rope.pos[xr2];
        if (rope.neox) {
            // values k and k + N/2 (registers i and i + EL/2 of a lane) turn together
#pragma unroll
            for (int i = 0; i < EL / 2; ++i) {
                float cs_, sn;
                tq_cuda_rope_cs(rope, p, i * W + lane, cs_, sn);
                const float x0 = reg[i];
                const float x1 = reg[i + EL / 2];
                reg[i]          = x0 * cs_ - x1 * sn;
                reg[i + EL / 2] = x0 * sn + x1 * cs_;
            }
        } else {
            // values 2k and 2k + 1 (lanes l and l ^ 1)
#pragma unroll
            for (int i = 0; i < EL; ++i) {
                float cs_, sn;
                tq_cuda_rope_cs(rope, p, (i * W + lane) / 2, cs_, sn);
                const float other = __shfl_xor_sync(0xFFFFFFFF, reg[i], 1, W);
                const bool  even  = (lane & 1) == 0;
                const float x0    = even ? reg[i] : other;
                const float x1    = even ? other : reg[i];
                reg[i] = even ? x0 * cs_ - x1 * sn : x0 * sn + x1 * cs_;
            }
        }
    }
    const float scale = c.scale;
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        const int j = i * W + lane;
        float v = reg[i];
        if (ps) { v = v - ps[j]; }
        if (pm) { v = v * pm[j]; }
        if (pd) { v = v / pd[j]; }
        reg[i] = v * scale;
    }
    // fwht.cu's transform, butterfly for butterfly
#pragma unroll
    for (int h = 1; h < W; h *= 2) {
#pragma unroll
        for (int j = 0; j < EL; j++) {
            const float val  = reg[j];
            const float val2 = __shfl_xor_sync(0xFFFFFFFF, val, h, W);
            reg[j] = (lane & h) == 0 ? val + val2 : val2 - val;
        }
    }
#pragma unroll
    for (int h = W; h < N; h *= 2) {
        if (h >= c.n_rot) {
            break; // a segment of N / n_rot rotations
        }
        const int step = h / W;
#pragma unroll
        for (int j = 0; j < EL; j += 2 * step) {
#pragma unroll
            for (int k = 0; k < step; k++) {
                const float a = reg[j + k];
                const float b = reg[j + k + step];
                reg[j + k]        = a + b;
                reg[j + k + step] = a - b;
            }
        }
    }

    if (c.type == GGML_TYPE_F32) {
#pragma unroll
        for (int i = 0; i < EL; ++i) {
            c.out[e0 + i * W + lane] = reg[i];
        }
        return;
    }
    // to the half-warp coder's layout (lane l holds values l + 16 r of a block) through shared memory
    __shared__ float buf[4][N];
    float * s = buf[threadIdx.y];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        s[i * W + lane] = reg[i];
    }
    __syncwarp();
    switch (c.type) { // the same for the whole warp
        case GGML_TYPE_TQ2:  tq_cuda_fused_code<N, block_tq2>(c, s, e0, lane);  break;
        case GGML_TYPE_TQ3:  tq_cuda_fused_code<N, block_tq3>(c, s, e0, lane);  break;
        case GGML_TYPE_TQ4:  tq_cuda_fused_code<N, block_tq4>(c, s, e0, lane);  break;
        case GGML_TYPE_TQ2T: if constexpr (TCQ) { tq_cuda_fused_code<N, block_tq2t>(c, s, e0, lane); } break;
        case GGML_TYPE_TQ3T: if constexpr (TCQ) { tq_cuda_fused_code<N, block_tq3t>(c, s, e0, lane); } break;
        default: break; // the matcher takes no other type, the launch picks TCQ for these
    }
}

static bool tq_cuda_fuse_is_view(const ggml_tensor * t) {
    return t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW;
}

static bool tq_cuda_fuse_operand_ok(const ggml_tensor * b, const ggml_tensor * x) {
    if (b->type != GGML_TYPE_F32 || !ggml_is_contiguous(b) || b->ne[0] != x->ne[0]) {
        return false;
    }
    for (int d = 1; d < 4; ++d) {
        if (b->ne[d] != x->ne[d] && b->ne[d] != 1) {
            return false;
        }
    }
    return true;
}

// RoPE that the kernel applies as rope.cu does: forward, F32, NORM or NEOX over the whole row
// (no offset, no multi-section modes), a position per token
static bool tq_cuda_fuse_rope_ok(const ggml_tensor * n) {
    const ggml_tensor * x   = n->src[0];
    const ggml_tensor * pos = n->src[1];
    const ggml_tensor * ff  = n->src[2];
    const int n_dims = ggml_get_op_params_i32(n, 1);
    const int mode   = ggml_get_op_params_i32(n, 2);
    const int n_offs = ggml_get_op_params_i32(n, 15);
    return x->type == GGML_TYPE_F32 && n->type == GGML_TYPE_F32 && x->nb[0] == sizeof(float) && ggml_is_contiguous(n) &&
           (mode == 0 || mode == GGML_ROPE_TYPE_NEOX) && n_dims == x->ne[0] && n_offs == 0 &&
           pos->type == GGML_TYPE_I32 && ggml_is_contiguous(pos) && pos->ne[0] == x->ne[2] &&
           (!ff || (ff->type == GGML_TYPE_F32 && ggml_is_contiguous(ff) && ff->ne[0] >= n_dims / 2));
}

// The chain that starts at node i, as llama builds it for a tq cache; n_nodes = 0 where it does not
// match exactly (other ops, other uses of an intermediate, shapes the kernel does not take).
static tq_cuda_fusion tq_cuda_match_fusion(const ggml_cgraph * g, const int i, const bool with_rope) {
    tq_cuda_fusion f;
    const ggml_tensor * cur = nullptr; // the value the chain carries
    int last = -1;
    for (int j = i; j < g->n_nodes; ++j) {
        const ggml_tensor * n = g->nodes[j];
        if (cur && tq_cuda_fuse_is_view(n) && n->src[0] == cur) {
            cur = n; // a reshape or view of the value
            continue;
        }
        if (!f.rot && tq_cuda_fuse_is_view(n) && j + 1 < g->n_nodes && g->nodes[j + 1]->src[1] == n) {
            continue; // a reshape of the next step's operand
        }
        if (j == i && n->op == GGML_OP_ROPE) {
            if (!with_rope || !tq_cuda_fuse_rope_ok(n)) {
                return {};
            }
            f.rope = n;
            cur    = n;
            last   = j;
            continue;
        }
        const bool ew = !f.rot && (n->op == GGML_OP_SUB || n->op == GGML_OP_MUL || n->op == GGML_OP_DIV);
        if (ew) {
            // in the order the kernel applies them: - mean, * s, / s, each at most once
            const bool order_ok = (n->op == GGML_OP_SUB && !f.sub && !f.mul && !f.div) ||
                                  (n->op == GGML_OP_MUL && !f.mul && !f.div) || (n->op == GGML_OP_DIV && !f.div);
            const ggml_tensor * x = f.shape ? f.shape : n->src[0];
            if (!order_ok || (cur && n->src[0] != cur) || (!cur && j != i) || n->type != GGML_TYPE_F32 ||
                x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || !ggml_are_same_shape(n, x) ||
                !tq_cuda_fuse_operand_ok(n->src[1], x)) {
                return {};
            }
            f.shape = x;
            (n->op == GGML_OP_SUB ? f.sub : n->op == GGML_OP_MUL ? f.mul : f.div) = n->src[1];
            cur  = n;
            last = j;
            continue;
        }
        if (!f.rot && n->op == GGML_OP_MUL_MAT && ggml_get_op_params_i32(n, 1) == GGML_HINT_SRC0_IS_HADAMARD) {
            const ggml_tensor * b = n->src[1];
            if ((cur && b != cur) || (!cur && j != i) || b->type != GGML_TYPE_F32 || !ggml_cuda_op_mul_mat_use_fwht(n)) {
                return {};
            }
            const int64_t n_rot = n->ne[0];
            if (!f.shape) {
                f.shape = b; // V, or K of an uncentred cache: the rotation alone
            }
            if ((n_rot != 64 && n_rot != 128 && n_rot != 256 && n_rot != 512) || f.shape->ne[0] % n_rot != 0 ||
                ggml_nelements(n) != ggml_nelements(f.shape) || !ggml_is_contiguous(f.shape) ||
                (f.rope && f.rope->ne[0] != n_rot)) {
                return {};
            }
            f.rot = n;
            cur   = n;
            last  = j;
            continue;
        }
        if (f.rot && n->op == GGML_OP_SET_ROWS && n->src[0] == cur) {
            const ggml_tensor * idx = n->src[1];
            if (n->type != GGML_TYPE_TQ2 && n->type != GGML_TYPE_TQ3 && n->type != GGML_TYPE_TQ4 &&
                n->type != GGML_TYPE_TQ2T && n->type != GGML_TYPE_TQ3T) {
                break;
            }
            // the rotated values, read as SET_ROWS reads its source: rows of dst->ne[0] values
            if (cur->data != f.rot->data || !ggml_is_contiguous(cur) || cur->ne[2] != 1 || cur->ne[3] != 1 ||
                cur->ne[0] != n->ne[0] || cur->ne[0] % f.rot->ne[0] != 0 || idx->ne[0] != cur->ne[1] ||
                (idx->type != GGML_TYPE_I32 && idx->type != GGML_TYPE_I64)) {
                break;
            }
            f.set_rows = n;
            last = j;
        }
        break;
    }
    // no rotation, or a rotation alone (fwht.cu's kernel as it is); RoPE and a rotation alone are
    // not a tq cache's chain (a rotated q4_0 cache's query has them), so they stay ggml-cuda's too
    if (!f.rot || (!f.set_rows && !f.sub && !f.mul && !f.div)) {
        return {};
    }
    // every node but the last is read only inside the chain
    for (int j = i; j < last; ++j) {
        if (ggml_node_get_use_count(g, j) != 1 || (g->nodes[j]->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            return {};
        }
        if (!tq_cuda_fuse_is_view(g->nodes[j]) && !(g->nodes[j]->flags & GGML_TENSOR_FLAG_COMPUTE)) {
            return {};
        }
    }
    f.x = f.rope ? f.rope->src[0] : f.shape;
    f.n_nodes = last - i + 1;
    return f;
}

static bool tq_cuda_fuse_overlap(const ggml_tensor * a, const void * b0, const size_t b_size) {
    const char * a0 = (const char *) a->data;
    const char * b  = (const char *) b0;
    return a0 < b + b_size && b < a0 + ggml_nbytes(a);
}

static tq_cuda_operand tq_cuda_fuse_operand(const ggml_tensor * t) {
    tq_cuda_operand o;
    if (t) {
        o.d = (const float *) t->data;
        for (int d = 0; d < 4; ++d) {
            o.ne[d] = t->ne[d];
            o.nb[d] = t->nb[d] / sizeof(float);
        }
    }
    return o;
}

static tq_cuda_rope tq_cuda_fuse_rope(const ggml_tensor * n) {
    tq_cuda_rope r;
    if (!n) {
        return r;
    }
    const int n_dims     = ggml_get_op_params_i32(n, 1);
    const int n_ctx_orig = ggml_get_op_params_i32(n, 4);
    const float freq_base = ggml_get_op_params_f32(n, 5);
    const float beta_fast = ggml_get_op_params_f32(n, 9);
    const float beta_slow = ggml_get_op_params_f32(n, 10);
    float corr[2];
    ggml_rope_yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow, corr);
    r.pos         = (const int32_t *) n->src[1]->data;
    r.ff          = n->src[2] ? (const float *) n->src[2]->data : nullptr;
    r.theta_scale = powf(freq_base, -2.0f / n_dims);
    r.freq_scale  = ggml_get_op_params_f32(n, 6);
    r.ext_factor  = ggml_get_op_params_f32(n, 7);
    r.attn_factor = ggml_get_op_params_f32(n, 8);
    r.corr0       = corr[0];
    r.corr1       = corr[1];
    r.neox        = ggml_get_op_params_i32(n, 2) == GGML_ROPE_TYPE_NEOX;
    return r;
}

// the kernel's arguments for a matched chain; block0: its first thread block in the launch
template <int N>
static tq_cuda_chain tq_cuda_chain_args(const tq_cuda_fusion & f, const unsigned block0) {
    tq_cuda_chain c;
    const ggml_tensor * x  = f.x;     // read in rows of N values: RoPE's source may be a view
    const ggml_tensor * sh = f.shape; // contiguous
    const ggml_tensor * sr = f.set_rows;
    // x as rows of N: a RoPE source has rows of N (its head), a contiguous x is one row of N after another
    const bool rows = f.rope != nullptr;
    c.x      = (const float *) x->data;
    c.xne1   = rows ? x->ne[1] : ggml_nelements(x) / N;
    c.xne2   = rows ? x->ne[2] : 1;
    c.xs1    = rows ? (int64_t) (x->nb[1] / sizeof(float)) : N;
    c.xs2    = rows ? (int64_t) (x->nb[2] / sizeof(float)) : 0;
    c.xs3    = rows ? (int64_t) (x->nb[3] / sizeof(float)) : 0;
    c.rope   = tq_cuda_fuse_rope(f.rope);
    c.sub    = tq_cuda_fuse_operand(f.sub);
    c.mul    = tq_cuda_fuse_operand(f.mul);
    c.div    = tq_cuda_fuse_operand(f.div);
    c.n_seg  = ggml_nelements(sh) / N;
    c.ne0    = sh->ne[0];
    c.ne1    = sh->ne[1];
    c.ne2    = sh->ne[2];
    c.n_rot  = (int) f.rot->ne[0];
    c.scale  = 1.0f / sqrtf((float) c.n_rot);
    c.block0 = block0;
    if (sr) {
        c.idx     = sr->src[1]->data;
        c.idx64   = sr->src[1]->type == GGML_TYPE_I64;
        c.idx_s0  = (int64_t) (sr->src[1]->nb[0] / ggml_type_size(sr->src[1]->type));
        c.dst     = (char *) sr->data;
        c.dst_ne0 = sr->ne[0];
        c.dst_nb1 = sr->nb[1];
        c.type    = sr->type;
    } else {
        c.out  = (float *) f.rot->data;
        c.type = GGML_TYPE_F32;
    }
    return c;
}

// one launch for n chains in segments of N values, 4 segments (warps) per thread block
template <int N>
static void tq_cuda_fused_launch(const tq_cuda_fusion * f, const int n, cudaStream_t stream) {
    tq_cuda_chains cs;
    unsigned n_blocks = 0;
    bool     tcq      = false;
    for (int k = 0; k < n; ++k) {
        cs.c[k] = tq_cuda_chain_args<N>(f[k], n_blocks);
        n_blocks += (unsigned) ((cs.c[k].n_seg + 3) / 4);
        tcq = tcq || cs.c[k].type == GGML_TYPE_TQ2T || cs.c[k].type == GGML_TYPE_TQ3T;
    }
    cs.n = n;
    tq_cuda_launch(tcq ? tq_k_fused_write<N, true> : tq_k_fused_write<N, false>, n_blocks, dim3(32, 4, 1), 0, stream, cs);
}

// whether a chain runs in segments of N values: its rotation's size, or a multiple of it where the
// chain is the rotation alone (V's rotation in blocks of 64 next to K's and Q's of a head of 128:
// nothing in it depends on where a head starts)
static bool tq_cuda_fuse_fits(const tq_cuda_fusion & f, const int64_t N) {
    const int64_t n_rot = f.rot->ne[0];
    if (n_rot == N) {
        return true;
    }
    return n_rot < N && !f.rope && !f.sub && !f.mul && !f.div && ggml_nelements(f.shape) % N == 0 &&
           (!f.set_rows || f.set_rows->ne[0] % N == 0);
}

// the bytes a chain writes: the query's rotated values, or the cache rows (any row of the view may be written)
static void tq_cuda_fuse_written(const tq_cuda_fusion & f, const void ** w, size_t * w_size) {
    *w      = f.set_rows ? f.set_rows->data : f.rot->data;
    *w_size = f.set_rows ? ggml_nbytes(f.set_rows) : ggml_nbytes(f.rot);
}

// whether chain a may run in the same launch as chain b (a == b: on its own): nothing a reads is
// written by b. The query's output may be the query itself, element for element (the allocator gives
// the freed input to the output of the same size): each warp reads its whole segment before it writes it.
static bool tq_cuda_fuse_reads_ok(const tq_cuda_fusion & a, const tq_cuda_fusion & b) {
    const void * w;
    size_t       w_size;
    tq_cuda_fuse_written(b, &w, &w_size);
    const ggml_tensor * read[] = { a.x, a.sub, a.mul, a.div, a.set_rows ? a.set_rows->src[1] : nullptr,
                                   a.rope ? a.rope->src[1] : nullptr, a.rope ? a.rope->src[2] : nullptr };
    for (const ggml_tensor * t : read) {
        const bool in_place = &a == &b && t == a.x && !a.set_rows && ggml_is_contiguous(t) && t->data == w &&
                              ggml_nbytes(t) == w_size;
        if (t && !in_place && tq_cuda_fuse_overlap(t, w, w_size)) {
            return false;
        }
    }
    return true;
}

static bool tq_cuda_fuse_skippable(const ggml_tensor * t) {
    return ggml_is_empty(t) || t->op == GGML_OP_NONE || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW ||
           t->op == GGML_OP_PERMUTE || t->op == GGML_OP_TRANSPOSE;
}

// The one call ggml_cuda_try_fuse makes: runs the chain that starts at node i as one kernel, with the
// chains that follow it (only views between: a layer's Q, K and V chains as llama orders them) in the
// same launch, and returns how many nodes after i it covered, or 0 (nothing run) where no chain
// matches or the written memory overlaps what the chain reads. TQ_CUDA_FUSED_WRITE=0 switches it
// off, TQ_CUDA_FUSED_ROPE=0 leaves RoPE out of it, TQ_CUDA_FUSED_MERGE=0 launches each chain on its
// own (A/B timing).
static int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * g, const int i) {
    static const auto env_on = [](const char * name) {
        const char * e = getenv(name);
        return e == nullptr || atoi(e) != 0;
    };
    static const bool enabled   = env_on("TQ_CUDA_FUSED_WRITE");
    static const bool with_rope = env_on("TQ_CUDA_FUSED_ROPE");
    // GGML_CUDA_GRAPH_OPT=1 may put the three chains on streams of their own
    static const bool merge     = env_on("TQ_CUDA_FUSED_MERGE") && !(getenv("GGML_CUDA_GRAPH_OPT") && atoi(getenv("GGML_CUDA_GRAPH_OPT")) == 1);
    const auto starts = [](const ggml_tensor * n) {
        return n->op == GGML_OP_SUB || n->op == GGML_OP_MUL || n->op == GGML_OP_DIV || n->op == GGML_OP_MUL_MAT ||
               n->op == GGML_OP_ROPE;
    };
    if (!enabled || !starts(g->nodes[i])) {
        return 0;
    }
    tq_cuda_fusion f[TQ_CUDA_MAX_CHAINS];
    f[0] = tq_cuda_match_fusion(g, i, with_rope);
    if (f[0].n_nodes == 0 || !tq_cuda_fuse_reads_ok(f[0], f[0])) {
        return 0;
    }
    int64_t N    = f[0].rot->ne[0]; // the segment: the largest rotation of the chains
    int     n    = 1;
    int     last = i + f[0].n_nodes - 1; // the last node covered
    while (merge && n < TQ_CUDA_MAX_CHAINS) {
        int j = last + 1;
        while (j < g->n_nodes && tq_cuda_fuse_skippable(g->nodes[j])) {
            ++j;
        }
        if (j >= g->n_nodes || !starts(g->nodes[j])) {
            break;
        }
        f[n] = tq_cuda_match_fusion(g, j, with_rope);
        if (f[n].n_nodes == 0) {
            break;
        }
        const int64_t N_n = std::max(N, f[n].rot->ne[0]);
        bool ok = true;
        for (int k = 0; k <= n && ok; ++k) {
            ok = tq_cuda_fuse_fits(f[k], N_n) && tq_cuda_fuse_reads_ok(f[n], f[k]) && (k == n || tq_cuda_fuse_reads_ok(f[k], f[n]));
        }
        if (!ok) {
            break;
        }
        N    = N_n;
        last = j + f[n].n_nodes - 1;
        ++n;
    }
    switch (N) {
        case 64:  tq_cuda_fused_launch<64>(f, n, ctx.stream());  break;
        case 128: tq_cuda_fused_launch<128>(f, n, ctx.stream()); break;
        case 256: tq_cuda_fused_launch<256>(f, n, ctx.stream()); break;
        case 512: tq_cuda_fused_launch<512>(f, n, ctx.stream()); break;
        default: return 0;
    }
    CUDA_CHECK(cudaGetLastError());
    return last - i;
}
