// Every CUDA path of native/cuda against the C codec, byte for byte: the single-thread block
// quantizers (CPY F32->tq), the half-warp quantizers (SET_ROWS; for tq2t/tq3t the Viterbi search
// with one trellis state per lane), the pair dequantizers (to_fp16 / to_fp32 / GET_ROWS, QJL and
// trellis types included), the whole-tensor conversions (to_fp32 / to_fp16, contiguous and strided),
// the flash-attention V reader; and the K.Q reader against the C dot
// within rounding. Run on the GPU machine by benchmarks/gpu_bench.sh:
//   nvcc -arch=sm_90 -std=c++17 -use_fast_math -Inative/include -Inative/cuda \
//        native/tests/tq_cuda_selftest.cu libtq_native.a -o tq_cuda_selftest && ./tq_cuda_selftest [blocks]
// (-use_fast_math as ggml-cuda builds; the data holds no float denormals, which it would flush.)
#include "tq-quantize.cuh"
#include "tq-convert.cuh"
#include "tq-fattn.cuh"

#include "tq-ggml.h"

#define TQ_TEST_SEED 0x1234567ull
#include "tq_cuda_test_util.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>


template <typename block_t, void (*q)(const float *, block_t *)>
__global__ void k_quant1(const float * x, block_t * y, int nb) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < nb) q(x + (size_t) i * TQ_BLOCK, y + i);
}

template <typename block_t>
__global__ void k_quant16(const float * x, block_t * y, int nb) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) / 16;
    const bool valid = i < nb;
    tq_cuda_quantize_block16<block_t>(valid ? x + (size_t) i * TQ_BLOCK : x, valid ? y + i : y, valid);
}

template <void (*dq)(const void *, int64_t, int, float2 &)>
__global__ void k_pairs(const void * y, float * x, int nb) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x; // pair index
    if (i >= nb * TQ_BLOCK / 2) return;
    float2 v;
    dq(y, i / (TQ_BLOCK / 2), 2 * (i % (TQ_BLOCK / 2)), v);
    x[2 * i] = v.x;
    x[2 * i + 1] = v.y;
}

template <typename block_t>
__global__ void k_vread(const void * y, float * x, int nb) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x; // 4 values per thread
    if (i >= nb * TQ_BLOCK / 4) return;
    tq_cuda_dequantize_V<block_t, float, 4>(y, x + 4 * i, 4 * (int64_t) i);
}

// one row of D = 128 per 8-thread group: the F16 query layout (thread t: values 64c + 8t .. +7)
template <typename block_t>
__global__ void k_dot(const void * y, const float * q, float * out, int nrows) {
    const int g = (blockIdx.x * blockDim.x + threadIdx.x) / 8;
    const int t = threadIdx.x % 8;
    float2 Q[8];
    const int row = g < nrows ? g : 0;
    for (int c = 0; c < 2; ++c)
        for (int k = 0; k < 4; ++k)
            Q[4 * c + k] = make_float2(q[(size_t) row * 128 + 64 * c + 8 * t + 2 * k], q[(size_t) row * 128 + 64 * c + 8 * t + 2 * k + 1]);
    float s = tq_cuda_vec_dot_KQ<block_t, 128, 8>((const char *) ((const block_t *) y + 2 * row), Q);
    for (int o = 4; o >= 1; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o, 8);
    if (g < nrows && t == 0) out[g] = s;
}


struct type_info {
    const char * name;
    size_t bytes;
    void (*ref_q)(const float *, void *, int64_t);
    void (*ref_dq)(const void *, float *, int64_t);
};

static int failures = 0;
static void report(const char * what, const char * type, size_t bad, size_t n) {
    printf("%-5s %-36s %s (%zu of %zu differ)\n", type, what, bad ? "FAIL" : "ok", bad, n);
    if (bad) failures++;
}

