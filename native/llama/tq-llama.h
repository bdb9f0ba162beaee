// tq-llamacpp: the C functions libllama gains with the TurboQuant KV-cache types (exported like
// llama.h's own; Python reaches them through llama-cpp-python's handle on libllama).
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// KV-cache options for the contexts the calling thread creates from now on, as "key=value" pairs
// separated by ',' (docs/method.md, Centring):
//   center   auto | k | kv | off   which halves are stored mean-centred (auto: K of a tq cache)
//   equalize 1 | 0                 K's per-value factors s (with centring)
//   sink     1 | 0                 the first token's key coded exactly (with centring)
//   rope     auto | pre | post     keys centred before RoPE (k - R(p) mu0 stored, q.R(p) mu0 added
//                                  back in attention) or after it; auto: before, where flash
//                                  attention runs on the CPU (a tq K cache in host memory)
//   key_offset 1 | 0               with keys centred before RoPE, a prompt's ubatch adds each
//                                  key's offset to the keys it decodes (1) or the per-key term
//                                  to its scores (0): the same scores, 0 is slower (A/B timing)
//   stats    calib | first         statistics from the model's calibration run (made once per model
//                                  and cache size, kept in calib_dir) or from each empty cache's
//                                  first ubatch
//   calib_dir PATH | off           where calibration results are kept (default
//                                  $XDG_CACHE_HOME/tq-llamacpp/kv-calib, else ~/.cache/...)
//   calib_text PATH                the calibration text (default: the built-in one)
//   calib_tokens N                 how many of its tokens the calibration reads (64..65536, 2048)
//   layers   k0-3+7:tq4;v20-29:tq2 other tq types for single layers' K or V of a tq cache
//                                  (ranges joined by '+', specs by ';')
//   bits     2.5                   per-layer types chosen for at most that many bits per value
//                                  on average: K of layers 0, 1, ... one type up (tq2 -> tq3,
//                                  tq2t -> tq3t, tq2ts -> tq3ts, tq3/tq3t -> tq4), then V; not
//                                  with layers
// They apply on top of the environment variables (LLAMA_KV_CENTER, LLAMA_KV_EQUALIZE, LLAMA_KV_SINK,
// LLAMA_KV_ROPE, LLAMA_KV_KEY_OFFSET, LLAMA_KV_STATS, LLAMA_KV_CALIB_DIR, LLAMA_KV_CALIB_TEXT,
// LLAMA_KV_CALIB_TOKENS, LLAMA_KV_LAYERS, LLAMA_KV_BITS, the same words), which is all the llama.cpp
// tools read; keys given in neither keep their defaults. NULL clears the thread's options. Returns NULL, or what is wrong with
// `options` (then nothing changes).
LLAMA_API const char * llama_tq_kv_options(const char * options);

// The check alone: NULL if `options` is valid, else what is wrong with it.
LLAMA_API const char * llama_tq_kv_options_check(const char * options);

// The per-layer types that `options` (with the environment) sets for a model of n_layer layers whose
// cache has types type_k, type_v (ggml_type) and whose layer il adds k_vals[il], v_vals[il] values of
// K and V per token (0 without a cache; the option `bits` chooses by them; NULL where it is not
// used): k_types[il], v_types[il] receive a ggml_type, or -1 where the layer keeps the cache's type.
// Returns NULL, or what is wrong (options, a layer past n_layer, bits the types cannot meet).
LLAMA_API const char * llama_tq_kv_layer_types(const char * options, int32_t n_layer, int32_t type_k, int32_t type_v,
                                               const int64_t * k_vals, const int64_t * v_vals, int32_t * k_types,
                                               int32_t * v_types);

// Centring statistics of one layer, computed on the CPU from host arrays by the same graph the
// cache builds (for tests against a reference). k: [n_tokens][n_head_kv][n_embd_head] post-RoPE
// keys, q: [n_tokens][n_head_kv * n_gqa][n_embd_head] queries (may be NULL when equalize is 0);
// the tokens are n_tokens / n_seq_tokens sequences of n_seq_tokens positions 0.. each; positions:
// how many positions the cache holds; rope_type: LLAMA_ROPE_TYPE_NONE, _NORM or _NEOX.
// mean and scale receive [n_head_kv][n_embd_head] floats (scale: 1 when equalize is 0).
// Returns 0, or -1 for bad arguments.
LLAMA_API int32_t llama_tq_center_stats(
        const float * k, const float * q, int64_t n_embd_head, int64_t n_head_kv, int64_t n_gqa,
        int64_t n_tokens, int64_t n_seq_tokens, float positions, int32_t rope_type, float freq_base,
        float freq_scale, bool equalize, float * mean, float * scale);

#ifdef __cplusplus
}
#endif
