// The flash-attention decode kernel of native/cuda/tq-fattn-decode.cuh against a float64 CPU
// reference over the DECODED K/V (the C codec quantizes and dequantizes), on ggml's tensor layouts
// (Q permuted [D, tokens, heads, seqs]; K/V rows of one head strided by all heads' rows, or adjacent;
// f16 mask broadcast over heads), then its speed for decode over 32K keys. No llama.cpp needed
// (one line; libtq_native.a from cmake -S native):
//   nvcc -arch=sm_90 -std=c++17 -O2 -use_fast_math -Inative/include -Inative/cuda native/tests/tq_cuda_fattn_test.cu libtq_native.a -o tq_cuda_fattn_test
// Options: --quick (fewer, smaller cases; no timing), --plans-only (the key splits' and rows per block's choice, no GPU), --no-perf, --perf-only, --type T (time only T: tq2,
// tq3, tq4 or tq3t; --bits B is --type tqB), --rb R (force R rows per block in the timing), --reps N,
// --seqs S --kv N (time S sequences of N keys each instead of one of 32768, as a server's batch reads them),
// --splits N (force N key splits in the timing), --live N (the timing's mask shows each step only
// its first N keys, as llama.cpp's padded cache does: a step at depth 0 sees 1-64 of 256).
// The timing: D 128, G 4, 8 KV heads, one token, 32768 keys, llama.cpp's cache layout, 100 calls
// after 10 warm-up calls; once on the same buffers (their 19-36 MB stay in a 50-60 MB L2, as they do
// in test-backend-ops perf) and once rotating over copies larger than 4x the L2 (device memory).
// Pass: max |out - ref| / max |ref| < 1e-3 for every case, every output written (dst is poisoned
// with NaN first). Exit code 1 on any failure.
#include "tq-fattn-decode.cuh"

#include "tq-ggml.h"
#include "tq_cuda_test_util.h"

#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>


struct codec {
    const char * name;
    int bits;
    int tcq;      // trellis-coded (tq_fa_decode_args.k_tcq / v_tcq)
    size_t block_bytes;
    void (*q)(const float *, void *, int64_t);
    void (*dq)(const void *, float *, int64_t);
};
static const codec CODECS[] = {
    { "tq2",  2, 0, sizeof(block_tq2),  tq_ggml_quantize_row_tq2,  tq_ggml_dequantize_row_tq2 },
    { "tq3",  3, 0, sizeof(block_tq3),  tq_ggml_quantize_row_tq3,  tq_ggml_dequantize_row_tq3 },
    { "tq4",  4, 0, sizeof(block_tq4),  tq_ggml_quantize_row_tq4,  tq_ggml_dequantize_row_tq4 },
    { "tq3t", 3, 1, sizeof(block_tq3t), tq_ggml_quantize_row_tq3t, tq_ggml_dequantize_row_tq3t },
};
enum { TQ2, TQ3, TQ4, TQ3T, NCODECS };
static const codec & codec_of(int id) { return CODECS[id]; }

// MASK_WINDOW: one mask whose keys are seen only in [n_kv / 3, n_kv / 3 + n_kv / 4), so that whole
// tiles at both ends are dead; for the one-row blocks, which skip such tiles, their K and V scales are
// NaN on the device, which the kernel must never read (the reference reads the codes as they were)
enum { MASK_NONE, MASK_ONE, MASK_PER_SEQ, MASK_WINDOW };

struct tcase {
    int kb, vb, D, G, ntok, nkv, nkvh, nseq;   // kb, vb: codec ids (TQ2 ...)
    bool contig;  // rows of one head adjacent (else interleaved with the other heads', as llama.cpp's cache)
    int mask;
    int offset;   // bytes added to the K and V base addresses (2: rows and the tensor start 2 mod 4)
    int splits;   // 0: the launcher's choice
};

// One problem on the host and the device.
struct problem {
    tcase tc;
    int nqh, rowk, rowv, ntokpad, nkvpad;
    std::vector<float> q;            // [seq][tok][qh][D]
    std::vector<uint8_t> k, v;       // quantized, laid out with the strides below
    std::vector<float> kd, vd;       // decoded, [seq][kvh][kv][D]
    std::vector<__half> mask;        // [nem3][ntokpad][nkvpad]
    int64_t nbk1, nbk2, nbk3, nbv1, nbv2, nbv3;
    int nem3;
    int dead_tiles = 0;               // MASK_WINDOW: tiles of keys that no token sees
    std::vector<uint8_t> k_dead, v_dead; // k, v with NaN scales in those tiles
    float scale;