template <typename block_t, void (*q1)(const float *, block_t *), void (*dq)(const void *, int64_t, int, float2 &), bool warp, bool vkq>
static void check(const type_info & ti, const std::vector<float> & x, int nb) {
    const size_t n = (size_t) nb * TQ_BLOCK;
    std::vector<uint8_t> ref(nb * ti.bytes), got(nb * ti.bytes);
    ti.ref_q(x.data(), ref.data(), (int64_t) n);
    float * dx; block_t * dy; float * dv;
    CK(cudaMalloc(&dx, n * sizeof(float)));
    CK(cudaMalloc(&dy, nb * sizeof(block_t)));
    CK(cudaMalloc(&dv, n * sizeof(float)));
    CK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));

    auto cmp_bytes = [&](const char * what) {
        CK(cudaMemcpy(got.data(), dy, nb * sizeof(block_t), cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (int i = 0; i < nb; i++) bad += memcmp(&ref[i * ti.bytes], &got[i * ti.bytes], ti.bytes) != 0;
        report(what, ti.name, bad, nb);
    };
    CK(cudaMemset(dy, 0xff, nb * sizeof(block_t)));
    k_quant1<block_t, q1><<<(nb + 127) / 128, 128>>>(dx, dy, nb);
    CK(cudaDeviceSynchronize());
    cmp_bytes("quantize, one thread per block");
    if constexpr (warp) {
        CK(cudaMemset(dy, 0xff, nb * sizeof(block_t)));
        k_quant16<block_t><<<(nb * 16 + 255) / 256, 256>>>(dx, dy, nb);
        CK(cudaDeviceSynchronize());
        cmp_bytes("quantize, 16 lanes per block");
        // the time of one decode step's write (16 blocks: 8 heads of 128) and of a long prefill's,
        // launch included, averaged over back-to-back launches
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        for (int m : {16, nb}) {
            const int reps = m == 16 ? 2000 : 20;
            float ms1 = 0, ms16 = 0;
            CK(cudaEventRecord(e0));
            for (int r = 0; r < reps; r++) k_quant1<block_t, q1><<<(m + 127) / 128, 128>>>(dx, dy, m);
            CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1)); CK(cudaEventElapsedTime(&ms1, e0, e1));
            CK(cudaEventRecord(e0));
            for (int r = 0; r < reps; r++) k_quant16<block_t><<<(m * 16 + 255) / 256, 256>>>(dx, dy, m);
            CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1)); CK(cudaEventElapsedTime(&ms16, e0, e1));
            printf("perf  %-5s quantize %6d blocks: one thread per block %9.2f us, 16 lanes per block %9.2f us\n",
                   ti.name, m, 1e3 * ms1 / reps, 1e3 * ms16 / reps);
        }
        CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
    }

    // decoders on the reference bytes
    std::vector<float> want(n), have(n);
    ti.ref_dq(ref.data(), want.data(), (int64_t) n);
    CK(cudaMemcpy(dy, ref.data(), nb * sizeof(block_t), cudaMemcpyHostToDevice));
    auto cmp_vals = [&](const char * what) {
        CK(cudaMemcpy(have.data(), dv, n * sizeof(float), cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += memcmp(&want[i], &have[i], 4) != 0 && !(std::isnan(want[i]) && std::isnan(have[i]));
        report(what, ti.name, bad, n);
    };
    k_pairs<dq><<<(int) ((n / 2 + 255) / 256), 256>>>(dy, dv, nb);
    CK(cudaDeviceSynchronize());
    cmp_vals("dequantize pairs (get_rows)");
    CK(cudaMemset(dv, 0xff, n * sizeof(float)));
    tq_cuda_convert_cont<dq, float>(dy, dv, (int64_t) n, 0);
    CK(cudaDeviceSynchronize());
    cmp_vals("convert, 8 per thread (to_fp32)");
    {
        // to_fp16, contiguous and through strides: rows of 2 blocks, (i01, i02) from block 4 i01 + 2 i02
        half * dh;
        CK(cudaMalloc(&dh, n * sizeof(half)));
        std::vector<half> h(n);
        auto cmp_half = [&](const char * what, auto src_of) {
            CK(cudaMemcpy(h.data(), dh, n * sizeof(half), cudaMemcpyDeviceToHost));
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) {
                const float w = want[src_of(i)];
                const half r = __float2half_rn(w);
                bad += std::isnan(w) ? !std::isnan(__half2float(h[i])) : memcmp(&h[i], &r, sizeof(half)) != 0;
            }
            report(what, ti.name, bad, n);
        };
        CK(cudaMemset(dh, 0xff, n * sizeof(half)));
        tq_cuda_convert_cont<dq, half>(dy, dh, (int64_t) n, 0);
        CK(cudaDeviceSynchronize());
        cmp_half("convert, 8 per thread (to_fp16)", [](size_t i) { return i; });
        const int64_t ne01 = nb / 4;
        CK(cudaMemset(dh, 0xff, n * sizeof(half)));
        tq_cuda_convert_nc<dq, half>(dy, dh, 128, ne01, 2, 1, 4, 2, 4 * ne01, 0);
        CK(cudaDeviceSynchronize());
        cmp_half("convert, 8 per thread (to_fp16, strided)", [&](size_t i) {
            const size_t i00 = i % 128, i01 = (i / 128) % ne01, i02 = i / (128 * ne01);
            return (4 * i01 + 2 * i02) * TQ_BLOCK + i00;
        });
        CK(cudaFree(dh));
    }
    if constexpr (vkq) {
        k_vread<block_t><<<(int) ((n / 4 + 255) / 256), 256>>>(dy, dv, nb);
        CK(cudaDeviceSynchronize());
        cmp_vals("flash-attention V reader");

        // K.Q, rows of 128, against the C dot of the decoded row: rounding only
        const int nrows = nb / 2;
        std::vector<float> q(n), dots(nrows);
        for (auto & v : q) v = grand();
        float * dq_; float * dout;
        CK(cudaMalloc(&dq_, n * sizeof(float)));
        CK(cudaMalloc(&dout, nrows * sizeof(float)));
        CK(cudaMemcpy(dq_, q.data(), n * sizeof(float), cudaMemcpyHostToDevice));
        k_dot<block_t><<<(nrows * 8 + 127) / 128, 128>>>(dy, dq_, dout, nrows);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(dots.data(), dout, nrows * sizeof(float), cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (int r = 0; r < nrows; r++) {
            double s = 0, a = 0;
            for (int j = 0; j < 128; j++) { s += (double) q[r * 128 + j] * want[r * 128 + j]; a += fabs((double) q[r * 128 + j] * want[r * 128 + j]); }
            const double tol = 2 * 128 * 6e-8 * a + 1e-30;
            if (std::isnan(s) ? !std::isnan(dots[r]) : fabs(dots[r] - s) > tol) bad++;
        }
        report("flash-attention K.Q (rounding bound)", ti.name, bad, nrows);
        CK(cudaFree(dq_)); CK(cudaFree(dout));
    }
    CK(cudaFree(dx)); CK(cudaFree(dy)); CK(cudaFree(dv));
}

// The conversion a prefill over a 32K cache runs per layer and side (Llama-3.1-8B: 8 KV heads of
// 128): 32768 x 1024 values to f16, 8 values per thread against 2 (ggml-cuda's generic pattern),
// next to a device copy of the f16 bytes; the codes are the reference bytes repeated.
template <void (*dq)(const void *, int64_t, int, float2 &)>
static void perf_convert(const char * name, size_t block_bytes, const std::vector<float> & x, void (*ref_q)(const float *, void *, int64_t)) {
    const int64_t nb_small = (int64_t) x.size() / TQ_BLOCK, nb = 32768 * 1024 / TQ_BLOCK;
    std::vector<uint8_t> small(nb_small * block_bytes), codes(nb * block_bytes);
    ref_q(x.data(), small.data(), (int64_t) x.size());
    for (int64_t i = 0; i < nb; i++) memcpy(&codes[i * block_bytes], &small[(i % nb_small) * block_bytes], block_bytes);
    void * dy; half * dh; half * dh2;
    const size_t n = (size_t) nb * TQ_BLOCK;
    CK(cudaMalloc(&dy, codes.size()));
    CK(cudaMalloc(&dh, n * sizeof(half)));
    CK(cudaMalloc(&dh2, n * sizeof(half)));
    CK(cudaMemcpy(dy, codes.data(), codes.size(), cudaMemcpyHostToDevice));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    const int reps = 50;
    float ms[3];
    for (int round = 0; round < 2; round++) { // the first round warms up
        for (int which = 0; which < 3; which++) {
            CK(cudaEventRecord(e0));
            for (int r = 0; r < reps; r++) {
                if (which == 0) {
                    tq_cuda_convert_cont<dq, half>(dy, dh, (int64_t) n, 0);
                } else if (which == 1) {
                    tq_cuda_convert_launch<dq, 2, half>(dy, dh, (int64_t) n, 1, 1, 1, nb, nb, nb, 0);
                } else {
                    CK(cudaMemcpyAsync(dh2, dh, n * sizeof(half), cudaMemcpyDeviceToDevice));
                }
            }
            CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1)); CK(cudaEventElapsedTime(&ms[which], e0, e1));
        }
    }
    const double us8 = 1e3 * ms[0] / reps, us2 = 1e3 * ms[1] / reps, usc = 1e3 * ms[2] / reps;
    printf("perf  %-5s to_fp16 of %lld values: 8 per thread %7.2f us (%4.0f GB/s), 2 per thread %7.2f us (%4.0f GB/s);"
           " device copy of the f16 %7.2f us (%4.0f GB/s read+write)\n", name, (long long) n,
           us8, (codes.size() + 2.0 * n) / us8 / 1e3, us2, (codes.size() + 2.0 * n) / us2 / 1e3, usc, 4.0 * n / usc / 1e3);
    CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
    CK(cudaFree(dy)); CK(cudaFree(dh)); CK(cudaFree(dh2));
}

