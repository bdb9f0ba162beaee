// tq-llamacpp: mean-centred, channel-equalized K (and optionally V) caches inside libllama.
//
// A centred cache stores s * (k - mu) instead of k, per layer and KV head, and divides the query
// by s: softmax(q.k) is unchanged (q.mu is the same for every key of a query, and
// (q/s).(s (k - mu)) = q.(k - mu)), while the quantizer sees keys without their common offset and
// with the values' spread matched to the queries' (docs/method.md, Centring). V stored as v - mu_v
// gets mu_v added back after attention (the weights sum to 1).
//
// llama_kv_cache owns one tq_kv_center; llama.cpp's code calls it at five places (the cache's
// tensors, the attention graph, the K-shift, the state, the first ubatch) through the small glue
// in patches/. The statistics are the model's (calibration, tq-kv-calibrate.cpp) or the first
// ubatch's, built by tq_center_build_stats.
#pragma once

#include "ggml.h"

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

struct llama_model;
struct llama_hparams;
struct llama_context_params;
class llama_io_write_i;
class llama_io_read_i;

// llama_init_from_model's checks for tq caches (flash attention, head sizes), before any
// allocation; false (after logging why) refuses the context
bool tq_kv_check_params(const llama_model & model, llama_context_params & params);

// ---- settings: one reader (tq_kv_options_current) for the option string and the environment ----

enum class tq_center_mode { off, automatic, k, kv };
enum class tq_stats_source { calibration, first_ubatch };
// keys centred before RoPE (auto: where flash attention can add their offset back, the CPU)
enum class tq_rope_mode { automatic, pre, post };

struct tq_kv_options {
    tq_center_mode  center   = tq_center_mode::automatic;
    bool            equalize = true;
    bool            sink     = true;
    tq_rope_mode    rope     = tq_rope_mode::automatic;
    bool            key_offset = true; // rope pre: a prompt's term as an offset of the keys (tq_key_bias)
    tq_stats_source stats    = tq_stats_source::calibration;
    std::string     calib_dir;      // "" = the default folder, "off" = calibrate every time
    std::string     calib_text;     // "" = the built-in text (tq-calib-text.h), else a UTF-8 file
    int32_t         calib_tokens = 2048; // tokens of it the model reads, in sequences of at most 512
    // per-layer cache types over a tq cache ("layers=k0-3+7:tq4;v20-29:tq2"): layer -> type
    std::map<int32_t, ggml_type> layer_k, layer_v;
    // "bits=2.5": per-layer types chosen for an average of at most that many bits per value
    // (tq_kv_resolve_bits); 0 = none
    double bits = 0.0;
};

// the options of contexts this thread creates: llama_tq_kv_options' if set, else the environment
tq_kv_options tq_kv_options_current();
// parse "key=value,..." onto `opts`; "" on success, else the message
std::string tq_kv_options_parse(const char * text, tq_kv_options & opts);

// The option `bits` as per-layer types (into o.layer_k, o.layer_v): K of layers 0, 1, ... one tq type
// up (tq2 -> tq3, tq2t -> tq3t, tq2ts -> tq3ts, tq3 and tq3t -> tq4), then V likewise, as long as
// the average bits per value of what a token adds to the cache stay within `bits`. k_vals[il],
// v_vals[il]: the values of layer il's K and V per token (0 for a layer without a cache). "" on
// success (also without `bits`), else the message.
std::string tq_kv_resolve_bits(tq_kv_options & o, ggml_type tk, ggml_type tv, const std::vector<int64_t> & k_vals,
                               const std::vector<int64_t> & v_vals);

// the calibration run sets these for the throwaway context it makes (tq-kv-calibrate.cpp)
struct tq_kv_calibration_target {
    uint32_t positions = 0;  // the positions the statistics are for (the real cache's size)
    bool     active    = false;
};
tq_kv_calibration_target & tq_kv_calibration_target_current();

// ---- the statistics of one layer, as a graph ----

struct tq_center_rope {
    int32_t type       = -1;   // LLAMA_ROPE_TYPE_NONE (-1), _NORM (0) or _NEOX
    float   freq_base  = 10000.0f;
    float   freq_scale = 1.0f;
};

struct tq_center_stats_params {
    int64_t        n_seq_tokens = 0;  // the ubatch holds sequences of this many tokens (0: one sequence)
    float          positions    = 0;  // how many positions the cache will hold (H)
    tq_center_rope rope;              // how x was turned by RoPE (type none: V, or no RoPE)
    bool           equalize     = false;
};

