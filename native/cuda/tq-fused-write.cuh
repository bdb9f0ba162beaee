// tq-fused-write.cuh: the per-token work around a tq cache as one kernel per chain, for ggml-cuda's
// graph evaluation (ggml_cuda_try_fuse calls tq_cuda_try_fuse). llama builds, per layer,
//   K:  x - mean, * s (centring, native/llama/tq-kv-center.cpp), Hadamard rotation (MUL_MAT with the
//       Hadamard hint), SET_ROWS into the tq cache;
//   V:  Hadamard rotation, SET_ROWS;
//   Q:  q / s, Hadamard rotation;
// which ggml-cuda runs as 2-4 small kernels each; at decode every one of them is a launch and a
// round trip through memory for a few hundred values. Here one warp reads a segment of n_rot values
// once, applies the element-wise steps and the rotation in registers, and either codes its 64-value
// blocks into the cache rows (16 lanes per block, tq-quantize.cuh) or stores the rotated floats.
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
    const ggml_tensor * set_rows = nullptr;  // SET_ROWS into a tq2/tq3/tq4/tq2t/tq3t cache, or none
};

template <int N, typename block_t, typename idx_t>
__launch_bounds__(128, 1)
static __global__ void tq_k_fused_write(const float * x, const tq_cuda_operand sub, const tq_cuda_operand mul,
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

    ggml_cuda_pdl_sync();
    float reg[EL];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        const int j = i * W + lane;
        float v = x[e0 + j];
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

template <int N, typename block_t, typename idx_t>
static void tq_cuda_fused_launch(const tq_cuda_fusion & f, cudaStream_t stream) {
    const ggml_tensor * x     = f.x;
    const int64_t       n_seg = ggml_nelements(x) / N;
    const dim3          block(32, 4, 1);
    const dim3          grid((unsigned) ((n_seg + 3) / 4), 1, 1);
    const ggml_tensor * sr    = f.set_rows;
    tq_k_fused_write<N, block_t, idx_t><<<grid, block, 0, stream>>>(
        (const float *) x->data, tq_cuda_fuse_operand(f.sub), tq_cuda_fuse_operand(f.mul), tq_cuda_fuse_operand(f.div),
        n_seg, x->ne[0], x->ne[1], x->ne[2], 1.0f / sqrtf((float) N), sr ? nullptr : (float *) f.rot->data,
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
// written memory overlaps what the chain reads. TQ_CUDA_FUSED_WRITE=0 switches it off (A/B timing).
static int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * g, const int i) {
    static const bool enabled = []() {
        const char * e = getenv("TQ_CUDA_FUSED_WRITE");
        return e == nullptr || atoi(e) != 0;
    }();
    const ggml_tensor * n = g->nodes[i];
    if (!enabled || (n->op != GGML_OP_SUB && n->op != GGML_OP_MUL && n->op != GGML_OP_DIV && n->op != GGML_OP_MUL_MAT)) {
        return 0;
    }
    const tq_cuda_fusion f = tq_cuda_match_fusion(g, i);
    if (f.n_nodes == 0) {
        return 0;
    }
    // the written bytes: the query's rotated values, or the cache rows (any row of the view may be written).
    // The query's output may be the query itself, element for element (the allocator gives the freed
    // input to the output of the same size): each warp reads its whole segment before it writes it.
    const void * w      = f.set_rows ? f.set_rows->data : f.rot->data;
    const size_t w_size = f.set_rows ? ggml_nbytes(f.set_rows) : ggml_nbytes(f.rot);
    const ggml_tensor * read[] = { f.x, f.sub, f.mul, f.div, f.set_rows ? f.set_rows->src[1] : nullptr };
    for (const ggml_tensor * t : read) {
        const bool in_place = t == f.x && !f.set_rows && t->data == w && ggml_nbytes(t) == w_size;
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