    void * dq = nullptr; uint8_t * dk = nullptr; uint8_t * dv = nullptr; void * dm = nullptr; float * dout = nullptr;
    uint8_t * dk_alloc = nullptr; uint8_t * dv_alloc = nullptr;
    size_t kbytes = 0, vbytes = 0;
};

static void layout(int row, const tcase & c, int64_t & nb1, int64_t & nb2, int64_t & nb3) {
    if (c.contig) {
        nb1 = row; nb2 = (int64_t) row * c.nkv; nb3 = nb2 * c.nkvh;
    } else {
        nb1 = (int64_t) row * c.nkvh; nb2 = row; nb3 = nb1 * c.nkv;
    }
}

static void make(problem & P, const tcase & c) {
    P.tc = c;
    P.nqh = c.G * c.nkvh;
    const codec & ck = codec_of(c.kb);
    const codec & cv = codec_of(c.vb);
    P.rowk = (int) (c.D / TQ_BLOCK * ck.block_bytes);
    P.rowv = (int) (c.D / TQ_BLOCK * cv.block_bytes);
    layout(P.rowk, c, P.nbk1, P.nbk2, P.nbk3);
    layout(P.rowv, c, P.nbv1, P.nbv2, P.nbv3);
    P.kbytes = (size_t) P.nbk3 * c.nseq;
    P.vbytes = (size_t) P.nbv3 * c.nseq;
    P.scale = 1.0f / sqrtf((float) c.D);

    P.q.resize((size_t) c.nseq * c.ntok * P.nqh * c.D);
    for (auto & x : P.q) x = grand();

    P.k.assign(P.kbytes, 0);
    P.v.assign(P.vbytes, 0);
    P.kd.resize((size_t) c.nseq * c.nkvh * c.nkv * c.D);
    P.vd.resize(P.kd.size());
    std::vector<float> x(c.D);
    for (int s = 0; s < c.nseq; ++s) {
        for (int h = 0; h < c.nkvh; ++h) {
            for (int j = 0; j < c.nkv; ++j) {
                const size_t di = (((size_t) s * c.nkvh + h) * c.nkv + j) * c.D;
                // keys with an outlier-ish spread of scales, values plain Gaussian
                const float ks = 0.5f + 1.5f * (float) urand();
                for (auto & e : x) e = ks * grand();
                uint8_t * kr = P.k.data() + s * P.nbk3 + h * P.nbk2 + j * P.nbk1;
                ck.q(x.data(), kr, c.D);
                ck.dq(kr, P.kd.data() + di, c.D);
                for (auto & e : x) e = grand();
                uint8_t * vr = P.v.data() + s * P.nbv3 + h * P.nbv2 + j * P.nbv1;
                cv.q(x.data(), vr, c.D);
                cv.dq(vr, P.vd.data() + di, c.D);
            }
        }
    }

    P.nem3 = c.mask == MASK_PER_SEQ ? c.nseq : 1;
    P.ntokpad = c.ntok + 1;      // llama.cpp pads the mask's token rows
    P.nkvpad = c.nkv + 3;        // and a row stride != n_kv checks the stride is used
    if (c.mask != MASK_NONE) {
        P.mask.resize((size_t) P.nem3 * P.ntokpad * P.nkvpad);
        for (int s = 0; s < P.nem3; ++s) {
            for (int t = 0; t < P.ntokpad; ++t) {
                for (int j = 0; j < P.nkvpad; ++j) {
                    // causal: token t of the batch sees keys up to n_kv - n_tok + t; inside, some holes
                    // and some finite biases
                    float mv;
                    const double u = urand();
                    const bool outside = c.mask == MASK_WINDOW && (j < c.nkv / 3 || j >= c.nkv / 3 + c.nkv / 4);
                    if (j > c.nkv - c.ntok + t || outside) mv = -INFINITY;
                    else if (u < 0.1) mv = -INFINITY;
                    else if (u < 0.3) mv = (float) (-4.0 * urand());
                    else mv = 0.0f;
                    P.mask[((size_t) s * P.ntokpad + t) * P.nkvpad + j] = __float2half(mv);
                }
            }
        }
    }
    if (c.mask == MASK_WINDOW) {
        // the kernel's tiles (tq_fa_decode_kernel: 16384 / D keys; splits start on a tile) that no
        // token sees: NaN scales in every block of their K and V rows
        const int TK = 16384 / c.D;
        const uint16_t nan16 = 0x7e00;
        P.k_dead = P.k;
        P.v_dead = P.v;
        for (int k0 = 0; k0 < c.nkv; k0 += TK) {
            bool dead = true;
            for (int t = 0; t < c.ntok && dead; ++t) {
                for (int j = k0; j < std::min(c.nkv, k0 + TK); ++j) {
                    dead &= std::isinf(__half2float(P.mask[(size_t) t * P.nkvpad + j]));
                }
            }
            if (!dead) continue;
            ++P.dead_tiles;
            for (int s = 0; s < c.nseq; ++s) {
                for (int h = 0; h < c.nkvh; ++h) {
                    for (int j = k0; j < std::min(c.nkv, k0 + TK); ++j) {
                        for (int b = 0; b < c.D / TQ_BLOCK; ++b) {
                            memcpy(&P.k_dead[s * P.nbk3 + h * P.nbk2 + j * P.nbk1 + b * ck.block_bytes], &nan16, 2);
                            memcpy(&P.v_dead[s * P.nbv3 + h * P.nbv2 + j * P.nbv1 + b * cv.block_bytes], &nan16, 2);
                        }
                    }
                }
            }
        }
    }
}

