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
// A chain that does not match exactly is left to the unfused kernels.
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

template <int N, typename block_t, typename idx_t>
__launch_bounds__(128, 1)
static __global__ void tq_k_fused_write(const float * x, const int64_t xne1, const int64_t xne2, const int64_t xs1,
                                        const int64_t xs2, const int64_t xs3, const tq_cuda_rope rope,
                                        const tq_cuda_operand sub, const tq_cuda_operand mul,
                                        const tq_cuda_operand div, const int64_t n_seg, const int64_t ne0, const int64_t ne1,
                                        const int64_t ne2, const float scale, float * out,
                                        const idx_t * __restrict__ idx, const int64_t idx_s0, char * __restrict__ dst,
                                        const int64_t dst_ne0, const size_t dst_nb1) {
    constexpr int W  = 32;
    constexpr int EL = N / W;
    const int     lane = threadIdx.x;
    const int64_t seg  = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    if (seg >= n_seg) {
        return; // the whole warp: seg depends on threadIdx.y only
    }
    const int64_t e0 = seg * N;
    // a segment lies in one row of x (N divides ne0): the operands' row offsets once per segment
    const int64_t i0 = e0 % ne0;
    int64_t       r  = e0 / ne0;
    const int64_t i1 = r % ne1;
    r /= ne1;
    const int64_t i2 = r % ne2;
    const int64_t i3 = r / ne2;
    const auto at = [&](const tq_cuda_operand & o) {
        return o.d ? o.d + (i1 % o.ne[1]) * o.nb[1] + (i2 % o.ne[2]) * o.nb[2] + (i3 % o.ne[3]) * o.nb[3] + i0 : nullptr;
    };
    const float * ps = at(sub);
    const float * pm = at(mul);
    const float * pd = at(div);
    // the segment in x's own shape (rows of N values; a view's strides): row xr1 of token xr2
    int64_t       xr  = e0 / N;
    const int64_t xr1 = xr % xne1;
    xr /= xne1;
    const int64_t xr2 = xr % xne2;
    const int64_t xr3 = xr / xne2;
    const float * px  = x + xr1 * xs1 + xr2 * xs2 + xr3 * xs3;

    ggml_cuda_pdl_sync();
    float reg[EL];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        reg[i] = px[i * W + lane];
    }
    if (rope.pos) {
        const int32_t p = rope.pos[xr2];
        if (rope.neox) {
            // values k and k + N/2 (registers i and i + EL/2 of a lane) turn together
#pragma unroll
            for (int i = 0; i < EL / 2; ++i) {
                float c, sn;
                tq_cuda_rope_cs(rope, p, i * W + lane, c, sn);
                const float x0 = reg[i];
                const float x1 = reg[i + EL / 2];
                reg[i]          = x0 * c - x1 * sn;
                reg[i + EL / 2] = x0 * sn + x1 * c;
            }
        } else {
            // values 2k and 2k + 1 (lanes l and l ^ 1)
#pragma unroll
            for (int i = 0; i < EL; ++i) {
                float c, sn;
                tq_cuda_rope_cs(rope, p, (i * W + lane) / 2, c, sn);
                const float other = __shfl_xor_sync(0xFFFFFFFF, reg[i], 1, W);
                const bool  even  = (lane & 1) == 0;
                const float x0    = even ? reg[i] : other;
                const float x1    = even ? other : reg[i];
                reg[i] = even ? x0 * c - x1 * sn : x0 * sn + x1 * c;
            }
        }
    }
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

    if constexpr (std::is_void_v<block_t>) {
#pragma unroll
        for (int i = 0; i < EL; ++i) {
            out[e0 + i * W + lane] = reg[i];
        }
    } else {
        // to the half-warp coder's layout (lane l holds values l + 16 r of a block) through shared memory
        __shared__ float buf[4][N];
        float * s = buf[threadIdx.y];
#pragma unroll
        for (int i = 0; i < EL; ++i) {
            s[i * W + lane] = reg[i];
        }
        __syncwarp();
        // SET_ROWS: row e0 / dst_ne0 of the source goes to cache row idx[that row] (N divides dst_ne0)
        const int64_t row = idx[(e0 / dst_ne0) * idx_s0];
        block_t * y = (block_t *) (dst + row * dst_nb1) + (e0 % dst_ne0) / TQ_BLOCK;
        constexpr int NB = N / TQ_BLOCK;
#pragma unroll
        for (int b = 0; b < NB; b += 2) {
            const int  bb    = b + lane / 16;
            const bool valid = bb < NB;
            tq_cuda_quantize_block16<block_t>(s + (valid ? bb : b) * TQ_BLOCK, y + (valid ? bb : b), valid);
        }
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

template <int N, typename block_t, typename idx_t>
static void tq_cuda_fused_launch(const tq_cuda_fusion & f, cudaStream_t stream) {
    const ggml_tensor * x     = f.x;     // read in rows of N values: RoPE's source may be a view
    const ggml_tensor * sh    = f.shape; // contiguous
    const int64_t       n_seg = ggml_nelements(sh) / N;
    const dim3          block(32, 4, 1);
    const dim3          grid((unsigned) ((n_seg + 3) / 4), 1, 1);
    const ggml_tensor * sr    = f.set_rows;
    // x as rows of N: a RoPE source has rows of N (its head), a contiguous x is one row of N after another
    const bool    rows = f.rope != nullptr;
    const int64_t xne1 = rows ? x->ne[1] : ggml_nelements(x) / N;
    const int64_t xne2 = rows ? x->ne[2] : 1;
    const int64_t xs1  = rows ? (int64_t) (x->nb[1] / sizeof(float)) : N;
    const int64_t xs2  = rows ? (int64_t) (x->nb[2] / sizeof(float)) : 0;
    const int64_t xs3  = rows ? (int64_t) (x->nb[3] / sizeof(float)) : 0;
    tq_k_fused_write<N, block_t, idx_t><<<grid, block, 0, stream>>>(
        (const float *) x->data, xne1, xne2, xs1, xs2, xs3, tq_cuda_fuse_rope(f.rope),
        tq_cuda_fuse_operand(f.sub), tq_cuda_fuse_operand(f.mul), tq_cuda_fuse_operand(f.div),
        n_seg, sh->ne[0], sh->ne[1], sh->ne[2], 1.0f / sqrtf((float) N), sr ? nullptr : (float *) f.rot->data,
        sr ? (const idx_t *) sr->src[1]->data : nullptr, sr ? (int64_t) (sr->src[1]->nb[0] / sizeof(idx_t)) : 0,
        sr ? (char *) sr->data : nullptr, sr ? sr->ne[0] : 1, sr ? sr->nb[1] : 0);
}

template <int N>
static void tq_cuda_fused_dispatch(const tq_cuda_fusion & f, cudaStream_t stream) {
    if (!f.set_rows) {
        tq_cuda_fused_launch<N, void, int32_t>(f, stream);
        return;
    }
    const bool i64 = f.set_rows->src[1]->type == GGML_TYPE_I64;
    switch (f.set_rows->type) {
        case GGML_TYPE_TQ2: i64 ? tq_cuda_fused_launch<N, block_tq2, int64_t>(f, stream) : tq_cuda_fused_launch<N, block_tq2, int32_t>(f, stream); break;
        case GGML_TYPE_TQ3: i64 ? tq_cuda_fused_launch<N, block_tq3, int64_t>(f, stream) : tq_cuda_fused_launch<N, block_tq3, int32_t>(f, stream); break;
        case GGML_TYPE_TQ4: i64 ? tq_cuda_fused_launch<N, block_tq4, int64_t>(f, stream) : tq_cuda_fused_launch<N, block_tq4, int32_t>(f, stream); break;
        case GGML_TYPE_TQ2T: i64 ? tq_cuda_fused_launch<N, block_tq2t, int64_t>(f, stream) : tq_cuda_fused_launch<N, block_tq2t, int32_t>(f, stream); break;
        case GGML_TYPE_TQ3T: i64 ? tq_cuda_fused_launch<N, block_tq3t, int64_t>(f, stream) : tq_cuda_fused_launch<N, block_tq3t, int32_t>(f, stream); break;
        default: GGML_ABORT("tq_cuda_fused_dispatch: %s", ggml_type_name(f.set_rows->type));
    }
}

// The one call ggml_cuda_try_fuse makes: runs the chain that starts at node i as one kernel and
// returns how many nodes after i it covered, or 0 (nothing run) where no chain matches or the
// written memory overlaps what the chain reads. TQ_CUDA_FUSED_WRITE=0 switches it off,
// TQ_CUDA_FUSED_ROPE=0 leaves RoPE out of it (A/B timing).
static int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * g, const int i) {
    static const auto env_on = [](const char * name) {
        const char * e = getenv(name);
        return e == nullptr || atoi(e) != 0;
    };
    static const bool enabled   = env_on("TQ_CUDA_FUSED_WRITE");
    static const bool with_rope = env_on("TQ_CUDA_FUSED_ROPE");
    const ggml_tensor * n = g->nodes[i];
    if (!enabled || (n->op != GGML_OP_SUB && n->op != GGML_OP_MUL && n->op != GGML_OP_DIV && n->op != GGML_OP_MUL_MAT &&
                     n->op != GGML_OP_ROPE)) {
        return 0;
    }
    const tq_cuda_fusion f = tq_cuda_match_fusion(g, i, with_rope);
    if (f.n_nodes == 0) {
        return 0;
    }
    // the written bytes: the query's rotated values, or the cache rows (any row of the view may be written).
    // The query's output may be the query itself, element for element (the allocator gives the freed
    // input to the output of the same size): each warp reads its whole segment before it writes it.
    const void * w      = f.set_rows ? f.set_rows->data : f.rot->data;
    const size_t w_size = f.set_rows ? ggml_nbytes(f.set_rows) : ggml_nbytes(f.rot);
    const ggml_tensor * read[] = { f.x, f.sub, f.mul, f.div, f.set_rows ? f.set_rows->src[1] : nullptr,
                                   f.rope ? f.rope->src[1] : nullptr, f.rope ? f.rope->src[2] : nullptr };
    for (const ggml_tensor * t : read) {
        const bool in_place = t == f.x && !f.set_rows && ggml_is_contiguous(t) && t->data == w && ggml_nbytes(t) == w_size;
        if (t && !in_place && tq_cuda_fuse_overlap(t, w, w_size)) {
            return 0;
        }
    }
    switch (f.rot->ne[0]) {
        case 64:  tq_cuda_fused_dispatch<64>(f, ctx.stream());  break;
        case 128: tq_cuda_fused_dispatch<128>(f, ctx.stream()); break;
        case 256: tq_cuda_fused_dispatch<256>(f, ctx.stream()); break;
        case 512: tq_cuda_fused_dispatch<512>(f, ctx.stream()); break;
        default: return 0;
    }
    CUDA_CHECK(cudaGetLastError());
    return f.n_nodes - 1;
}