struct tq_center_stats {
    ggml_tensor * mean  = nullptr;  // [n_embd_head, n_head_kv]
    ggml_tensor * scale = nullptr;  // [n_embd_head, n_head_kv], nullptr without equalization
};

// x: [n_embd_head, n_head_kv, n_tokens] F32 with contiguous rows; q4: the queries as
// [n_embd_head, n_gqa, n_head_kv, n_tokens] (needed when equalizing)
tq_center_stats tq_center_build_stats(ggml_context * ctx, ggml_tensor * x, ggml_tensor * q4,
                                      const tq_center_stats_params & p);

// The mean moved so that the first token of x, centred, scaled, rotated by `rot` (may be null) and
// stored as `type`, is a code word of the quantizer: that token (an attention sink) is stored exactly.
ggml_tensor * tq_center_sink_mean(ggml_context * ctx, ggml_tensor * x, ggml_tensor * mean, ggml_tensor * scale,
                                  ggml_tensor * rot, ggml_type type);

// Keys centred before RoPE: a key's offset mu0 (the mean of the keys before RoPE) is turned by
// RoPE with the key, so the cache stores k - R(p) mu0 (and then centres and scales as above), and
// attention adds each key's q.R(p) mu0 back to q.k (before the scale) in flash attention
// (ggml_flash_attn_ext_add_key_bias): qb [n_embd_head, n_head, n_tokens] from the queries and mu0,
// kb the cells' RoPE table. R is the table's: the cache's own cos/sin per pair (the model's base
// and scale), so that what is subtracted and what is added back agree exactly whatever the model's
// RoPE does beyond that (a difference only leaves more offset in the stored keys).
// A prompt's ubatch (TQ_KEY_OFFSET_MIN_TOKENS and more tokens per stream) gets the same term as
// an offset of the stored keys instead (ggml_flash_attn_ext_add_key_offset): each cell's
// H(s * R(p) mu0) (H the cache's rotation, s the channel factors: what the stored key had taken
// off), which a tiled attention adds to each key it decodes, once per key, where the term costs a
// product per query row and key as large as q.k's own.
struct tq_key_bias {
    ggml_tensor * qb = nullptr;
    ggml_tensor * kb = nullptr;
    // for the offset form: mu0 [n_embd_head, n_head_kv], the channel factors (nullptr: none) and
    // the cache's rotation (nullptr: none) of this ubatch's keys
    ggml_tensor * mean0 = nullptr;
    ggml_tensor * scale = nullptr;
    ggml_tensor * rot   = nullptr;
    bool          neox  = false;
};
// the score term on a flash-attention node (kb.kb == nullptr: none)
void tq_center_add_key_bias(ggml_context * ctx, ggml_tensor * fa, const tq_key_bias & kb);

// the attention output of a V cache stored as v - mu_v, mu_v added back: cur
// [n_embd_head_v * n_head, n_tokens], query head h reading KV head h / (n_head / n_head_kv);
// mean_v == nullptr returns cur
ggml_tensor * tq_center_uncenter_v(ggml_context * ctx, ggml_tensor * cur, ggml_tensor * mean_v);

// ---- one cache's centring ----

class tq_kv_center {
public:
    // decides what is centred (options, model and cache type); logs why where it turns off
    void init(const llama_model & model, const llama_hparams & hparams, ggml_type type_k, ggml_type type_v,
              bool is_mla, bool shares_cells, bool is_swa_cache, uint32_t kv_size, bool offload,
              const std::function<bool(int32_t)> & has_layer);
    // the codebooks are fitted to rotated vectors: a tq cache that llama.cpp does not rotate codes badly
    static void warn_unrotated(ggml_type type_k, ggml_type type_v, bool rot_k, bool rot_v);

    bool enabled() const { return center_k || center_v; }
    // tensors per layer this adds to the cache's context
    static constexpr size_t n_tensors_per_layer = 4;
    // graph nodes per layer that computing the statistics adds (about 180 with RoPE and factors,
    // about 260 with keys centred before RoPE)
    static constexpr uint32_t graph_nodes_per_layer = 384;
    void alloc_layer(ggml_context * ctx, int32_t il, const char * name_tag);
    // the type of layer il's K (is_k) or V cache: the cache's type unless the option `layers`
    // names another tq type for it
    ggml_type layer_type(int32_t il, bool is_k) const;

    // the next ubatch computes the statistics: centring on, first-ubatch statistics (or none set
    // yet) and an empty cache
    bool needs_stats(bool cache_empty) const { return enabled() && cache_empty && !fixed; }