// float64 softmax attention over the decoded K/V; dst layout [seq][tok][qh][D]
static void reference(const problem & P, std::vector<double> & out) {
    const tcase & c = P.tc;
    out.assign((size_t) c.nseq * c.ntok * P.nqh * c.D, 0.0);
    std::vector<double> sc(c.nkv);
    for (int s = 0; s < c.nseq; ++s) {
        for (int t = 0; t < c.ntok; ++t) {
            for (int hq = 0; hq < P.nqh; ++hq) {
                const int hk = hq / c.G;
                const float * qv = P.q.data() + (((size_t) s * c.ntok + t) * P.nqh + hq) * c.D;
                double mx = -INFINITY;
                for (int j = 0; j < c.nkv; ++j) {
                    const float * kv = P.kd.data() + (((size_t) s * c.nkvh + hk) * c.nkv + j) * c.D;
                    double d = 0;
                    for (int e = 0; e < c.D; ++e) d += (double) qv[e] * kv[e];
                    d *= P.scale;
                    if (c.mask != MASK_NONE) {
                        d += (double) __half2float(P.mask[(((size_t) (s % P.nem3)) * P.ntokpad + t) * P.nkvpad + j]);
                    }
                    sc[j] = d;
                    mx = std::max(mx, d);
                }
                double * o = out.data() + (((size_t) s * c.ntok + t) * P.nqh + hq) * c.D;
                if (mx == -INFINITY) continue; // every key masked: 0 (the CPU backend's convention)
                double sum = 0;
                for (int j = 0; j < c.nkv; ++j) {
                    if (sc[j] == -INFINITY) continue;
                    const double p = exp(sc[j] - mx);
                    sum += p;
                    const float * vv = P.vd.data() + (((size_t) s * c.nkvh + hk) * c.nkv + j) * c.D;
                    for (int e = 0; e < c.D; ++e) o[e] += p * vv[e];
                }
                for (int e = 0; e < c.D; ++e) o[e] /= sum;
            }
        }
    }
}

