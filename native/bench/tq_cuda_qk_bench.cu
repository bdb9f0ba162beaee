// Attention logits q·k over 32K keys, one kernel per key format, to put a measured number on the
// claim "4-bit attention logits are 8x faster than 32-bit keys on an H100" (issue 4). No llama.cpp:
//   nvcc -arch=sm_90 -std=c++17 -O2 -Inative/include -Inative/cuda native/bench/tq_cuda_qk_bench.cu libtq_native.a -o tq_cuda_qk_bench
//
// Problem: 8 KV heads x 32768 keys of 128 values, 4 query heads per KV head (GQA 4, Llama-3.1-8B's
// attention at depth 32K), one token: 1M logits written as f32. Every kernel has the same shape
// (8 lanes per key, each lane 8 values of each 64-value half, 4 keys per warp, the G query heads of
// a KV head served by one read of the key, 3 shuffles to reduce), so the formats differ only in
// what a lane loads and how it turns bytes into products:
//   f32, f16          float FMAs on the float query
//   q8_0              dp4a against a q8 query (int8 per 32 values + a float scale), as ggml does
//   tq4, tq3 (float)  centroid from a shared table times the float query (the decode kernel's way)
//   tq4, tq3 (int8)   the codes pick int8 centroids with one byte permute per 4 values, then dp4a
//                     against the q8 query: the instruction count the tq decode kernel could reach
// Each kernel is checked against float64 logits of the decoded keys (max |err| / rms(logits):
// float paths < 1e-4; int8 paths < 0.06, the q8 query's rounding), then timed: 100 calls after 10
// warm-ups, once L2-resident (the same buffers; test-backend-ops perf measures this way) and once
// over rotating copies larger than 4x the L2 (device memory). The q8 query is made on the host:
// per token it costs one tiny kernel, not per key.
#include "tq-common.cuh"

#include "tq-ggml.h"
#include "../tests/tq_cuda_test_util.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

constexpr int D = 128, G = 4, NKVH = 8, LANES = 8;
constexpr int QK8 = 32;

enum fmt { F32, F16, Q8_0, TQ4F, TQ3F, TQ4I, TQ3I, NFMT };
static const char * FMT_NAME[NFMT] = { "f32", "f16", "q8_0", "tq4 (float lookup)", "tq3 (float lookup)",
                                       "tq4 (int8 permute + dp4a)", "tq3 (int8 permute + dp4a)" };
static const int FMT_ROW[NFMT] = { 4 * D, 2 * D, (D / QK8) * 34, (D / 64) * (int) sizeof(block_tq4),
                                   (D / 64) * (int) sizeof(block_tq3), (D / 64) * (int) sizeof(block_tq4),
                                   (D / 64) * (int) sizeof(block_tq3) };
static bool fmt_int8(int f) { return f == Q8_0 || f == TQ4I || f == TQ3I; }


// int8 centroid tables: code k -> round(c_k * 127 / max|c|), four codes per word
struct i8_table { uint32_t w[4]; float inv; };
static i8_table make_i8_table(const float * cb, int n) {
    float m = 0;
    for (int k = 0; k < n; ++k) m = std::max(m, fabsf(cb[k]));
    i8_table t = {};
    for (int k = 0; k < n; ++k) {
        const int v = (int) lrintf(cb[k] * 127.0f / m);
        t.w[k / 4] |= (uint32_t) (uint8_t) (int8_t) v << (8 * (k % 4));
    }
    t.inv = m / 127.0f;
    return t;
}

struct kargs {
    const uint8_t * K;      // [NKVH][nkv][row]
    const float   * qf;     // [NKVH*G][D]
    const int8_t  * qi;     // [NKVH*G][D]
    const float   * qs;     // [NKVH*G][D/32]
    float         * out;    // [NKVH*G][nkv]
    int nkv;
    i8_table tab;
};

static __device__ __forceinline__ uint32_t ld_u32_b2(const uint8_t * p) { return tq_cuda_load_u32(p); }

// 4 codes (bytes < 8) -> a byte-permute selector (nibbles)
static __device__ __forceinline__ uint32_t sel_of(const uint32_t w) {
    const uint32_t y = (w | (w >> 4)) & 0x00ff00ffu;
    return y | (y >> 8);
}

// int8 centroids of 4 codes: one permute for 3 bits; two and a byte select for 4 bits
template <int bits>
static __device__ __forceinline__ int i8_centroids(const uint32_t w, const uint32_t * tab) {
    if constexpr (bits == 3) {
        return (int) __byte_perm(tab[0], tab[1], sel_of(w));
    } else {
        const uint32_t s  = sel_of(w & 0x07070707u);
        const uint32_t lo = __byte_perm(tab[0], tab[1], s);
        const uint32_t hi = __byte_perm(tab[2], tab[3], s);
        const uint32_t m  = ((w >> 3) & 0x01010101u) * 0xffu;
        return (int) ((hi & m) | (lo & ~m));
    }
}