    // cur [n_embd_head, n_head_kv, n_tokens] -> what the cache stores; init: this ubatch computes
    // the statistics (stored in the layer's tensors by `gf`). For K, q [n_embd_head, n_head, n_tokens]
    // is divided by s. mean_out receives the mean subtracted (nullptr when not centred).
    // cur == nullptr: a layer that reads another layer's cache (only q follows).
    // rope_cells, rope_tokens: the graph's RoPE tables (build_input_rope), nullptr without
    // centring before RoPE; kbias receives the score term the keys need back
    ggml_tensor * build(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * cur, int32_t il, bool is_k, bool init,
                        ggml_tensor * rot, ggml_tensor ** mean_out, ggml_tensor ** q, int64_t n_seq_tokens,
                        ggml_tensor * rope_cells = nullptr, ggml_tensor * rope_tokens = nullptr,
                        tq_key_bias * kbias = nullptr) const;

    // keys centred before RoPE: the graph's two RoPE tables as inputs, cells [n_embd_head, n_cells]
    // (cos and sin of each cell's position on the two values of each RoPE pair) and tokens
    // [n_embd_head, n_tokens, 2] (cos on both values of each pair, then sin); nullptr when off
    void build_input_rope(ggml_context * ctx, int64_t n_cells, int64_t n_tokens, ggml_tensor ** cells, ggml_tensor ** tokens) const;
    // fills them: cell_pos[i] the position of cell i (< 0: empty), tok_pos the ubatch's positions
    void set_input_rope(ggml_tensor * cells, ggml_tensor * tokens, const int32_t * cell_pos, const int32_t * tok_pos) const;
    ggml_tensor * mean_v(int32_t il) const;

    // the K-shift: stored -> k before RoPE is applied again, and k -> stored after
    ggml_tensor * shift_unapply(ggml_context * ctx, ggml_tensor * tmp, int32_t il) const;
    ggml_tensor * shift_apply(ggml_context * ctx, ggml_tensor * tmp, int32_t il) const;

    void state_write(llama_io_write_i & io) const;
    // was_empty: the cache held no cell before this read, so the state's statistics replace ours
    void state_read(llama_io_read_i & io, bool was_empty);

    // the statistics as one float array (calibration: copied between caches and kept in files)
    size_t n_floats() const;
    void get(std::vector<float> & out) const;
    void set(const std::vector<float> & in);  // and fixes them
    // writes fixed statistics back after the cache's buffers were cleared (llama_memory_clear)
    void restore();

    bool  center_k = false, center_v = false, equalize_k = false, sink_code = false;
    bool  key_offset = true; // the options' key_offset (tq_key_bias)
    bool  rope_pre = false;   // keys centred before RoPE
    tq_stats_source source = tq_stats_source::calibration;
    bool  fixed = false;      // the statistics are set and stay (calibration, a loaded state)
    float positions = 0;      // H of the statistics

private:
    struct layer {
        int32_t        il = -1;
        ggml_type      type_k = GGML_TYPE_F16, type_v = GGML_TYPE_F16;
        tq_center_rope rope;
        ggml_tensor *  mean_k  = nullptr;
        ggml_tensor *  mean_k0 = nullptr;  // before RoPE (rope_pre)
        ggml_tensor *  scale_k = nullptr;
        ggml_tensor *  mean_v  = nullptr;
        // the statistics in the order of the state, n_floats, get and set; nullptr where absent
        std::array<ggml_tensor *, 4> stats() const { return { mean_k, mean_v, scale_k, mean_k0 }; }
    };
    std::vector<layer>        layers;
    std::map<int32_t, size_t> by_il;
    const llama_hparams *     hp = nullptr;
    std::vector<float>        fixed_stats; // a copy of the fixed statistics, for restore()
    ggml_type                 type_k = GGML_TYPE_F16, type_v = GGML_TYPE_F16;
    std::map<int32_t, ggml_type> layer_k, layer_v;

    uint32_t mode_bits() const;

    // RoPE's pairing and frequencies for the tables (rope_pre): theta of each pair
    bool               rope_neox = false;
    int64_t            rope_dim  = 0;
    std::vector<double> rope_theta;
    // the cells' rows as last filled, so that only cells whose position changed are recomputed
    mutable std::vector<int32_t> rope_cell_pos;
    mutable std::vector<float>   rope_cell_rows;
    void rope_row(int32_t pos, float * row) const;
};
