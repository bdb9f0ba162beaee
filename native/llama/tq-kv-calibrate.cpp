// tq-llamacpp: the centring statistics of a model, measured once on a fixed text and shared by every
// sequence, slot and saved state of a context (tq-kv-calibrate.h).
#include "tq-kv-calibrate.h"
#include "tq-calib-text.h"
#include "tq-kv-center.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-kv-cache-iswa.h"
#include "llama-kv-cache.h"
#include "llama-memory-hybrid-iswa.h"
#include "llama-memory-hybrid.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

// the longest calibration sequence: positions 0 .. 511, as a quality run's chunks (the statistics
// carry them to the cache's positions, tq_center_build_stats)
static constexpr int32_t TQ_CALIB_SEQ_TOKENS = 512;
static constexpr char    TQ_CALIB_MAGIC[8] = { 'T', 'Q', 'K', 'V', 'C', 'A', 'L', '1' };
// part of every file's key: raise it when the statistics' algorithm changes, so that files of the
// old one are not read
static constexpr int32_t TQ_CALIB_ALGORITHM = 1;

// the centring of each cache of a context's memory (a sliding-window model has two)
static std::vector<tq_kv_center *> tq_centers(llama_context * ctx) {
    llama_memory_i * mem = ctx->get_memory();
    llama_kv_cache * caches[2] = { nullptr, nullptr };
    if (auto * kv = dynamic_cast<llama_kv_cache *>(mem)) {
        caches[0] = kv;
    } else if (auto * iswa = dynamic_cast<llama_kv_cache_iswa *>(mem)) {
        caches[0] = iswa->get_base();
        caches[1] = iswa->get_swa();
    } else if (auto * hyb = dynamic_cast<llama_memory_hybrid *>(mem)) {
        caches[0] = hyb->get_mem_attn();
    } else if (auto * hyb_iswa = dynamic_cast<llama_memory_hybrid_iswa *>(mem)) {
        caches[0] = hyb_iswa->get_mem_attn()->get_base();
        caches[1] = hyb_iswa->get_mem_attn()->get_swa();
    }
    std::vector<tq_kv_center *> out;
    for (llama_kv_cache * kv : caches) {
        if (kv && kv->get_center().enabled()) {
            out.push_back(&kv->get_center());
        }
    }
    return out;
}

// FNV-1a, 64 bits: a key for the calibration file, not a security boundary (a collision costs
// quality, never correctness: centring is exact for any statistics)
struct tq_fnv {
    uint64_t h = 0xcbf29ce484222325ull;
    void add(const void * p, size_t n) {
        const auto * b = (const uint8_t *) p;
        for (size_t i = 0; i < n; ++i) {
            h = (h ^ b[i]) * 0x100000001b3ull;
        }
    }
    template <typename T> void add(const T & v) { add(&v, sizeof(v)); }
};

// what the statistics depend on: the model's weights (sampled: the key projections of every layer
// and the token embeddings), the cache types and options, the positions and the text
static uint64_t tq_calib_key(const llama_model & model, const std::vector<tq_kv_center *> & centers,
                             const llama_context_params & params, const std::string & text, int32_t n_tokens) {
    tq_fnv f;
    char desc[256] = {};
    llama_model_desc(&model, desc, sizeof(desc));
    f.add(desc, strlen(desc));
    f.add(llama_model_n_params(&model));
    std::vector<uint8_t> buf;
    auto sample = [&](const ggml_tensor * t) {
        if (!t || !t->buffer) {
            return;
        }
        f.add(t->type);
        f.add(t->ne);
        buf.resize(std::min<size_t>(ggml_nbytes(t), 4096));
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(t->buffer);
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        if (ggml_backend_buffer_is_host(t->buffer)) {
            memcpy(buf.data(), t->data, buf.size());
        } else if (dev && ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
            ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
        } else {
            return; // a CPU buffer that keeps the weights in a layout of its own (repacked): not readable
        }
        f.add(buf.data(), buf.size());
    };
    sample(model.tok_embd);
    for (const auto & layer : model.layers) {
        sample(layer.wk);
        sample(layer.wqkv);
    }
    f.add(params.type_k);
    f.add(params.type_v);
    f.add(params.rope_freq_base);
    f.add(params.rope_freq_scale);
    for (const tq_kv_center * c : centers) {
        f.add(c->center_k); f.add(c->center_v); f.add(c->equalize_k); f.add(c->sink_code); f.add(c->positions);
        if (c->rope_pre) {
            f.add(c->rope_pre);
        }
        for (int32_t il = 0; il < (int32_t) model.hparams.n_layer_all; ++il) { // the option `layers`
            if (c->layer_type(il, true) != params.type_k || c->layer_type(il, false) != params.type_v) {
                f.add(il); f.add(c->layer_type(il, true)); f.add(c->layer_type(il, false));
            }
        }
        f.add(c->n_floats());
    }
    f.add(n_tokens);
    f.add(TQ_CALIB_SEQ_TOKENS);
    f.add(TQ_CALIB_ALGORITHM);
    f.add(text.data(), text.size());
    return f.h;
}