template <int F>
__global__ void __launch_bounds__(128) qk_kernel(const kargs a) {
    const int h    = blockIdx.y;
    const int lane = threadIdx.x & 31;
    const int t    = lane & (LANES - 1);
    const int sub  = lane / LANES;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int nwarps = (gridDim.x * blockDim.x) >> 5;
    constexpr int row = F == F32 ? 4 * D : F == F16 ? 2 * D : F == Q8_0 ? (D / QK8) * 34
                      : (F == TQ4F || F == TQ4I) ? (D / 64) * (int) sizeof(block_tq4) : (D / 64) * (int) sizeof(block_tq3);
    constexpr int bits = (F == TQ4F || F == TQ4I) ? 4 : 3;

    __shared__ float cb[16];
    if constexpr (F == TQ4F || F == TQ3F) {
        if (threadIdx.x < (1 << bits)) cb[threadIdx.x] = tq_cuda_centroid<bits>(threadIdx.x);
        __syncthreads();
    }
    // the lane's query values 64c + 8t + i (c = 0, 1; i = 0..7) for the G heads
    float qf[G][16];
    int   qi[G][4];
    float qs[G][2];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const int qh = h * G + g;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#pragma unroll
            for (int i = 0; i < 8; ++i) qf[g][8 * c + i] = a.qf[(size_t) qh * D + 64 * c + 8 * t + i];
            const int * qiw = (const int *) (a.qi + (size_t) qh * D + 64 * c + 8 * t);
            qi[g][2 * c] = qiw[0];
            qi[g][2 * c + 1] = qiw[1];
            qs[g][c] = a.qs[(size_t) qh * (D / QK8) + (64 * c + 8 * t) / QK8];
        }
    }

    for (int k = warp * 4 + sub; k < a.nkv; k += nwarps * 4) {
        const uint8_t * r = a.K + ((size_t) h * a.nkv + k) * row;
        float acc[G];
#pragma unroll
        for (int g = 0; g < G; ++g) acc[g] = 0.0f;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            if constexpr (F == F32) {
                const float4 k0 = *(const float4 *) (r + 4 * (64 * c + 8 * t));
                const float4 k1 = *(const float4 *) (r + 4 * (64 * c + 8 * t + 4));
                const float kv[8] = { k0.x, k0.y, k0.z, k0.w, k1.x, k1.y, k1.z, k1.w };
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[g] += qf[g][8 * c + i] * kv[i];
            } else if constexpr (F == F16) {
                const uint4 raw = *(const uint4 *) (r + 2 * (64 * c + 8 * t));
                const __half2 * h2 = (const __half2 *) &raw;
                float kv[8];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 f = __half22float2(h2[i]);
                    kv[2 * i] = f.x;
                    kv[2 * i + 1] = f.y;
                }
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[g] += qf[g][8 * c + i] * kv[i];
            } else if constexpr (F == Q8_0) {
                const int b = 2 * c + (t >> 2);
                const uint8_t * blk = r + 34 * b;
                const float d = __half2float(__ushort_as_half(*(const uint16_t *) blk));
                const int k0 = (int) ld_u32_b2(blk + 2 + 8 * (t & 3));
                const int k1 = (int) ld_u32_b2(blk + 2 + 8 * (t & 3) + 4);
#pragma unroll
                for (int g = 0; g < G; ++g) acc[g] += d * qs[g][c] * (float) __dp4a(k1, qi[g][2 * c + 1], __dp4a(k0, qi[g][2 * c], 0));
            } else {
                using block_t = std::conditional_t<bits == 4, block_tq4, block_tq3>;
                const block_t * blk = (const block_t *) (r + c * sizeof(block_t));
                const float d = tq_cuda_half(blk->d);
                const uint32_t w0 = tq_cuda_traits<block_t>::codes4(blk, 8 * t);
                const uint32_t w1 = tq_cuda_traits<block_t>::codes4(blk, 8 * t + 4);
                if constexpr (F == TQ4F || F == TQ3F) {
                    float kv[8];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        kv[i]     = cb[(w0 >> (8 * i)) & 0xff];
                        kv[4 + i] = cb[(w1 >> (8 * i)) & 0xff];
                    }
#pragma unroll
                    for (int g = 0; g < G; ++g) {
                        float s = 0.0f;
#pragma unroll
                        for (int i = 0; i < 8; ++i) s += qf[g][8 * c + i] * kv[i];
                        acc[g] += d * s;
                    }
                } else {
                    const int c0 = i8_centroids<bits>(w0, a.tab.w);
                    const int c1 = i8_centroids<bits>(w1, a.tab.w);
#pragma unroll
                    for (int g = 0; g < G; ++g) acc[g] += d * qs[g][c] * (float) __dp4a(c1, qi[g][2 * c + 1], __dp4a(c0, qi[g][2 * c], 0));
                }
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int o = LANES / 2; o > 0; o >>= 1) acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], o);
        }
        if (t == 0) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float s = (F == TQ4I || F == TQ3I) ? a.tab.inv : 1.0f;
                a.out[(size_t) (h * G + g) * a.nkv + k] = acc[g] * s;
            }
        }
    }
}