int main(int argc, char ** argv) {
    const int nb = argc > 1 ? atoi(argv[1]) & ~1 : 1 << 15; // blocks (even: K.Q takes rows of two)
    std::vector<float> x((size_t) nb * TQ_BLOCK);
    for (int i = 0; i < nb; i++) {
        float * b = &x[(size_t) i * TQ_BLOCK];
        // scales from 1e-8 to 1e6 (no float denormals anywhere: -use_fast_math flushes them)
        const float s = (float) pow(10.0, -8.0 + 14.0 * urand());
        for (int j = 0; j < TQ_BLOCK; j++) b[j] = s * grand();
        if (i % 97 == 1) memset(b, 0, TQ_BLOCK * sizeof(float));                 // zero block
        if (i % 101 == 2) b[i % TQ_BLOCK] = NAN;                               // non-finite
        if (i % 103 == 3) for (int j = 0; j < TQ_BLOCK; j++) b[j] = 1e6f * grand(); // past fp16
        if (i % 107 == 4) for (int j = 0; j < TQ_BLOCK; j++) b[j] = (float) ((j % 7) - 3); // ties on a grid
    }
    const type_info tq2 = {"tq2", sizeof(block_tq2), tq_ggml_quantize_row_tq2_ref, tq_ggml_dequantize_row_tq2};
    const type_info tq3 = {"tq3", sizeof(block_tq3), tq_ggml_quantize_row_tq3_ref, tq_ggml_dequantize_row_tq3};
    const type_info tq4 = {"tq4", sizeof(block_tq4), tq_ggml_quantize_row_tq4_ref, tq_ggml_dequantize_row_tq4};
    const type_info tq3j = {"tq3j", sizeof(block_tq3j), tq_ggml_quantize_row_tq3j_ref, tq_ggml_dequantize_row_tq3j};
    const type_info tq4j = {"tq4j", sizeof(block_tq4j), tq_ggml_quantize_row_tq4j_ref, tq_ggml_dequantize_row_tq4j};
    const type_info tq2t = {"tq2t", sizeof(block_tq2t), tq_ggml_quantize_row_tq2t_ref, tq_ggml_dequantize_row_tq2t};
    const type_info tq3t = {"tq3t", sizeof(block_tq3t), tq_ggml_quantize_row_tq3t_ref, tq_ggml_dequantize_row_tq3t};
    check<block_tq2, quantize_f32_tq2_block, dequantize_tq2, true, true>(tq2, x, nb);
    check<block_tq3, quantize_f32_tq3_block, dequantize_tq3, true, true>(tq3, x, nb);
    check<block_tq4, quantize_f32_tq4_block, dequantize_tq4, true, true>(tq4, x, nb);
    check<block_tq3j, quantize_f32_tq3j_block, dequantize_tq3j, false, false>(tq3j, x, nb);
    check<block_tq4j, quantize_f32_tq4j_block, dequantize_tq4j, false, false>(tq4j, x, nb);
    // the trellis types: the flash-attention vector kernel does not read them (the decode kernel does,
    // tq_cuda_fattn_test)
    check<block_tq2t, quantize_f32_tq2t_block, dequantize_tq2t, true, false>(tq2t, x, nb);
    check<block_tq3t, quantize_f32_tq3t_block, dequantize_tq3t, true, false>(tq3t, x, nb);
    perf_convert<dequantize_tq3>("tq3", sizeof(block_tq3), x, tq_ggml_quantize_row_tq3_ref);
    perf_convert<dequantize_tq4>("tq4", sizeof(block_tq4), x, tq_ggml_quantize_row_tq4_ref);
    perf_convert<dequantize_tq3t>("tq3t", sizeof(block_tq3t), x, tq_ggml_quantize_row_tq3t_ref);
    printf("%d failures\n", failures);
    return failures != 0;
}