static std::string tq_calib_dir(const tq_kv_options & o) {
    if (o.calib_dir == "off") {
        return "";
    }
    if (!o.calib_dir.empty()) {
        return o.calib_dir;
    }
    const char * xdg  = getenv("XDG_CACHE_HOME");
    const char * home = getenv("HOME");
    if (xdg && *xdg) {
        return std::string(xdg) + "/tq-llamacpp/kv-calib";
    }
    return home && *home ? std::string(home) + "/.cache/tq-llamacpp/kv-calib" : "";
}

static bool tq_calib_load(const std::string & path, std::vector<float> & stats) {
    FILE * f = fopen(path.c_str(), "rb");
    if (!f) {
        return false;
    }
    char magic[8];
    uint64_t n = 0;
    const bool ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, TQ_CALIB_MAGIC, 8) == 0 &&
                    fread(&n, sizeof(n), 1, f) == 1 && n == stats.size() &&
                    fread(stats.data(), sizeof(float), n, f) == n;
    fclose(f);
    return ok;
}

static void tq_calib_save(const std::string & dir, const std::string & path, const std::vector<float> & stats) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    const std::string tmp = path + ".tmp" + std::to_string((uint64_t) (uintptr_t) &stats);
    FILE * f = fopen(tmp.c_str(), "wb");
    if (!f) {
        LLAMA_LOG_WARN("%s: cannot write %s: the calibration will run again next time\n", __func__, tmp.c_str());
        return;
    }
    const uint64_t n = stats.size();
    bool ok = fwrite(TQ_CALIB_MAGIC, 1, 8, f) == 8 && fwrite(&n, sizeof(n), 1, f) == 1 &&
              fwrite(stats.data(), sizeof(float), n, f) == n;
    ok = fclose(f) == 0 && ok;
    if (ok) {
        std::filesystem::rename(tmp, path, ec); // atomic: another process may read it at any time
    }
    if (!ok || ec) {
        std::filesystem::remove(tmp, ec);
    }
}

// the calibration text: the built-in one, or the file `calib_text` names (empty: unreadable)
static std::string tq_calib_text(const tq_kv_options & o) {
    if (o.calib_text.empty()) {
        return TQ_CALIB_TEXT;
    }
    FILE * f = fopen(o.calib_text.c_str(), "rb");
    if (!f) {
        return "";
    }
    std::string text;
    char buf[65536];
    for (size_t n; (n = fread(buf, 1, sizeof(buf), f)) > 0;) {
        text.append(buf, n);
    }
    fclose(f);
    return text;
}

// runs the calibration text through a throwaway context whose cache computes the statistics from
// it (its first ubatch: up to 512 positions per sequence, the text cut into equal sequences, each
// from position 0) for the real caches' positions; false if that cannot be done
static bool tq_calib_run(llama_model * model, const llama_context_params & params, const std::vector<tq_kv_center *> & centers,
                         const std::string & text, int32_t n_want, std::vector<float> & stats) {
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> tokens(text.size() + 16);
    const int32_t n_tok = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(),
                                         /*add_special*/ false, /*parse_special*/ false);
    const bool bos = llama_vocab_get_add_bos(vocab);
    const int32_t seq_len = std::min({ TQ_CALIB_SEQ_TOKENS, n_want, (int32_t) llama_model_n_ctx_train(model) });
    const int32_t n_seq   = std::min(n_want / seq_len, std::max(0, n_tok) / (seq_len - (int32_t) bos));
    if (n_tok < 0 || n_seq < 1 || seq_len < 64) {
        return false;
    }
    llama_batch batch = llama_batch_init(n_seq*seq_len, 0, 1);
    for (int32_t s = 0, t = 0; s < n_seq; ++s) {
        for (int32_t p = 0; p < seq_len; ++p) {
            const int32_t i = batch.n_tokens++;
            batch.token[i]     = bos && p == 0 ? llama_vocab_bos(vocab) : tokens[t++];
            batch.pos[i]       = p;
            batch.n_seq_id[i]  = 1;
            batch.seq_id[i][0] = s;
            batch.logits[i]    = p == seq_len - 1;
        }
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx             = (uint32_t) (n_seq*seq_len);
    cp.n_batch           = (uint32_t) (n_seq*seq_len);
    cp.n_ubatch          = (uint32_t) (n_seq*seq_len); // one ubatch: the statistics see every token
    cp.n_seq_max         = (uint32_t) n_seq;
    cp.kv_unified        = false;                     // a stream per sequence: the ubatch is split_equal
    cp.n_threads         = params.n_threads;
    cp.n_threads_batch   = params.n_threads_batch;
    cp.flash_attn_type   = params.flash_attn_type;
    cp.rope_scaling_type = params.rope_scaling_type;
    cp.rope_freq_base    = params.rope_freq_base;
    cp.rope_freq_scale   = params.rope_freq_scale;
    cp.yarn_ext_factor   = params.yarn_ext_factor;
    cp.yarn_attn_factor  = params.yarn_attn_factor;
    cp.yarn_beta_fast    = params.yarn_beta_fast;
    cp.yarn_beta_slow    = params.yarn_beta_slow;
    cp.yarn_orig_ctx     = params.yarn_orig_ctx;
    cp.type_k            = params.type_k;
    cp.type_v            = params.type_v;
    cp.offload_kqv       = params.offload_kqv;
    cp.op_offload        = params.op_offload;

    LLAMA_LOG_INFO("%s: calibrating the KV centring on %d sequences of %d tokens of a fixed text (a context of its own follows)\n",
        __func__, n_seq, seq_len);
    auto & target = tq_kv_calibration_target_current();
    target.active    = true;
    target.positions = (uint32_t) centers[0]->positions;
    llama_context * tmp = llama_init_from_model(model, cp);
    target.active = false;
    bool ok = tmp != nullptr;
    if (ok) {
        const std::vector<tq_kv_center *> from = tq_centers(tmp);
        ok = from.size() == centers.size() && llama_decode(tmp, batch) == 0;
        stats.clear();
        std::vector<float> part;
        for (size_t i = 0; i < from.size() && ok; ++i) {
            from[i]->get(part);
            ok = part.size() == centers[i]->n_floats();
            stats.insert(stats.end(), part.begin(), part.end());
        }
        llama_free(tmp);
    }
    llama_batch_free(batch);
    return ok;
}