static void launch(int f, const kargs & a, int grid_x) {
    const dim3 grid(grid_x, NKVH), block(128);
    switch (f) {
        case F32:  qk_kernel<F32><<<grid, block>>>(a); break;
        case F16:  qk_kernel<F16><<<grid, block>>>(a); break;
        case Q8_0: qk_kernel<Q8_0><<<grid, block>>>(a); break;
        case TQ4F: qk_kernel<TQ4F><<<grid, block>>>(a); break;
        case TQ3F: qk_kernel<TQ3F><<<grid, block>>>(a); break;
        case TQ4I: qk_kernel<TQ4I><<<grid, block>>>(a); break;
        case TQ3I: qk_kernel<TQ3I><<<grid, block>>>(a); break;
    }
}

// one row of D values in format f, and its decoded values
static void encode_row(int f, const float * x, uint8_t * dst, float * dec) {
    switch (f) {
        case F32:
            memcpy(dst, x, 4 * D);
            memcpy(dec, x, 4 * D);
            break;
        case F16:
            for (int i = 0; i < D; ++i) {
                const __half hv = __float2half(x[i]);
                memcpy(dst + 2 * i, &hv, 2);
                dec[i] = __half2float(hv);
            }
            break;
        case Q8_0:
            for (int b = 0; b < D / QK8; ++b) {
                float m = 0;
                for (int i = 0; i < QK8; ++i) m = std::max(m, fabsf(x[QK8 * b + i]));
                const __half dh = __float2half(m / 127.0f);
                const float d = __half2float(dh);
                memcpy(dst + 34 * b, &dh, 2);
                for (int i = 0; i < QK8; ++i) {
                    const int v = d > 0 ? (int) lrintf(x[QK8 * b + i] / d) : 0;
                    dst[34 * b + 2 + i] = (uint8_t) (int8_t) std::max(-127, std::min(127, v));
                    dec[QK8 * b + i] = d * (float) (int8_t) dst[34 * b + 2 + i];
                }
            }
            break;
        case TQ4F: case TQ4I:
            tq_ggml_quantize_row_tq4(x, dst, D);
            tq_ggml_dequantize_row_tq4(dst, dec, D);
            break;
        case TQ3F: case TQ3I:
            tq_ggml_quantize_row_tq3(x, dst, D);
            tq_ggml_dequantize_row_tq3(dst, dec, D);
            break;
    }
}

