// tq-fused-write.cuh: the per-token work around a tq cache as one kernel per layer, for ggml-cuda's
// graph evaluation (ggml_cuda_try_fuse calls tq_cuda_try_fuse). llama builds, per layer,
//   Q:  q / s, Hadamard rotation;
//   K:  x - mean, * s (centring, native/llama/tq-kv-center.cpp), Hadamard rotation (MUL_MAT with the
//       Hadamard hint), SET_ROWS into the tq cache;
//   V:  Hadamard rotation, SET_ROWS;
//   and after the attention, the Hadamard un-rotation of its output;
// which ggml-cuda runs as 2-4 small kernels each; at decode every one of them is a launch and a
// round trip through memory for a few hundred values. Here one warp reads a segment of n_rot values
// once, applies the element-wise steps and the rotation in registers, and either codes its 64-value
// blocks into the cache rows (16 lanes per block, tq-quantize.cuh) or stores the rotated floats; the
// three chains, which llama places side by side for a rotated cache, run as one launch. The
// un-rotation goes into the decode kernel's combine step (tq-fattn-decode.cuh).
// The arithmetic is that of the unfused kernels, op for op (binbcast's a - b, a * b, a / b; fwht.cu's
// butterflies, repeated here because fwht.cu keeps them inside its kernel; the SET_ROWS coder), so
// the fused chain writes the bytes the unfused one writes.
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

struct tq_cuda_fusion {
    int n_nodes = 0;                         // graph nodes the kernel replaces; 0: no match
    const ggml_tensor * x        = nullptr;  // the chain's source: F32, contiguous
    const ggml_tensor * sub      = nullptr;  // x - sub (the centring's mean)
    const ggml_tensor * mul      = nullptr;  // * mul (the centring's factors)
    const ggml_tensor * div      = nullptr;  // / div (the query's factors)
    const ggml_tensor * rot      = nullptr;  // MUL_MAT with the Hadamard hint; without a write, the output
    const ggml_tensor * set_rows = nullptr;  // SET_ROWS into a tq2/tq3/tq4 cache, or none
};

// One chain as the kernel sees it: its source, operands, and either the rotated floats' destination
// (type 0) or the tq cache rows that SET_ROWS writes (type 2, 3, 4: tq2, tq3, tq4).
struct tq_cuda_chain {
    const float *   x;
    tq_cuda_operand sub, mul, div;
    int64_t         n_seg, ne0, ne1, ne2;
    float *         out;
    const void *    idx;
    int64_t         idx_s0;
    int             idx_i64;
    int             type;
    char *          dst;
    int64_t         dst_ne0;
    size_t          dst_nb1;
};

// Up to three chains in one launch (llama builds the query's, V's and K's side by side): the warps
// of chain c are those with end[c-1] <= segment < end[c].
struct tq_cuda_chains {
    tq_cuda_chain c[3];
    int64_t       end[3];
    int           n;
};

template <int N>
static __device__ __forceinline__ void tq_fused_chain_segment(const tq_cuda_chain & c, const int64_t seg, const float scale,
                                                              float * s) {
    constexpr int W  = 32;
    constexpr int EL = N / W;
    const int     lane = threadIdx.x;
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

    float reg[EL];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        const int j = i * W + lane;
        float v = c.x[e0 + j];
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

    if (c.type == 0) {
#pragma unroll
        for (int i = 0; i < EL; ++i) {
            c.out[e0 + i * W + lane] = reg[i];
        }
        return;
    }
    // to the half-warp coder's layout (lane l holds values l + 16 r of a block) through shared memory
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        s[i * W + lane] = reg[i];
    }
    __syncwarp();
    // SET_ROWS: row e0 / dst_ne0 of the source goes to cache row idx[that row] (N divides dst_ne0)
    const int64_t ri  = (e0 / c.dst_ne0) * c.idx_s0;
    const int64_t row = c.idx_i64 ? ((const int64_t *) c.idx)[ri] : (int64_t) ((const int32_t *) c.idx)[ri];
    char * y = c.dst + row * c.dst_nb1;
    const int64_t b0 = (e0 % c.dst_ne0) / TQ_BLOCK;
    constexpr int NB = N / TQ_BLOCK;
    const auto code = [&](auto * yb) {
#pragma unroll
        for (int b = 0; b < NB; b += 2) {
            const int  bb    = b + lane / 16;
            const bool valid = bb < NB;
            tq_cuda_quantize_block16(s + (valid ? bb : b) * TQ_BLOCK, yb + b0 + (valid ? bb : b), valid);
        }
    };
    switch (c.type) {
        case 2:  code((block_tq2 *) y); break;
        case 3:  code((block_tq3 *) y); break;
        default: code((block_tq4 *) y); break;
    }
}