static void upload(problem & P) {
    const tcase & c = P.tc;
    CK(cudaMalloc(&P.dq, P.q.size() * sizeof(float)));
    CK(cudaMemcpy(P.dq, P.q.data(), P.q.size() * sizeof(float), cudaMemcpyHostToDevice));
    // exact-size allocations (plus the offset) so that compute-sanitizer sees any read past K/V
    CK(cudaMalloc(&P.dk_alloc, P.kbytes + c.offset));
    CK(cudaMalloc(&P.dv_alloc, P.vbytes + c.offset));
    P.dk = P.dk_alloc + c.offset;
    P.dv = P.dv_alloc + c.offset;
    CK(cudaMemcpy(P.dk, P.k.data(), P.kbytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(P.dv, P.v.data(), P.vbytes, cudaMemcpyHostToDevice));
    if (!P.mask.empty()) {
        CK(cudaMalloc(&P.dm, P.mask.size() * sizeof(__half)));
        CK(cudaMemcpy(P.dm, P.mask.data(), P.mask.size() * sizeof(__half), cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&P.dout, (size_t) c.nseq * c.ntok * P.nqh * c.D * sizeof(float)));
}

static void release(problem & P) {
    CK(cudaFree(P.dq));
    CK(cudaFree(P.dk_alloc));
    CK(cudaFree(P.dv_alloc));
    if (P.dm) CK(cudaFree(P.dm));
    CK(cudaFree(P.dout));
    P.dq = P.dm = nullptr;
    P.dk_alloc = P.dv_alloc = P.dk = P.dv = nullptr;
    P.dout = nullptr;
}

static tq_fa_decode_args args_of(const problem & P, const void * K, const void * V) {
    const tcase & c = P.tc;
    tq_fa_decode_args a = {};
    a.k_bits = codec_of(c.kb).bits;
    a.v_bits = codec_of(c.vb).bits;
    a.k_tcq = codec_of(c.kb).tcq;
    a.v_tcq = codec_of(c.vb).tcq;
    a.D = c.D;
    a.n_tokens = c.ntok;
    a.n_q_heads = P.nqh;
    a.n_kv_heads = c.nkvh;
    a.n_kv = c.nkv;
    a.n_seq = c.nseq;
    // Q as llama.cpp hands it over: permute(q, 0, 2, 1, 3) of [D, heads, tokens, seqs]
    a.Q = P.dq;
    a.nbq1 = (int64_t) P.nqh * c.D * 4;
    a.nbq2 = (int64_t) c.D * 4;
    a.nbq3 = (int64_t) c.ntok * P.nqh * c.D * 4;
    a.K = K; a.nbk1 = P.nbk1; a.nbk2 = P.nbk2; a.nbk3 = P.nbk3;
    a.V = V; a.nbv1 = P.nbv1; a.nbv2 = P.nbv2; a.nbv3 = P.nbv3;
    if (P.dm) {
        a.mask = P.dm;
        a.nbm1 = (int64_t) P.nkvpad * 2;
        a.nbm3 = (int64_t) P.nkvpad * P.ntokpad * 2;
        a.nem3 = P.nem3;
    }
    a.scale = P.scale;
    a.dst = P.dout;
    return a;
}

static int g_nsm = 0;

// the case at the plan's own rows per block and, where that is fewer, at the most rows too, so that
// every RB reads short caches
static bool run_case_rb(const tcase & c, int force_rb);
static bool run_case(const tcase & c) {
    const bool own = run_case_rb(c, 0);
    return run_case_rb(c, tq_fa_rows_max(c.G * c.ntok)) && own;
}

static bool run_case_rb(const tcase & c, const int force_rb) {
    problem P;
    make(P, c);
    upload(P);
    const tq_fa_decode_args a = args_of(P, P.dk, P.dv);
    char desc[256];
    snprintf(desc, sizeof desc, "%s/%s D=%3d G=%d tok=%d kv=%5d kvh=%d seq=%d %-6s mask=%s off=%d",
             codec_of(c.kb).name, codec_of(c.vb).name, c.D, c.G, c.ntok, c.nkv, c.nkvh, c.nseq,
             c.contig ? "contig" : "inter",
             c.mask == MASK_NONE ? "none" : c.mask == MASK_ONE ? "one " : c.mask == MASK_PER_SEQ ? "seq " : "win ", c.offset);
    if (c.mask == MASK_WINDOW && P.dead_tiles < 2) {
        printf("FAIL %s: %d dead tiles, want at least 2\n", desc, P.dead_tiles);
        release(P);
        return false;
    }
    if (!tq_fa_decode_supported(a)) {
        printf("FAIL %s: not supported\n", desc);
        release(P);
        return false;
    }
    const tq_fa_decode_plan pl = tq_fa_decode_make_plan(a, g_nsm, c.splits, force_rb);
    if (force_rb && pl.RB == tq_fa_decode_make_plan(a, g_nsm, c.splits).RB) {
        release(P);
        return true; // the plan's own RB: run once
    }
    if (pl.RB == 1 && !P.k_dead.empty()) {
        // one-row blocks skip the dead tiles: give them NaN scales that any read would spread
        CK(cudaMemcpy(P.dk, P.k_dead.data(), P.kbytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(P.dv, P.v_dead.data(), P.vbytes, cudaMemcpyHostToDevice));
    }
    float * scratch = nullptr;
    if (pl.scratch_floats) CK(cudaMalloc(&scratch, pl.scratch_floats * sizeof(float)));
    const size_t nout = (size_t) c.nseq * c.ntok * P.nqh * c.D;
    CK(cudaMemset(P.dout, 0xff, nout * sizeof(float))); // NaN: an unwritten output fails
    CK(tq_fa_decode_launch(a, pl, scratch, 0));
    CK(cudaDeviceSynchronize());
    std::vector<float> out(nout);
    CK(cudaMemcpy(out.data(), P.dout, nout * sizeof(float), cudaMemcpyDeviceToHost));
    if (scratch) CK(cudaFree(scratch));

    std::vector<double> ref;
    reference(P, ref);
    double maxref = 0, maxerr = 0;
    size_t bad = 0;
    for (size_t e = 0; e < nout; ++e) {
        maxref = std::max(maxref, fabs(ref[e]));
        const double d = fabs((double) out[e] - ref[e]);
        if (!(d == d)) { ++bad; continue; }
        maxerr = std::max(maxerr, d);
    }
    const double rel = maxref > 0 ? maxerr / maxref : maxerr;
    const bool ok = bad == 0 && rel < 1e-3;
    printf("%s %s RB=%d chunks=%d splits=%d: max err %.2e (rel %.2e)%s\n", ok ? "PASS" : "FAIL", desc,
           pl.RB, pl.n_chunks, pl.n_splits, maxerr, rel, bad ? " NaN/unwritten outputs" : "");
    release(P);
    return ok;
}

// decode over n_kv keys in each of nseq sequences, D 128, 8 KV heads, G 4, one token per sequence,
// llama.cpp's interleaved cache layout
static int g_force_rb = 0;
static int g_force_splits = 0;
static int g_reps = 100;
static int g_live = 0; // keys a step sees (the rest masked, as the cells past the used ones); 0: all

static void perf(int id, int nkv, int nseq, int nbuf) {
    tcase c = { id, id, 128, 4, 1, nkv, 8, nseq, false, MASK_ONE, 0, 0 };
    problem P;
    // the codes need not be a real quantization for timing: random bytes with sane scales
    P.tc = c;
    P.nqh = c.G * c.nkvh;
    const codec & cd = codec_of(id);
    P.rowk = P.rowv = (int) (c.D / TQ_BLOCK * cd.block_bytes);
    layout(P.rowk, c, P.nbk1, P.nbk2, P.nbk3);
    layout(P.rowv, c, P.nbv1, P.nbv2, P.nbv3);
    P.kbytes = P.vbytes = (size_t) P.nbk3 * nseq;
    P.scale = 1.0f / sqrtf((float) c.D);
    P.q.resize((size_t) nseq * P.nqh * c.D);
    for (auto & x : P.q) x = grand();
    P.k.resize(P.kbytes);
    for (auto & b : P.k) b = (uint8_t) (urand() * 256);
    for (size_t o = 0; o < P.kbytes; o += cd.block_bytes) { // scales: fp16 in [0.05, 0.5)
        const __half h = __float2half((float) (0.05 + 0.45 * urand()));
        memcpy(&P.k[o], &h, 2);
    }
    P.v = P.k;
    P.nem3 = 1; P.ntokpad = 1; P.nkvpad = nkv;
    P.mask.assign((size_t) nkv, __float2half(0.0f));
    for (int j = g_live > 0 ? g_live : nkv; j < nkv; ++j) P.mask[j] = __float2half(-INFINITY);

    CK(cudaMalloc(&P.dq, P.q.size() * sizeof(float)));
    CK(cudaMemcpy(P.dq, P.q.data(), P.q.size() * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&P.dm, P.mask.size() * sizeof(__half)));
    CK(cudaMemcpy(P.dm, P.mask.data(), P.mask.size() * sizeof(__half), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&P.dout, (size_t) nseq * P.nqh * c.D * sizeof(float)));
    // nbuf copies of K and V: with more than the L2 holds, every call reads device memory
    std::vector<uint8_t *> kb(nbuf), vb(nbuf);
    for (int n = 0; n < nbuf; ++n) {
        CK(cudaMalloc(&kb[n], P.kbytes));
        CK(cudaMalloc(&vb[n], P.vbytes));
        CK(cudaMemcpy(kb[n], P.k.data(), P.kbytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(vb[n], P.v.data(), P.vbytes, cudaMemcpyHostToDevice));
    }
    const tq_fa_decode_args a0 = args_of(P, kb[0], vb[0]);
    const tq_fa_decode_plan pl = tq_fa_decode_make_plan(a0, g_nsm, g_force_splits, g_force_rb);
    float * scratch = nullptr;
    if (pl.scratch_floats) CK(cudaMalloc(&scratch, pl.scratch_floats * sizeof(float)));

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int reps = g_reps;
    for (int w = 0; w < 10; ++w) CK(tq_fa_decode_launch(args_of(P, kb[w % nbuf], vb[w % nbuf]), pl, scratch, 0));
    CK(cudaEventRecord(e0));
    for (int r = 0; r < reps; ++r) CK(tq_fa_decode_launch(args_of(P, kb[r % nbuf], vb[r % nbuf]), pl, scratch, 0));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = 1e3 * ms / reps;
    const double bytes = (double) (P.kbytes + P.vbytes);
    printf("perf %s/%s D=128 G=4 kvh=8 tok=1 kv=%d%s%s (%s): %.2f us, %.0f GB/s of K+V codes (%.1f MB), RB=%d chunks=%d splits=%d grid=%d blocks, %d blocks/SM\n",
           cd.name, cd.name, nkv, nseq > 1 ? (" seqs=" + std::to_string(nseq)).c_str() : "",
           g_live > 0 && g_live < nkv ? (" live=" + std::to_string(g_live)).c_str() : "",
           nbuf > 1 ? "rotating buffers, from device memory" : "same buffers, L2-resident if they fit",
           us, bytes / us * 1e-3, bytes * 1e-6, pl.RB, pl.n_chunks, pl.n_splits, pl.n_chunks * c.nkvh * pl.n_splits * nseq, pl.blocks_per_sm);

    if (id == TQ3 && nbuf > 1) {
        // the copy bandwidth for the same byte count, from rotating buffers too
        std::vector<uint8_t *> dstb(nbuf);
        for (int n = 0; n < nbuf; ++n) CK(cudaMalloc(&dstb[n], P.kbytes + P.vbytes));
        for (int w = 0; w < 10; ++w) {
            CK(cudaMemcpyAsync(dstb[w % nbuf], kb[w % nbuf], P.kbytes, cudaMemcpyDeviceToDevice, 0));
        }
        CK(cudaEventRecord(e0));
        for (int r = 0; r < reps; ++r) {
            CK(cudaMemcpyAsync(dstb[r % nbuf], kb[r % nbuf], P.kbytes, cudaMemcpyDeviceToDevice, 0));
            CK(cudaMemcpyAsync(dstb[r % nbuf] + P.kbytes, vb[r % nbuf], P.vbytes, cudaMemcpyDeviceToDevice, 0));
        }
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        const double cus = 1e3 * ms / reps;
        printf("perf d2d cudaMemcpy of the same %.1f MB: %.2f us, %.0f GB/s read (%.0f GB/s read + write)\n",
               bytes * 1e-6, cus, bytes / cus * 1e-3, 2 * bytes / cus * 1e-3);
        for (auto p : dstb) CK(cudaFree(p));
    }

    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    if (scratch) CK(cudaFree(scratch));
    for (int n = 0; n < nbuf; ++n) {
        CK(cudaFree(kb[n]));
        CK(cudaFree(vb[n]));
    }
    CK(cudaFree(P.dq));
    CK(cudaFree(P.dm));
    CK(cudaFree(P.dout));
}

// The key splits (host code, no GPU needed): whole waves where the old "about one wave" rule left a
// second, nearly empty one. Shapes of an 8B model's layer (8 KV heads, one chunk, tiles of 128 keys)
// on 132 SMs with 2 blocks each.
static int check_plans(int & n) {
    struct { const char * what; int ntiles; int64_t base; int tps; } want[] = {
        { "1 x 32K",        256,   8,   8 },  // 32 splits: 256 blocks, one wave
        { "1 x 4K",          32,   8,   1 },  // 32 splits of one tile
        { "4 x 8K",          64,  32,   8 },  // 8 splits: 256 blocks
        { "16 x 8K",         64, 128,  32 },  // 2 splits, not 3 (384 blocks, 1.45 waves)
        { "4 x 32K",        256,  32,  32 },  // 8 splits, not 9 (288 blocks)
        { "32 x 8K",         64, 256,  64 },  // one split: 256 blocks already fill the GPU
        { "64 x 8K",         64, 512,  64 },  // two waves whatever the split: none
        { "one tile",         1,   8,   1 },
        { "1 x 256 RB 1",     2,  32,   2 },  // depth 0: one split; no combine to launch
        { "1 x 512 RB 1",     4,  32,   1 },  // 128 blocks of one tile, and the combine
    };
    int fails = 0;
    n = (int) (sizeof want / sizeof want[0]);
    for (const auto & w : want) {
        const int tps = tq_fa_tiles_per_split(w.ntiles, w.base, 264);
        const bool ok = tps == w.tps;
        fails += ok ? 0 : 1;
        printf("%s plan %-8s: %d tiles per split (%d splits), want %d\n", ok ? "PASS" : "FAIL", w.what, tps,
               (w.ntiles + tps - 1) / tps, w.tps);
    }
    // rows per block: one token, G 4 (4 rows) unless said, 8 KV heads per sequence, tiles of 128 keys
    struct { const char * what; int n_rows; int64_t base; int ntiles; int rb; } want_rb[] = {
        { "1 x 256",      4,   8,   2, 1 },  // depth 0: 64 blocks, not 16
        { "1 x 1K",       4,   8,   8, 1 },  // 256 blocks of one tile
        { "1 x 4K",       4,   8,  32, 4 },  // RB 1 would need 4 waves of one-tile blocks
        { "4 x 512",      4,  32,   4, 2 },
        { "16 x 256",     4, 128,   2, 4 },
        { "1 x 256 G2",   2,   8,   2, 1 },
        { "8 tok x 4K",  32,   2,  32, 4 },
        { "1 row",        1,   8, 256, 1 },
    };
    for (const auto & w : want_rb) {
        const int rb = tq_fa_rows_per_block(w.n_rows, w.base, w.ntiles, [](int) { return (int64_t) 264; });
        const bool ok = rb == w.rb;
        fails += ok ? 0 : 1;
        ++n;
        printf("%s plan %-10s: %d rows per block, want %d\n", ok ? "PASS" : "FAIL", w.what, rb, w.rb);
    }
    return fails;
}

int main(int argc, char ** argv) {
    bool quick = false, do_perf = true, do_tests = true, plans_only = false;
    const char * only = nullptr;
    int perf_seqs = 1, perf_kv = 32768;
    for (int n = 1; n < argc; ++n) {
        if (!strcmp(argv[n], "--quick")) quick = true;
        else if (!strcmp(argv[n], "--plans-only")) plans_only = true;
        else if (!strcmp(argv[n], "--no-perf")) do_perf = false;
        else if (!strcmp(argv[n], "--perf-only")) do_tests = false;
        else if (!strcmp(argv[n], "--type") && n + 1 < argc) only = argv[++n];
        else if (!strcmp(argv[n], "--bits") && n + 1 < argc) { const int b = atoi(argv[++n]); only = b == 2 ? "tq2" : b == 3 ? "tq3" : b == 4 ? "tq4" : "?"; }
        else if (!strcmp(argv[n], "--rb") && n + 1 < argc) g_force_rb = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--reps") && n + 1 < argc) g_reps = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--seqs") && n + 1 < argc) perf_seqs = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--splits") && n + 1 < argc) g_force_splits = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--kv") && n + 1 < argc) perf_kv = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--live") && n + 1 < argc) g_live = atoi(argv[++n]);
        else { printf("usage: %s [--quick] [--plans-only] [--no-perf] [--perf-only] [--type tq2|tq3|tq4|tq3t] [--bits 2|3|4] [--rb 1|2|4] [--reps N] [--seqs S] [--kv N] [--live N] [--splits N]\n", argv[0]); return 2; }
    }
    if (only) {
        int known = 0;
        for (int id = 0; id < NCODECS; ++id) known |= !strcmp(only, codec_of(id).name);
        if (!known) { printf("unknown type '%s' (tq2, tq3, tq4, tq3t)\n", only); return 2; }
    }
    int n_plans = 0;
    const int plan_fails = do_tests ? check_plans(n_plans) : 0;
    if (plans_only) return plan_fails ? 1 : 0;
    int dev = 0;
    CK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    CK(cudaDeviceGetAttribute(&g_nsm, cudaDevAttrMultiProcessorCount, dev));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_nsm, prop.l2CacheSize >> 20);

    int failures = 0, ncases = 0;
    if (do_tests) {
        // every pair the kernel takes (tq_fa_decode_supported)
        const int pairs[7][2] = { { TQ2, TQ2 }, { TQ3, TQ3 }, { TQ4, TQ4 }, { TQ4, TQ3 }, { TQ4, TQ2 }, { TQ3T, TQ3T }, { TQ4, TQ3T } };
        std::vector<tcase> cases;
        for (const auto & pr : pairs) {
            const int kb = pr[0], vb = pr[1];
            for (int D : { 64, 128, 256 }) {
                // kb, vb, D, G, ntok, nkv, nkvh, nseq, contig, mask, offset, splits
                cases.push_back({ kb, vb, D, 1, 1,    1, 2, 1, false, MASK_ONE,     0, 0 });
                cases.push_back({ kb, vb, D, 4, 1,  100, 2, 1, false, MASK_ONE,     0, 0 });
                cases.push_back({ kb, vb, D, 8, 2,  100, 1, 2, true,  MASK_PER_SEQ, 0, 0 });
                cases.push_back({ kb, vb, D, 1, 2,  333, 3, 1, false, MASK_ONE,     2, 0 });
                cases.push_back({ kb, vb, D, 4, 2, 1500, 2, 2, false, MASK_WINDOW,  2, 0 });
                if (quick) continue;
                cases.push_back({ kb, vb, D, 3, 2, 1200, 3, 1, true,  MASK_WINDOW,  0, 1 });
                cases.push_back({ kb, vb, D, 4, 1, 3000, 2, 1, true,  MASK_WINDOW,  0, 1 });
                cases.push_back({ kb, vb, D, 2, 1, 2000, 2, 1, false, MASK_WINDOW,  0, 3 });
                cases.push_back({ kb, vb, D, 1, 8, 4096, 2, 1, false, MASK_ONE,     2, 0 });
                cases.push_back({ kb, vb, D, 4, 8, 4096, 1, 1, true,  MASK_NONE,    0, 0 });
                cases.push_back({ kb, vb, D, 4, 2, 4096, 2, 1, false, MASK_ONE,     0, 1 });
                cases.push_back({ kb, vb, D, 3, 3, 1000, 2, 2, false, MASK_ONE,     0, 7 });
            }
            cases.push_back({ kb, vb, 128, 7, 1,  1000, 2, 1, false, MASK_ONE, 0, 0 });
            if (!quick) cases.push_back({ kb, vb, 128, 4, 1, 32768, 2, 1, false, MASK_ONE, 0, 0 });
        }
        for (const tcase & c : cases) {
            ++ncases;
            failures += run_case(c) ? 0 : 1;
        }
        failures += plan_fails;
        printf("%d cases and %d plans, %d failures\n", ncases, n_plans, failures);
    }
    if (do_perf && !quick) {
        if (perf_seqs < 1 || perf_kv < 1 || (int64_t) perf_seqs * perf_kv > (1 << 22)) {
            printf("--seqs %d --kv %d: want at least one of each and at most 4M keys in all\n", perf_seqs, perf_kv);
            return 2;
        }
        const size_t kv3 = (size_t) 2 * perf_kv * perf_seqs * 8 * 2 * sizeof(block_tq3);
        const int nbuf = (int) std::max<size_t>(2, (4 * (size_t) prop.l2CacheSize) / kv3 + 1);
        for (int id = 0; id < NCODECS; ++id) {
            if (only && strcmp(only, codec_of(id).name)) continue;
            perf(id, perf_kv, perf_seqs, 1);
            perf(id, perf_kv, perf_seqs, nbuf);
        }
    }
    if (do_tests) printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