static void tq_kv_calibrate_impl(const std::vector<tq_kv_center *> & centers, llama_model * model,
                                 const llama_context_params & params, const tq_kv_options & o, const std::string & text);

bool tq_kv_calibrate(llama_context * ctx, llama_model * model, const llama_context_params & params) {
    if (tq_kv_calibration_target_current().active || model->hparams.no_alloc) {
        return true; // the calibration's own context, or one that only measures memory (no weights loaded)
    }
    const std::vector<tq_kv_center *> centers = tq_centers(ctx);
    if (centers.empty() || centers[0]->source != tq_stats_source::calibration) {
        return true;
    }
    const tq_kv_options o = tq_kv_options_current();
    const std::string text = tq_calib_text(o);
    if (text.empty()) {
        LLAMA_LOG_ERROR("%s: cannot read the calibration text %s (calib_text / LLAMA_KV_CALIB_TEXT)\n", __func__,
            o.calib_text.c_str());
        return false;
    }
    try {
        tq_kv_calibrate_impl(centers, model, params, o, text);
    } catch (const std::exception & e) {
        tq_kv_calibration_target_current().active = false;
        LLAMA_LOG_WARN("%s: KV centring calibration failed (%s): the statistics come from the first ubatch instead\n",
            __func__, e.what());
        for (tq_kv_center * c : centers) {
            c->source = tq_stats_source::first_ubatch;
        }
    }
    return true;
}

static void tq_kv_calibrate_impl(const std::vector<tq_kv_center *> & centers, llama_model * model,
                                 const llama_context_params & params, const tq_kv_options & o, const std::string & text) {
    size_t n_floats = 0;
    for (const tq_kv_center * c : centers) {
        n_floats += c->n_floats();
    }
    std::vector<float> stats(n_floats);
    const std::string dir = tq_calib_dir(o);
    char name[64];
    snprintf(name, sizeof(name), "%016" PRIx64 ".kvcalib", tq_calib_key(*model, centers, params, text, o.calib_tokens));
    const std::string path = dir.empty() ? "" : dir + "/" + name;

    const int64_t t0 = ggml_time_us();
    bool have = !path.empty() && tq_calib_load(path, stats);
    if (have) {
        LLAMA_LOG_INFO("%s: KV centring statistics from %s\n", __func__, path.c_str());
    } else {
        have = tq_calib_run(model, params, centers, text, o.calib_tokens, stats);
        if (have) {
            LLAMA_LOG_INFO("%s: KV centring statistics calibrated in %.2f s%s%s\n", __func__, (ggml_time_us() - t0) / 1e6,
                path.empty() ? "" : ", kept in ", path.c_str());
            if (!path.empty()) {
                tq_calib_save(dir, path, stats);
            }
        }
    }
    if (!have) {
        LLAMA_LOG_WARN("%s: KV centring calibration failed: the statistics come from the first ubatch instead\n", __func__);
        for (tq_kv_center * c : centers) {
            c->source = tq_stats_source::first_ubatch;
        }
        return;
    }
    size_t at = 0;
    for (tq_kv_center * c : centers) {
        c->set(std::vector<float>(stats.begin() + at, stats.begin() + at + c->n_floats()));
        at += c->n_floats();
    }
}