int main(int argc, char ** argv) {
    int nkv = 32768, reps = 100;
    for (int n = 1; n < argc; ++n) {
        if (!strcmp(argv[n], "--nkv") && n + 1 < argc) nkv = atoi(argv[++n]);
        else if (!strcmp(argv[n], "--reps") && n + 1 < argc) reps = atoi(argv[++n]);
        else { printf("usage: %s [--nkv N (multiple of 4)] [--reps N]\n", argv[0]); return 2; }
    }
    if (nkv <= 0 || nkv % 4) { printf("--nkv must be a positive multiple of 4\n"); return 2; }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int nsm = 0;
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    printf("device: %s, %d SMs, L2 %d MB; logits of %d query heads (GQA %d) over %d keys of %d values\n",
           prop.name, nsm, prop.l2CacheSize >> 20, NKVH * G, G, nkv, D);

    // keys: Gaussian; query: Gaussian, also as q8 (int8 per 32 values + scale)
    std::vector<float> keys((size_t) NKVH * nkv * D), q((size_t) NKVH * G * D);
    for (auto & x : keys) x = grand();
    for (auto & x : q) x = grand();
    std::vector<int8_t> qi(q.size());
    std::vector<float> qs(q.size() / QK8);
    for (size_t b = 0; b < qs.size(); ++b) {
        float m = 0;
        for (int i = 0; i < QK8; ++i) m = std::max(m, fabsf(q[QK8 * b + i]));
        qs[b] = m / 127.0f;
        for (int i = 0; i < QK8; ++i) qi[QK8 * b + i] = (int8_t) lrintf(q[QK8 * b + i] / qs[b]);
    }
    float *dqf, *dqs, *dout;
    int8_t * dqi;
    CK(cudaMalloc(&dqf, q.size() * 4));
    CK(cudaMalloc(&dqi, qi.size()));
    CK(cudaMalloc(&dqs, qs.size() * 4));
    CK(cudaMalloc(&dout, (size_t) NKVH * G * nkv * 4));
    CK(cudaMemcpy(dqf, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dqi, qi.data(), qi.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dqs, qs.data(), qs.size() * 4, cudaMemcpyHostToDevice));
    float cb4[16], cb3[8];  // the codebooks are device tables under nvcc
    CK(cudaMemcpyFromSymbol(cb4, TQ_CODEBOOK_4, sizeof(cb4)));
    CK(cudaMemcpyFromSymbol(cb3, TQ_CODEBOOK_3, sizeof(cb3)));
    const i8_table tab4 = make_i8_table(cb4, 16), tab3 = make_i8_table(cb3, 8);
    const int grid_x = std::max(1, std::min(nkv / 4 / 4, 4 * nsm / NKVH * 16 / 4));

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double us_f32 = 0, us_f16 = 0;
    int failures = 0;
    std::vector<float> dec(D), out((size_t) NKVH * G * nkv);
    for (int f = 0; f < NFMT; ++f) {
        const size_t row = FMT_ROW[f], bytes = (size_t) NKVH * nkv * row;
        std::vector<uint8_t> K(bytes);
        std::vector<double> ref((size_t) NKVH * G * nkv);
        for (int h = 0; h < NKVH; ++h) {
            for (int k = 0; k < nkv; ++k) {
                const size_t r = (size_t) h * nkv + k;
                encode_row(f, &keys[r * D], &K[r * row], dec.data());
                for (int g = 0; g < G; ++g) {
                    double s = 0;
                    for (int i = 0; i < D; ++i) s += (double) q[(size_t) (h * G + g) * D + i] * dec[i];
                    ref[(size_t) (h * G + g) * nkv + k] = s;
                }
            }
        }
        const int nbuf = (int) std::max<size_t>(2, 4 * (size_t) prop.l2CacheSize / bytes + 1);
        std::vector<uint8_t *> kb(nbuf);
        for (auto & p : kb) {
            CK(cudaMalloc(&p, bytes));
            CK(cudaMemcpy(p, K.data(), bytes, cudaMemcpyHostToDevice));
        }
        kargs a = { kb[0], dqf, dqi, dqs, dout, nkv, f == TQ4I ? tab4 : tab3 };
        CK(cudaMemset(dout, 0xff, out.size() * 4));  // NaN: every logit must be written
        launch(f, a, grid_x);
        CK(cudaGetLastError());
        CK(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost));
        double maxerr = 0, ss = 0;
        size_t bad = 0;
        for (size_t i = 0; i < out.size(); ++i) {
            if (!std::isfinite(out[i])) { ++bad; continue; }
            maxerr = std::max(maxerr, fabs(out[i] - ref[i]));
            ss += ref[i] * ref[i];
        }
        const double rel = maxerr / sqrt(ss / out.size());
        const bool ok = bad == 0 && rel < (fmt_int8(f) ? 0.06 : 1e-4);
        failures += !ok;

        double us[2];
        for (int mode = 0; mode < 2; ++mode) {  // 0: same buffer (L2), 1: rotating (device memory)
            for (int w = 0; w < 10; ++w) { a.K = kb[mode ? w % nbuf : 0]; launch(f, a, grid_x); }
            CK(cudaEventRecord(e0));
            for (int r = 0; r < reps; ++r) { a.K = kb[mode ? r % nbuf : 0]; launch(f, a, grid_x); }
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            us[mode] = 1e3 * ms / reps;
        }
        if (f == F32) us_f32 = us[1];
        if (f == F16) us_f16 = us[1];
        printf("%s %-26s %6.2f bits/value, keys %6.1f MB: %8.2f us from memory (%5.0f GB/s of keys), %8.2f us L2-resident;"
               " %5.2fx f32, %5.2fx f16; max err / rms %.1e\n",
               ok ? "PASS" : "FAIL", FMT_NAME[f], 8.0 * row / D, bytes * 1e-6, us[1], bytes / us[1] * 1e-3, us[0],
               us_f32 / us[1], us_f16 > 0 ? us_f16 / us[1] : 0.0, rel);
        for (auto p : kb) CK(cudaFree(p));
    }
    {   // the card's copy bandwidth over buffers larger than the L2
        const size_t bytes = (size_t) 256 << 20;
        uint8_t *s, *d;
        CK(cudaMalloc(&s, bytes));
        CK(cudaMalloc(&d, bytes));
        CK(cudaMemcpy(d, s, bytes, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e0));
        for (int r = 0; r < 20; ++r) CK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        printf("copy: cudaMemcpy d2d of 256 MiB: %.0f GB/s read (%.0f GB/s read + write)\n",
               20.0 * bytes / (ms * 1e-3) * 1e-9, 40.0 * bytes / (ms * 1e-3) * 1e-9);
        CK(cudaFree(s));
        CK(cudaFree(d));
    }
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