template <int N>
__launch_bounds__(128, 1)
static __global__ void tq_k_fused_write(const tq_cuda_chains cs, const float scale) {
    __shared__ float buf[4][N];
    const int64_t seg = (int64_t) blockIdx.x * blockDim.y + threadIdx.y;
    ggml_cuda_pdl_sync();
    // one chain per warp (seg depends on threadIdx.y only); the branches name each chain's fields
    // statically, so that they are read from the parameter space, not copied
    if (seg < cs.end[0]) {
        tq_fused_chain_segment<N>(cs.c[0], seg, scale, buf[threadIdx.y]);
    } else if (cs.n > 1 && seg < cs.end[1]) {
        tq_fused_chain_segment<N>(cs.c[1], seg - cs.end[0], scale, buf[threadIdx.y]);
    } else if (cs.n > 2 && seg < cs.end[2]) {
        tq_fused_chain_segment<N>(cs.c[2], seg - cs.end[1], scale, buf[threadIdx.y]);
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

// The chain that starts at node i, as llama builds it for a tq cache; n_nodes = 0 where it does not
// match exactly (other ops, other uses of an intermediate, shapes the kernel does not take).
static tq_cuda_fusion tq_cuda_match_fusion(const ggml_cgraph * g, const int i) {
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
        const bool ew = !f.rot && (n->op == GGML_OP_SUB || n->op == GGML_OP_MUL || n->op == GGML_OP_DIV);
        if (ew) {
            // in the order the kernel applies them: - mean, * s, / s, each at most once
            const bool order_ok = (n->op == GGML_OP_SUB && !f.sub && !f.mul && !f.div) ||
                                  (n->op == GGML_OP_MUL && !f.mul && !f.div) || (n->op == GGML_OP_DIV && !f.div);
            const ggml_tensor * x = f.x ? f.x : n->src[0];
            if (!order_ok || (cur && n->src[0] != cur) || (!cur && j != i) || n->type != GGML_TYPE_F32 ||
                x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || !ggml_are_same_shape(n, x) ||
                !tq_cuda_fuse_operand_ok(n->src[1], x)) {
                return {};
            }
            f.x = x;
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
            if (!f.x) {
                f.x = b; // V, or K of an uncentred cache: the rotation alone
            }
            if ((n_rot != 64 && n_rot != 128 && n_rot != 256 && n_rot != 512) || f.x->ne[0] % n_rot != 0 ||
                ggml_nelements(n) != ggml_nelements(f.x) || !ggml_is_contiguous(f.x)) {
                return {};
            }
            f.rot = n;
            cur   = n;
            last  = j;
            continue;
        }
        if (f.rot && n->op == GGML_OP_SET_ROWS && n->src[0] == cur) {
            const ggml_tensor * idx = n->src[1];
            if (n->type != GGML_TYPE_TQ2 && n->type != GGML_TYPE_TQ3 && n->type != GGML_TYPE_TQ4) {
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
    if (!f.rot || (!f.set_rows && !f.sub && !f.mul && !f.div)) {
        return {}; // no rotation, or a rotation alone (fwht.cu's kernel as it is)
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

// the bytes a chain writes: the query's rotated values, or the cache rows (any row of the view may be written)
static const void * tq_cuda_fuse_written(const tq_cuda_fusion & f, size_t & size) {
    size = f.set_rows ? ggml_nbytes(f.set_rows) : ggml_nbytes(f.rot);
    return f.set_rows ? f.set_rows->data : f.rot->data;
}

// whether what chain w writes may overlap what chain r reads. The query's output may be the query
// itself, element for element (the allocator gives the freed input to the output of the same size):
// each warp reads its whole segment before it writes it, so a chain may do that to itself.
static bool tq_cuda_fuse_hazard(const tq_cuda_fusion & w, const tq_cuda_fusion & r) {
    size_t w_size = 0;
    const void * wd = tq_cuda_fuse_written(w, w_size);
    const ggml_tensor * read[] = { r.x, r.sub, r.mul, r.div, r.set_rows ? r.set_rows->src[1] : nullptr };
    for (const ggml_tensor * t : read) {
        const bool in_place = &w == &r && t == r.x && !r.set_rows && t->data == wd && ggml_nbytes(t) == w_size;
        if (t && !in_place && tq_cuda_fuse_overlap(t, wd, w_size)) {
            return true;
        }
    }
    return false;
}

static tq_cuda_chain tq_cuda_fuse_chain(const tq_cuda_fusion & f) {
    tq_cuda_chain c = {};
    const ggml_tensor * x  = f.x;
    const ggml_tensor * sr = f.set_rows;
    c.x     = (const float *) x->data;
    c.sub   = tq_cuda_fuse_operand(f.sub);
    c.mul   = tq_cuda_fuse_operand(f.mul);
    c.div   = tq_cuda_fuse_operand(f.div);
    c.n_seg = ggml_nelements(x) / f.rot->ne[0];
    c.ne0   = x->ne[0];
    c.ne1   = x->ne[1];
    c.ne2   = x->ne[2];
    c.out   = sr ? nullptr : (float *) f.rot->data;
    if (sr) {
        const ggml_tensor * idx = sr->src[1];
        c.idx_i64 = idx->type == GGML_TYPE_I64;
        c.idx     = idx->data;
        c.idx_s0  = (int64_t) (idx->nb[0] / ggml_type_size(idx->type));
        c.type    = sr->type == GGML_TYPE_TQ2 ? 2 : sr->type == GGML_TYPE_TQ3 ? 3 : 4;
        c.dst     = (char *) sr->data;
        c.dst_ne0 = sr->ne[0];
        c.dst_nb1 = sr->nb[1];
    }
    return c;
}

// FLASH_ATTN_EXT at node i followed by the Hadamard un-rotation of its output (reshapes, MUL_MAT
// with the hint): the decode kernel writes the rotated output (tq_cuda_fa_decode_ggml, fattn.cu).
// Returns the nodes covered after i, or 0 (nothing run).
bool tq_cuda_fa_decode_ggml(ggml_backend_cuda_context & ctx, const ggml_tensor * dst, float * out, int n_rot);

static int tq_cuda_try_fuse_fa_rot(ggml_backend_cuda_context & ctx, const ggml_cgraph * g, const int i) {
    const ggml_tensor * fa  = g->nodes[i];
    const ggml_tensor * cur = fa;
    int j = i + 1;
    while (j < g->n_nodes && tq_cuda_fuse_is_view(g->nodes[j]) && g->nodes[j]->src[0] == cur) {
        cur = g->nodes[j++];
    }
    if (j >= g->n_nodes || !ggml_is_contiguous(fa)) {
        return 0;
    }
    const ggml_tensor * rot = g->nodes[j];
    if (rot->op != GGML_OP_MUL_MAT || ggml_get_op_params_i32(rot, 1) != GGML_HINT_SRC0_IS_HADAMARD || rot->src[1] != cur ||
        !ggml_cuda_op_mul_mat_use_fwht(rot) || cur->type != GGML_TYPE_F32 || fa->ne[0] % rot->ne[0] != 0 ||
        rot->ne[0] < 64 || rot->ne[0] > fa->ne[0]) {
        return 0;
    }
    for (int k = i; k < j; ++k) {
        if (ggml_node_get_use_count(g, k) != 1 || (g->nodes[k]->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            return 0;
        }
    }
    return tq_cuda_fa_decode_ggml(ctx, fa, (float *) rot->data, (int) rot->ne[0]) ? j - i : 0;
}

// The one call ggml_cuda_try_fuse makes: runs the chains that start at node i (up to three in a row,
// with one rotation size) as one kernel, or the attention with its output's un-rotation, and returns
// how many nodes after i that covered, or 0 (nothing run) where nothing matches or what a chain
// writes overlaps what the chains read. TQ_CUDA_FUSED_WRITE (A/B timing): 0 switches both off, 1
// keeps the chains only, 2 the un-rotation only.
static int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * g, const int i) {
    static const int enabled = []() {
        const char * e = getenv("TQ_CUDA_FUSED_WRITE");
        return e == nullptr ? 3 : atoi(e) & 3;
    }();
    const ggml_tensor * n = g->nodes[i];
    if (n->op == GGML_OP_FLASH_ATTN_EXT) {
        return enabled & 2 ? tq_cuda_try_fuse_fa_rot(ctx, g, i) : 0;
    }
    if (!(enabled & 1) || n->op != GGML_OP_SUB && n->op != GGML_OP_MUL && n->op != GGML_OP_DIV && n->op != GGML_OP_MUL_MAT) {
        return 0;
    }
    tq_cuda_fusion f[3];
    int nf   = 0;
    int last = i;
    for (int j = i; nf < 3 && j < g->n_nodes;) {
        f[nf] = tq_cuda_match_fusion(g, j);
        if (f[nf].n_nodes == 0 || (nf > 0 && f[nf].rot->ne[0] != f[0].rot->ne[0])) {
            break;
        }
        bool hazard = false;
        for (int a = 0; a <= nf; ++a) {
            hazard = hazard || tq_cuda_fuse_hazard(f[a], f[nf]) || tq_cuda_fuse_hazard(f[nf], f[a]);
        }
        if (hazard) {
            break;
        }
        last = j + f[nf].n_nodes - 1;
        ++nf;
        // the next chain starts at the next node that is not a view (views run no kernel)
        for (j = last + 1; j < g->n_nodes && tq_cuda_fuse_is_view(g->nodes[j]); ++j) {
        }
    }
    if (nf == 0) {
        return 0;
    }
    tq_cuda_chains cs = {};
    int64_t n_seg = 0;
    for (int a = 0; a < nf; ++a) {
        cs.c[a]   = tq_cuda_fuse_chain(f[a]);
        n_seg    += cs.c[a].n_seg;
        cs.end[a] = n_seg;
    }
    cs.n = nf;
    const int   N     = (int) f[0].rot->ne[0];
    const float scale = 1 / sqrtf(N); // fwht.cu's
    const dim3  block(32, 4, 1);
    const dim3  grid((unsigned) ((n_seg + 3) / 4), 1, 1);
    switch (N) {
        case 64:  tq_k_fused_write< 64><<<grid, block, 0, ctx.stream()>>>(cs, scale); break;
        case 128: tq_k_fused_write<128><<<grid, block, 0, ctx.stream()>>>(cs, scale); break;
        case 256: tq_k_fused_write<256><<<grid, block, 0, ctx.stream()>>>(cs, scale); break;
        case 512: tq_k_fused_write<512><<<grid, block, 0, ctx.stream()>>>(cs, scale); break;
        default: return 0;
    }
    CUDA_CHECK(cudaGetLastError());
    return last - i;
}
