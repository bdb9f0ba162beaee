// tq-llamacpp: mean-centred, channel-equalized KV caches (tq-kv-center.h).
#include "tq-kv-center.h"
#include "tq-llama.h"

#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-io.h"
#include "llama-model.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

// ---------------------------------------------------------------------------------------------
// settings

static std::string tq_parse_bool(const std::string & key, const std::string & value, bool & out) {
    if (value == "1" || value == "on" || value == "true")  { out = true;  return ""; }
    if (value == "0" || value == "off" || value == "false") { out = false; return ""; }
    return key + " must be 1 or 0, not '" + value + "'";
}

// the pieces of s between the separators (empty ones included)
static std::vector<std::string> tq_split(const std::string & s, char sep) {
    std::vector<std::string> out;
    size_t pos = 0;
    for (size_t end; (end = s.find(sep, pos)) != std::string::npos; pos = end + 1) {
        out.push_back(s.substr(pos, end - pos));
    }
    out.push_back(s.substr(pos));
    return out;
}

// "k0-3+7:tq4;v20-29:tq2": K of layers 0-3 and 7 in tq4, V of layers 20-29 in tq2 (no commas: the
// value sits inside the comma-separated option string)
static std::string tq_parse_layers(const std::string & value, tq_kv_options & o) {
    std::map<int32_t, ggml_type> lk, lv;
    for (const std::string & spec : tq_split(value, ';')) {
        if (spec.empty() && value.empty()) {
            break; // "layers=": none
        }
        const std::string bad = "layers: '" + spec + "' is not k|v<layers>:<tq type>, e.g. k0-3+7:tq4";
        const size_t colon = spec.find(':');
        if (spec.size() < 4 || (spec[0] != 'k' && spec[0] != 'v') || colon == std::string::npos) {
            return bad;
        }
        const std::string tname = spec.substr(colon + 1);
        ggml_type type = GGML_TYPE_COUNT;
        std::string names;
        for (int t = GGML_TYPE_TQ2; ggml_type_is_tq((ggml_type) t); ++t) {
            if (tname == ggml_type_name((ggml_type) t)) {
                type = (ggml_type) t;
            }
            names += (names.empty() ? "" : ", ") + std::string(ggml_type_name((ggml_type) t));
        }
        if (type == GGML_TYPE_COUNT) {
            return "layers: a layer's type must be a tq type (" + names + "), not '" + tname + "'";
        }
        for (const std::string & r : tq_split(spec.substr(1, colon - 1), '+')) {
            char * e1 = nullptr, * e2 = nullptr;
            const long a = strtol(r.c_str(), &e1, 10);
            long b = a;
            if (e1 != r.c_str() && *e1 == '-') {
                b = strtol(e1 + 1, &e2, 10);
                e1 = e2 != e1 + 1 ? e2 : e1;
            }
            if (r.empty() || e1 == r.c_str() || *e1 != '\0' || a < 0 || b < a || b > 4095) {
                return bad;
            }
            for (long il = a; il <= b; ++il) {
                (spec[0] == 'k' ? lk : lv)[(int32_t) il] = type;
            }
        }
    }
    o.layer_k = lk;
    o.layer_v = lv;
    return "";
}

// "" if every layer the option `layers` names exists in a model of n_layer layers
static std::string tq_check_layers(const tq_kv_options & o, int32_t n_layer) {
    for (const auto * m : { &o.layer_k, &o.layer_v }) {
        if (!m->empty() && m->rbegin()->first >= n_layer) {
            return "KV-cache option layers: layer " + std::to_string(m->rbegin()->first) +
                   " does not exist (the model has " + std::to_string(n_layer) + ")";
        }
    }
    return "";
}

// the type a layer moves to under the option `bits`: the same code with one bit more per value
static ggml_type tq_type_up(const ggml_type t) {
    switch (t) {
        case GGML_TYPE_TQ2:   return GGML_TYPE_TQ3;
        case GGML_TYPE_TQ2T:  return GGML_TYPE_TQ3T;
        case GGML_TYPE_TQ2TS: return GGML_TYPE_TQ3TS;
        case GGML_TYPE_TQ3:
        case GGML_TYPE_TQ3T:  return GGML_TYPE_TQ4;
        default:              return GGML_TYPE_COUNT;
    }
}

static double tq_bits_per_value(const ggml_type t) {
    return 8.0 * (double) ggml_type_size(t) / (double) ggml_blck_size(t);
}

std::string tq_kv_resolve_bits(tq_kv_options & o, ggml_type tk, ggml_type tv, const std::vector<int64_t> & k_vals,
                               const std::vector<int64_t> & v_vals) {
    if (o.bits == 0.0) {
        return "";
    }
    char want[32];
    snprintf(want, sizeof(want), "%g", o.bits);
    if (!o.layer_k.empty() || !o.layer_v.empty()) {
        return std::string("KV-cache options bits and layers both set: give one of them (bits=") + want +
               " chooses the layers itself)";
    }
    if (!ggml_type_is_tq(tk) || tq_type_up(tk) == GGML_TYPE_COUNT) {
        return std::string("KV-cache option bits=") + want + " needs a K cache of tq2, tq2t, tq2ts, tq3 or tq3t "
               "(their layers move one type up), not " + ggml_type_name(tk);
    }
    // K first, from layer 0 on: K's errors cost more than V's, and the first layers' keys most
    // (docs/results.md, Bits where they matter)
    double sum = 0.0, n = 0.0;
    for (size_t il = 0; il < k_vals.size(); ++il) {
        sum += (double) k_vals[il] * tq_bits_per_value(tk) + (double) v_vals[il] * tq_bits_per_value(tv);
        n   += (double) (k_vals[il] + v_vals[il]);
    }
    if (n == 0.0) {
        return "";
    }
    const double cap = o.bits * n * (1.0 + 1e-12);
    if (sum > cap) {
        char got[64];
        snprintf(got, sizeof(got), "%.3f", sum / n);
        return std::string("KV-cache option bits=") + want + " is below the cache's own " + got + " bits per value (" +
               ggml_type_name(tk) + "/" + ggml_type_name(tv) + "): choose smaller types or more bits";
    }
    for (const bool is_k : { true, false }) {
        const ggml_type t  = is_k ? tk : tv;
        const ggml_type up = tq_type_up(t);
        if (up == GGML_TYPE_COUNT) {
            break;
        }
        const std::vector<int64_t> & vals = is_k ? k_vals : v_vals;
        for (size_t il = 0; il < vals.size(); ++il) {
            if (vals[il] == 0) {
                continue;
            }
            const double more = (double) vals[il] * (tq_bits_per_value(up) - tq_bits_per_value(t));
            if (sum + more > cap) {
                return "";
            }
            sum += more;
            (is_k ? o.layer_k : o.layer_v)[(int32_t) il] = up;
        }
    }
    return "";
}

// one key: the same words whether they come from the option string or the environment
static std::string tq_parse_option(const std::string & key, const std::string & value, tq_kv_options & o) {
    if (key == "center") {
        if (value == "auto")                                    { o.center = tq_center_mode::automatic; return ""; }
        if (value == "k" || value == "1" || value == "true")     { o.center = tq_center_mode::k;         return ""; }
        if (value == "kv")                                      { o.center = tq_center_mode::kv;        return ""; }
        if (value == "off" || value == "0" || value == "false")  { o.center = tq_center_mode::off;       return ""; }
        return "center must be auto, k, kv or off, not '" + value + "'";
    }
    if (key == "equalize") {
        return tq_parse_bool(key, value, o.equalize);
    }
    if (key == "sink") {
        return tq_parse_bool(key, value, o.sink);
    }
    if (key == "key_offset") {
        return tq_parse_bool(key, value, o.key_offset);
    }
    if (key == "rope") {
        if (value == "auto") { o.rope = tq_rope_mode::automatic; return ""; }
        if (value == "pre")  { o.rope = tq_rope_mode::pre;       return ""; }
        if (value == "post") { o.rope = tq_rope_mode::post;      return ""; }
        return "rope must be auto, pre or post (keys centred before or after RoPE), not '" + value + "'";
    }
    if (key == "stats") {
        if (value == "calib") { o.stats = tq_stats_source::calibration;  return ""; }
        if (value == "first") { o.stats = tq_stats_source::first_ubatch; return ""; }
        return "stats must be calib or first, not '" + value + "'";
    }
    if (key == "calib_dir") {
        if (value.empty()) {
            return "calib_dir needs a folder (or off)";
        }
        o.calib_dir = value;
        return "";
    }
    if (key == "calib_text") {
        o.calib_text = value;
        return "";
    }
    if (key == "calib_tokens") {
        char * end = nullptr;
        const long n = strtol(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || n < 64 || n > 65536) {
            return "calib_tokens must be a whole number from 64 to 65536, not '" + value + "'";
        }
        o.calib_tokens = (int32_t) n;
        return "";
    }
    if (key == "layers") {
        return tq_parse_layers(value, o);
    }
    if (key == "bits") {
        if (value.empty() || value == "0" || value == "off") {
            o.bits = 0.0; // none (as "layers=")
            return "";
        }
        char * end = nullptr;
        const double b = strtod(value.c_str(), &end);
        if (*end != '\0' || !(b >= 1.0 && b <= 16.0)) {
            return "bits must be a number of bits per value from 1 to 16, such as 2.5 (or 0: none), not '" + value + "'";
        }
        o.bits = b;
        return "";
    }
    return "unknown KV-cache option '" + key + "' (center, equalize, sink, rope, key_offset, stats, calib_dir, calib_text, calib_tokens, layers, bits)";
}

std::string tq_kv_options_parse(const char * text, tq_kv_options & opts) {
    tq_kv_options o = opts;
    for (const std::string & item : tq_split(text ? text : "", ',')) {
        if (item.find_first_not_of(" \t") == std::string::npos) {
            continue;
        }
        const size_t eq = item.find('=');
        if (eq == std::string::npos) {
            return "KV-cache option '" + item + "' is not key=value";
        }
        auto trim = [](std::string x) {
            x.erase(0, x.find_first_not_of(" \t"));
            x.erase(x.find_last_not_of(" \t") + 1);
            return x;
        };
        const std::string err = tq_parse_option(trim(item.substr(0, eq)), trim(item.substr(eq + 1)), o);
        if (!err.empty()) {
            return err;
        }
    }
    opts = o;
    return "";
}

static tq_kv_options tq_kv_options_from_env() {
    static const struct { const char * env; const char * key; } vars[] = {
        { "LLAMA_KV_CENTER",    "center"    },
        { "LLAMA_KV_EQUALIZE",  "equalize"  },
        { "LLAMA_KV_SINK",      "sink"      },
        { "LLAMA_KV_ROPE",      "rope"      },
        { "LLAMA_KV_KEY_OFFSET", "key_offset" },
        { "LLAMA_KV_STATS",     "stats"     },
        { "LLAMA_KV_CALIB_DIR", "calib_dir" },
        { "LLAMA_KV_CALIB_TEXT", "calib_text" },
        { "LLAMA_KV_CALIB_TOKENS", "calib_tokens" },
        { "LLAMA_KV_LAYERS",    "layers"    },
        { "LLAMA_KV_BITS",      "bits"      },
    };
    tq_kv_options o;
    for (const auto & v : vars) {
        const char * value = getenv(v.env);
        if (value && *value) {
            const std::string err = tq_parse_option(v.key, value, o);
            if (!err.empty()) {
                throw std::runtime_error(std::string(v.env) + ": " + err);
            }
        }
    }
    return o;
}

// per thread, so that two threads making contexts with different options cannot cross; they apply
// on top of the environment's
static thread_local std::unique_ptr<std::string> tq_thread_options;

tq_kv_options tq_kv_options_current() {
    tq_kv_options o = tq_kv_options_from_env();
    if (tq_thread_options) {
        const std::string err = tq_kv_options_parse(tq_thread_options->c_str(), o);
        GGML_ASSERT(err.empty()); // checked when set
    }
    return o;
}

tq_kv_calibration_target & tq_kv_calibration_target_current() {
    static thread_local tq_kv_calibration_target target;
    return target;
}

static thread_local std::string tq_options_error;

const char * llama_tq_kv_options_check(const char * options) {
    tq_kv_options o;
    tq_options_error = tq_kv_options_parse(options, o);
    return tq_options_error.empty() ? nullptr : tq_options_error.c_str();
}

const char * llama_tq_kv_layer_types(const char * options, int32_t n_layer, int32_t type_k, int32_t type_v,
                                     const int64_t * k_vals, const int64_t * v_vals, int32_t * k_types, int32_t * v_types) {
    tq_kv_options o;
    try {
        o = tq_kv_options_from_env();
    } catch (const std::exception & e) {
        tq_options_error = e.what();
        return tq_options_error.c_str();
    }
    tq_options_error = tq_kv_options_parse(options, o);
    if (!tq_options_error.empty()) {
        return tq_options_error.c_str();
    }
    if (n_layer < 0 || !k_types || !v_types) {
        tq_options_error = "llama_tq_kv_layer_types: n_layer >= 0 and two arrays of it";
        return tq_options_error.c_str();
    }
    tq_options_error = tq_check_layers(o, n_layer);
    if (!tq_options_error.empty()) {
        return tq_options_error.c_str();
    }
    if (o.bits != 0.0) {
        if (!k_vals || !v_vals || type_k < 0 || type_k >= GGML_TYPE_COUNT || type_v < 0 || type_v >= GGML_TYPE_COUNT) {
            tq_options_error = "llama_tq_kv_layer_types: the option bits needs the cache types and the layers' sizes";
            return tq_options_error.c_str();
        }
        tq_options_error = tq_kv_resolve_bits(o, (ggml_type) type_k, (ggml_type) type_v,
                                              std::vector<int64_t>(k_vals, k_vals + n_layer),
                                              std::vector<int64_t>(v_vals, v_vals + n_layer));
        if (!tq_options_error.empty()) {
            return tq_options_error.c_str();
        }
    }
    for (int32_t il = 0; il < n_layer; ++il) {
        k_types[il] = v_types[il] = -1;
    }
    for (const auto & kv : o.layer_k) {
        k_types[kv.first] = (int32_t) kv.second;
    }
    for (const auto & kv : o.layer_v) {
        v_types[kv.first] = (int32_t) kv.second;
    }
    return nullptr;
}

const char * llama_tq_kv_options(const char * options) {
    if (options == nullptr) {
        tq_thread_options.reset();
        return nullptr;
    }
    tq_kv_options o;
    tq_options_error = tq_kv_options_parse(options, o);
    if (!tq_options_error.empty()) {
        return tq_options_error.c_str();
    }
    tq_thread_options = std::make_unique<std::string>(options);
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// the statistics of one layer

// K is post-RoPE: the pair (x_j, y_j) of frequency theta_j is a pre-RoPE pair turned by
// theta_j * pos, so a constant pre-RoPE offset c shows as c e^{i theta pos}. The ubatch's mean
// (positions 1 .. n-1) is m_u = c A_u, A_u = e^{i theta n/2} D(n-1); over the positions the cache
// will hold (0 .. H-1) the offset averages c A_H, A_H = e^{i theta (H-1)/2} D(H), with
// D(m) = sin(m theta / 2) / (m sin(theta / 2)). The constant that leaves the least offset over
// those positions is c A_H = m_u (A_H / A_u): the ubatch mean turned by theta (H - 1 - n) / 2 and
// scaled by r = D(H) / D(n-1) (|r| clamped to 1; near a zero of D(n-1) the ubatch saw no offset
// and r goes to 0). It is the ubatch mean itself where the ubatch covers the cache or the pair
// barely turns, and ~0 where the offset turns many times.
//
// The factors s_i = (E[q_i^2] / E[(k_i - mu_i)^2])^(1/4) minimize the logit error once the
// rotation spreads the quantization error evenly (Cauchy-Schwarz); they need each value's second
// moments over the positions the cache will hold. RoPE turns a pair's second moments at twice its
// frequency: with Z = E[(x + i y)^2] = E[x^2 - y^2] + 2i E[x y], the ubatch measures Z0 A_u(2 theta)
// and the cache averages Z0 A_H(2 theta), so E_H[x^2] = (pair sum)/2 + Re(Z_u r2 e^{i psi2})/2 and
// E_H[y^2] = (pair sum)/2 - ..., with r2 = D2(H) / D2(n-1) (D at 2 theta, clamped to [-1, 1]) and
// psi2 = theta (H - 1 - n): per value where the pair barely turns, the pair's average where it turns
// many times. K adds the offset mu leaves over those positions, per pair (the ubatch's variance
// already holds |c|^2 (1 - D(n-1)^2)): |m_u|^2 (1 - rho (2 r - rho)), rho = r clamped to [-1, 1].

namespace {

struct stats_graph {
    ggml_context * ctx;
    int64_t n_embd_head, n_head_kv, n_embd, half;
    bool    neox;

    // theta per index (a tensor of pair indices j): freq_scale * base^(-2j/n_embd_head)
    ggml_tensor * theta(ggml_tensor * j, const tq_center_rope & r) const {
        return ggml_scale(ctx, ggml_exp(ctx, ggml_scale(ctx, j, -2.0f*logf(r.freq_base)/n_embd_head)), r.freq_scale);
    }
    ggml_tensor * dirichlet(ggml_tensor * th, float len) const {
        return ggml_div(ctx, ggml_sin(ctx, ggml_scale(ctx, th, 0.5f*len)), ggml_scale(ctx, ggml_sin(ctx, ggml_scale(ctx, th, 0.5f)), len));
    }
    // D(H) / D(n-1) as D(H) D(n-1) / (D(n-1)^2 + 1e-6): finite at the zeros of D(n-1)
    ggml_tensor * ratio(ggml_tensor * th, float H, float n) const {
        ggml_tensor * du = dirichlet(th, std::max(1.0f, n - 1.0f));
        return ggml_div(ctx, ggml_mul(ctx, dirichlet(th, H), du), ggml_scale_bias(ctx, ggml_sqr(ctx, du), 1.0f, 1e-6f));
    }
    // the pair index of every value of a head: j = i mod half (NeoX) or i / 2 (plain pairing)
    ggml_tensor * pair_of_value() const {
        ggml_tensor * jp = ggml_arange(ctx, 0.0f, (float) half, 1.0f);
        if (neox) {
            return ggml_concat(ctx, jp, jp, 0);
        }
        ggml_tensor * jv = ggml_repeat(ctx, ggml_reshape_2d(ctx, jp, 1, half), ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 2, half));
        return ggml_reshape_1d(ctx, jv, n_embd_head);
    }
    // +1 for the x of a pair, -1 for its y, per value of a head
    ggml_tensor * pair_sign() const {
        ggml_tensor * iv = ggml_arange(ctx, 0.0f, (float) n_embd_head, 1.0f);
        return neox ? ggml_sgn(ctx, ggml_scale_bias(ctx, iv, -1.0f, (float) half - 0.5f))
                    : ggml_sgn(ctx, ggml_cos(ctx, ggml_scale(ctx, iv, (float) M_PI)));
    }
    // [1, n_embd]: every value replaced by its pair's average
    ggml_tensor * pair_avg(ggml_tensor * t) const {
        if (neox) {
            ggml_tensor * t2 = ggml_reshape_2d(ctx, t, n_embd_head, n_head_kv);
            ggml_tensor * a  = ggml_view_2d(ctx, t2, half, n_head_kv, t2->nb[1], 0);
            ggml_tensor * b  = ggml_view_2d(ctx, t2, half, n_head_kv, t2->nb[1], half*ggml_element_size(t2));
            ggml_tensor * h  = ggml_scale(ctx, ggml_add(ctx, a, b), 0.5f);
            return ggml_reshape_2d(ctx, ggml_concat(ctx, h, h, 0), 1, n_embd);
        }
        ggml_tensor * p = ggml_scale(ctx, ggml_sum_rows(ctx, ggml_reshape_2d(ctx, t, 2, n_embd/2)), 0.5f); // [1, n_embd/2]
        p = ggml_repeat(ctx, p, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 2, n_embd/2));
        return ggml_reshape_2d(ctx, p, 1, n_embd);
    }
    // [n_embd_head] -> [1, n_embd], the same for every head
    ggml_tensor * per_head(ggml_tensor * t) const {
        return ggml_reshape_2d(ctx, ggml_repeat(ctx, ggml_reshape_2d(ctx, t, n_embd_head, 1),
                                                ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_embd_head, n_head_kv)), 1, n_embd);
    }
    // [1, half * n_head_kv] in pair order -> [1, n_embd], both values of a pair holding it
    ggml_tensor * spread(ggml_tensor * p) const {
        p = neox ? ggml_reshape_4d(ctx, p, 1, half, 1, n_head_kv) : ggml_reshape_4d(ctx, p, 1, 1, half, n_head_kv);
        return ggml_reshape_2d(ctx, ggml_concat(ctx, p, p, neox ? 2 : 1), 1, n_embd);
    }
    // E[x y] of every pair of xc [n_tokens, n_embd]
    ggml_tensor * pair_products(ggml_tensor * xc) const {
        const int64_t nt = xc->ne[0];
        ggml_tensor * x4 = neox ? ggml_reshape_4d(ctx, xc, nt, half, 2, n_head_kv) : ggml_reshape_4d(ctx, xc, nt, 2, half, n_head_kv);
        const size_t dy = neox ? x4->nb[2] : x4->nb[1];
        ggml_tensor * a = ggml_view_4d(ctx, x4, nt, neox ? half : 1, neox ? 1 : half, n_head_kv, x4->nb[1], x4->nb[2], x4->nb[3], 0);
        ggml_tensor * b = ggml_view_4d(ctx, x4, nt, neox ? half : 1, neox ? 1 : half, n_head_kv, x4->nb[1], x4->nb[2], x4->nb[3], dy);
        return spread(ggml_reshape_2d(ctx, ggml_mean(ctx, ggml_mul(ctx, a, b)), 1, half*n_head_kv));
    }
    // E[q_x q_y] of every pair, over the tokens and the query heads of each KV head
    ggml_tensor * query_pair_products(ggml_tensor * q4) const {
        const int64_t n_gqa = q4->ne[1], nq = q4->ne[3];
        ggml_tensor * p;
        if (neox) {
            ggml_tensor * a = ggml_view_4d(ctx, q4, half, n_gqa, n_head_kv, nq, q4->nb[1], q4->nb[2], q4->nb[3], 0);
            ggml_tensor * b = ggml_view_4d(ctx, q4, half, n_gqa, n_head_kv, nq, q4->nb[1], q4->nb[2], q4->nb[3], half*ggml_element_size(q4));
            p = ggml_mul(ctx, a, b);
        } else {
            ggml_tensor * q5 = ggml_reshape_4d(ctx, q4, 2, half, n_gqa, n_head_kv*nq);
            ggml_tensor * a = ggml_view_4d(ctx, q5, 1, half, n_gqa, n_head_kv*nq, q5->nb[1], q5->nb[2], q5->nb[3], 0);
            ggml_tensor * b = ggml_view_4d(ctx, q5, 1, half, n_gqa, n_head_kv*nq, q5->nb[1], q5->nb[2], q5->nb[3], q5->nb[0]);
            p = ggml_reshape_4d(ctx, ggml_mul(ctx, a, b), half, n_gqa, n_head_kv, nq);
        }
        p = ggml_cont(ctx, ggml_permute(ctx, p, 2, 0, 3, 1)); // [n_gqa, n_tokens, half, n_head_kv]
        return spread(ggml_mean(ctx, ggml_reshape_2d(ctx, p, p->ne[0]*p->ne[1], half*n_head_kv)));
    }
    // the ubatch mean m [1, n_embd] turned and scaled per pair to the cache's positions
    ggml_tensor * carried_mean(ggml_tensor * m, ggml_tensor * thp, float H, float n) const {
        ggml_tensor * rp  = ggml_clamp(ctx, ratio(thp, H, n), -1.0f, 1.0f);
        ggml_tensor * psi = ggml_scale(ctx, thp, 0.5f*(H - 1.0f - n));
        // the pairs of every head as x and y: [half, 1, n_head_kv] (NeoX) or [1, half, n_head_kv]
        const int64_t ne0 = neox ? half : 1, ne1 = neox ? 1 : half;
        ggml_tensor * m3 = neox ? ggml_reshape_3d(ctx, m, half, 2, n_head_kv) : ggml_reshape_3d(ctx, m, 2, half, n_head_kv);
        const size_t  dy = neox ? m3->nb[1] : m3->nb[0];
        ggml_tensor * x  = ggml_cont(ctx, ggml_view_3d(ctx, m3, ne0, ne1, n_head_kv, m3->nb[1], m3->nb[2], 0));
        ggml_tensor * y  = ggml_cont(ctx, ggml_view_3d(ctx, m3, ne0, ne1, n_head_kv, m3->nb[1], m3->nb[2], dy));
        ggml_tensor * cs = ggml_reshape_3d(ctx, ggml_mul(ctx, rp, ggml_cos(ctx, psi)), ne0, ne1, 1);
        ggml_tensor * sn = ggml_reshape_3d(ctx, ggml_mul(ctx, rp, ggml_sin(ctx, psi)), ne0, ne1, 1);
        ggml_tensor * mx = ggml_sub(ctx, ggml_mul(ctx, x, cs), ggml_mul(ctx, y, sn));
        ggml_tensor * my = ggml_add(ctx, ggml_mul(ctx, x, sn), ggml_mul(ctx, y, cs));
        return ggml_reshape_2d(ctx, ggml_concat(ctx, mx, my, neox ? 1 : 0), n_embd_head, n_head_kv);
    }
};

} // namespace

namespace {

// The rows [r0, r1) of thread ith of nth among `rows`
static void tq_thread_rows(int64_t rows, int ith, int nth, int64_t * r0, int64_t * r1) {
    *r0 = rows*ith/nth;
    *r1 = rows*(ith + 1)/nth;
}

// R(p) m of one RoPE pair (mx, my) with c, s = cos, sin of p theta, in the order of the element-wise
// graph that the custom ops below replace
static inline void tq_turn_pair(float mx, float my, float c, float s, float * ox, float * oy) {
    *ox = mx*c + (-my)*s;
    *oy = my*c + mx*s;
}

// dst = (k - R(p) m0 - mu) * sc (pair_ops::sub_turned; src: k, m0, the tokens' table, and optionally
// mu and sc): pair (x, y) of token t with c, s = cos, sin of p theta from the table's planes takes
// x - (m0x c - m0y s) and y - (m0y c + m0x s), in the order of the element-wise graph it replaces
template <bool neox>
static void tq_pairs_sub_turned(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * k = dst->src[0], * m = dst->src[1], * tab = dst->src[2];
    const ggml_tensor * mu = dst->src[3], * sc = dst->src[4];
    const int64_t n = k->ne[0], h = k->ne[1], half = n/2;
    int64_t r0, r1;
    tq_thread_rows(h*k->ne[2], ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t ih = r % h, it = r / h;
        const float * kr = (const float *) ((const char *) k->data + ih*k->nb[1] + it*k->nb[2]);
        const float * mr = (const float *) ((const char *) m->data + ih*m->nb[1]);
        const float * cs = (const float *) ((const char *) tab->data + it*tab->nb[1]);
        const float * sn = (const float *) ((const char *) tab->data + it*tab->nb[1] + tab->nb[2]);
        float * out = (float *) ((char *) dst->data + ih*dst->nb[1] + it*dst->nb[2]);
        for (int64_t j = 0; j < half; ++j) {
            const int64_t x = neox ? j : 2*j, y = neox ? j + half : 2*j + 1;
            float tx, ty;
            tq_turn_pair(mr[x], mr[y], cs[x], sn[x], &tx, &ty);
            out[x] = kr[x] - tx;
            out[y] = kr[y] - ty;
        }
        if (mu) {
            const float * u = (const float *) ((const char *) mu->data + ih*mu->nb[1]);
            for (int64_t i = 0; i < n; ++i) {
                out[i] -= u[i];
            }
        }
        if (sc) {
            const float * v = (const float *) ((const char *) sc->data + ih*sc->nb[1]);
            for (int64_t i = 0; i < n; ++i) {
                out[i] *= v[i];
            }
        }
    }
}

// dst = the query term of q (pair_ops::query_term)
template <bool neox>
static void tq_pairs_query_term(ggml_tensor * dst, const ggml_tensor * q, const ggml_tensor * m, int ith, int nth, void *) {
    const int64_t n = q->ne[0], nh = q->ne[1], half = n/2, n_gqa = nh/m->ne[1];
    int64_t r0, r1;
    tq_thread_rows(nh*q->ne[2], ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t ih = r % nh, it = r / nh;
        const float * qr = (const float *) ((const char *) q->data + ih*q->nb[1] + it*q->nb[2]);
        const float * mr = (const float *) ((const char *) m->data + (ih/n_gqa)*m->nb[1]);
        float * out = (float *) ((char *) dst->data + ih*dst->nb[1] + it*dst->nb[2]);
        for (int64_t j = 0; j < half; ++j) {
            const int64_t x = neox ? j : 2*j, y = neox ? j + half : 2*j + 1;
            out[x] = qr[x]*mr[x] + qr[y]*mr[y];
            out[y] = qr[y]*mr[x] - qr[x]*mr[y];
        }
    }
}

// dst [n, n_kv, h_kv, n_stream] = sc * R(p) m0 of every cell and KV head (src: the cells' table
// [n, n_kv * n_stream], whose row holds cos at x and sin at y of each pair, m0 [n, h_kv] and
// optionally sc [n, h_kv]): the offset that the stored key of that cell took off, before rotation
template <bool neox>
static void tq_pairs_key_offset(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * tab = dst->src[0], * m = dst->src[1], * sc = dst->src[2];
    const int64_t n = dst->ne[0], n_kv = dst->ne[1], h = dst->ne[2], half = n/2;
    int64_t r0, r1;
    tq_thread_rows(n_kv*h*dst->ne[3], ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t j = r % n_kv, ih = (r / n_kv) % h, is = r / (n_kv*h);
        const float * row = (const float *) ((const char *) tab->data + (is*n_kv + j)*tab->nb[1]);
        const float * mr  = (const float *) ((const char *) m->data + ih*m->nb[1]);
        const float * v   = sc ? (const float *) ((const char *) sc->data + ih*sc->nb[1]) : nullptr;
        float * out = (float *) ((char *) dst->data + j*dst->nb[1] + ih*dst->nb[2] + is*dst->nb[3]);
        for (int64_t i = 0; i < half; ++i) {
            const int64_t x = neox ? i : 2*i, y = neox ? i + half : 2*i + 1;
            float tx, ty;
            tq_turn_pair(mr[x], mr[y], row[x], row[y], &tx, &ty);
            out[x] = tx * (v ? v[x] : 1.0f);
            out[y] = ty * (v ? v[y] : 1.0f);
        }
    }
}

// The values of a head as RoPE pairs (x, y): x = 2j, y = 2j+1 (plain) or x = j, y = j + n/2 (NeoX).
// With the tables' c = cos(p theta_j) and s = sin(p theta_j) on both values of a pair (Cc, Ss),
// R(p) m = m Cc + J(m) Ss and R(p)^T k = k Cc - J(k) Ss, where J(x, y) = (-y, x).
struct pair_ops {
    ggml_context * ctx;
    int64_t n;      // values per head
    bool    neox;

    // t (contiguous, n values per row) as [1, n/2, rows] x or y values (plain) or [n/2, 1, rows]
    ggml_tensor * half(ggml_tensor * t, bool y) const {
        const int64_t rows = ggml_nelements(t)/n;
        ggml_tensor * t3 = neox ? ggml_reshape_3d(ctx, t, n/2, 2, rows) : ggml_reshape_3d(ctx, t, 2, n/2, rows);
        const int64_t ne0 = neox ? n/2 : 1, ne1 = neox ? 1 : n/2;
        return ggml_cont(ctx, ggml_view_3d(ctx, t3, ne0, ne1, rows, t3->nb[1], t3->nb[2], y ? (neox ? t3->nb[1] : t3->nb[0]) : 0));
    }
    // x and y values back into pairs, shaped like `like`
    ggml_tensor * join(ggml_tensor * x, ggml_tensor * y, const ggml_tensor * like) const {
        return ggml_reshape(ctx, ggml_concat(ctx, x, y, neox ? 1 : 0), const_cast<ggml_tensor *>(like));
    }
    ggml_tensor * J(ggml_tensor * t) const {
        return join(ggml_neg(ctx, half(t, true)), half(t, false), t);
    }
    // the tokens' table [n, n_tokens, 2] as Cc and Ss [n, 1, n_tokens]
    ggml_tensor * plane(ggml_tensor * tab, int i) const {
        return ggml_reshape_3d(ctx, ggml_view_2d(ctx, tab, n, tab->ne[1], tab->nb[1], i*tab->nb[2]), n, 1, tab->ne[1]);
    }
    // R(p)^T k of every token of k [n, h, n_tokens]
    ggml_tensor * unturn(ggml_tensor * k, ggml_tensor * tab) const {
        ggml_tensor * kc = ggml_is_contiguous(k) ? k : ggml_cont(ctx, k);
        return ggml_sub(ctx, ggml_mul(ctx, kc, plane(tab, 0)), ggml_mul(ctx, J(kc), plane(tab, 1)));
    }
    // (k - R(p) m0 - mu) * sc for every token of k [n, h, n_tokens]; m0, mu, sc [n, h], mu and sc
    // optional. One node where ggml's element-wise ops take twelve (m0 and J(m0) repeated over the
    // tokens, times the planes, summed, subtracted; then mu and sc): a decode step runs it in every
    // layer, and each node costs the threads a barrier
    ggml_tensor * sub_turned(ggml_tensor * k, ggml_tensor * m0, ggml_tensor * tab, ggml_tensor * mu, ggml_tensor * sc) const {
        GGML_ASSERT(k->type == GGML_TYPE_F32 && k->ne[0] == n && k->ne[3] == 1 && tab->ne[1] == k->ne[2]);
        for (const ggml_tensor * t : { m0, mu, sc }) {
            GGML_ASSERT(!t || (t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && t->ne[0] == n && t->ne[1] == k->ne[1]));
        }
        GGML_ASSERT(mu || !sc);
        ggml_tensor * args[5] = { k, m0, tab, mu, sc };
        return ggml_custom_4d(ctx, GGML_TYPE_F32, n, k->ne[1], k->ne[2], 1, args, mu ? (sc ? 5 : 4) : 3,
                              neox ? tq_pairs_sub_turned<true> : tq_pairs_sub_turned<false>, GGML_N_TASKS_MAX, nullptr);
    }
    // the queries' half of q.R(p) m: per pair a = qx mx + qy my on x and b = qy mx - qx my on y, so
    // that q.R(p) m = sum a cos + b sin, the cells' table's dot product. q [n, n_head, n_tokens]
    // (query head h reads KV head h / (n_head / h_kv)), m [n, h_kv]; one node, as sub_turned
    ggml_tensor * query_term(ggml_tensor * q, ggml_tensor * m) const {
        GGML_ASSERT(q->type == GGML_TYPE_F32 && q->ne[0] == n && q->ne[3] == 1 && q->ne[1] % m->ne[1] == 0);
        GGML_ASSERT(m->type == GGML_TYPE_F32 && ggml_is_contiguous(m) && m->ne[0] == n);
        return ggml_map_custom2(ctx, q, m, neox ? tq_pairs_query_term<true> : tq_pairs_query_term<false>, GGML_N_TASKS_MAX, nullptr);
    }
};

// the tokens that the statistics are taken over, of x [n, h, n_tokens], as [n_tokens', n*h] (one
// row per value). A ubatch of several sequences (parallel sequences in their own streams,
// split_equal: llama-perplexity scores 4 chunks at once) holds ns tokens of each, one sequence
// after the other: they span positions 0 .. ns-1 only, not 0 .. n_tokens-1 (*ns). The first token
// of a sequence (BOS, an attention sink) has keys and values far from all others: it would pull
// the mean away from every other token, so each sequence's is left out.
ggml_tensor * tq_center_stats_tokens(ggml_context * ctx, ggml_tensor * x, int64_t n_seq_tokens, int64_t * ns_out) {
    const int64_t n_embd = x->ne[0]*x->ne[1];
    const int64_t ns = n_seq_tokens > 0 && x->ne[2] % n_seq_tokens == 0 ? n_seq_tokens : x->ne[2];
    const int64_t nq = x->ne[2]/ns;
    const int64_t t0 = ns > 1 ? 1 : 0;
    ggml_tensor * xs = ggml_view_3d(ctx, x, n_embd, ns - t0, nq, x->nb[2], ns*x->nb[2], t0*x->nb[2]);
    if (ns_out) {
        *ns_out = ns;
    }
    return ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, ggml_cont(ctx, xs), n_embd, (ns - t0)*nq)));
}

// the mean over the tokens of x [n, h, n_tokens] as [n, h], taken as the statistics take theirs
ggml_tensor * tq_center_token_mean(ggml_context * ctx, ggml_tensor * x, int64_t n_seq_tokens) {
    return ggml_reshape_2d(ctx, ggml_mean(ctx, tq_center_stats_tokens(ctx, x, n_seq_tokens, nullptr)), x->ne[0], x->ne[1]);
}

} // namespace

// A ubatch of this many tokens per stream and more takes the keys' offset form of the term: as
// many query rows as the CPU's tiled flash attention takes at a time (GGML_FA_TILE_Q), from which
// on adding the offset to each decoded key costs less than the term's product per row and key
static constexpr int64_t TQ_KEY_OFFSET_MIN_TOKENS = 64;
// and at most this many bytes of offsets (n_embd_head x KV heads x cells of the whole cache, F32;
// twice that at once, before and after the rotation): the compute buffer holds them for a
// ubatch, so a longer cache keeps the term
static constexpr size_t TQ_KEY_OFFSET_MAX_BYTES = 32u << 20;

void tq_center_add_key_bias(ggml_context * ctx, ggml_tensor * fa, const tq_key_bias & kb) {
    if (!kb.kb) {
        return;
    }
    const ggml_tensor * q = fa->src[0]; // [n, n_tokens per stream, n_head, n_stream]
    const ggml_tensor * k = fa->src[1]; // [n, n_kv, n_head_kv, n_stream]
    // the cells of the whole cache, which the graph that sizes the compute buffer attends to: the
    // same choice for it and for every ubatch of that length
    const ggml_tensor * kc = k->view_src ? k->view_src : k;
    const size_t offset_bytes = sizeof(float) * (size_t) (k->ne[0] * k->ne[2]) * (size_t) (ggml_nelements(kc) / kc->ne[0]);
    if (kb.mean0 && q->ne[1] >= TQ_KEY_OFFSET_MIN_TOKENS && offset_bytes <= TQ_KEY_OFFSET_MAX_BYTES) {
        GGML_ASSERT(kb.kb->ne[0] == k->ne[0] && kb.kb->ne[1] == k->ne[1]*k->ne[3]);
        GGML_ASSERT(kb.mean0->ne[0] == k->ne[0] && kb.mean0->ne[1] == k->ne[2]);
        ggml_tensor * args[3] = { kb.kb, kb.mean0, kb.scale };
        ggml_tensor * ko = ggml_custom_4d(ctx, GGML_TYPE_F32, k->ne[0], k->ne[1], k->ne[2], k->ne[3], args, kb.scale ? 3 : 2,
                                          kb.neox ? tq_pairs_key_offset<true> : tq_pairs_key_offset<false>, GGML_N_TASKS_MAX, nullptr);
        if (kb.rot) {
            ko = llama_mul_mat_hadamard(ctx, ko, kb.rot);
        }
        ggml_flash_attn_ext_add_key_offset(fa, ko);
        return;
    }
    ggml_tensor * qb = kb.qb; // [n, n_head, n_tokens], tokens stream by stream
    qb = ggml_view_4d(ctx, qb, q->ne[0], q->ne[2], q->ne[1], q->ne[3], qb->nb[1], qb->nb[2], qb->nb[2]*q->ne[1], 0);
    qb = ggml_permute(ctx, qb, 0, 2, 1, 3);
    GGML_ASSERT(kb.kb->ne[1] == k->ne[1]*k->ne[3]);
    ggml_tensor * t = ggml_view_4d(ctx, kb.kb, k->ne[0], k->ne[1], 1, k->ne[3], kb.kb->nb[1], kb.kb->nb[1]*k->ne[1],
                                   kb.kb->nb[1]*k->ne[1], 0);
    ggml_flash_attn_ext_add_key_bias(fa, qb, t);
}

tq_center_stats tq_center_build_stats(ggml_context * ctx, ggml_tensor * cur, ggml_tensor * q4, const tq_center_stats_params & p) {
    const int64_t n_embd_head = cur->ne[0];
    const int64_t n_head_kv   = cur->ne[1];
    const int64_t n_embd      = n_embd_head*n_head_kv;
    GGML_ASSERT(cur->type == GGML_TYPE_F32 && ggml_row_size(cur->type, n_embd_head) == cur->nb[1]);
    GGML_ASSERT(!p.equalize || (q4 && q4->ne[0] == n_embd_head && q4->ne[2] == n_head_kv));

    int64_t ns = 0;
    ggml_tensor * xt = tq_center_stats_tokens(ctx, cur, p.n_seq_tokens, &ns); // [n_tokens, n_embd]
    ggml_tensor * m  = ggml_mean(ctx, xt); // [1, n_embd]

    const float H = p.positions;
    const float n = (float) ns; // the positions the statistics span
    const bool rope = p.rope.type != LLAMA_ROPE_TYPE_NONE && H > n;
    const stats_graph g = { ctx, n_embd_head, n_head_kv, n_embd, n_embd_head/2, p.rope.type == LLAMA_ROPE_TYPE_NEOX };

    tq_center_stats out;
    out.mean = rope ? g.carried_mean(m, g.theta(ggml_arange(ctx, 0.0f, (float) g.half, 1.0f), p.rope), H, n)
                    : ggml_reshape_2d(ctx, m, n_embd_head, n_head_kv);
    if (!p.equalize) {
        return out;
    }
    // E[q_i^2] over the tokens and the query heads of each KV head
    ggml_tensor * q2 = ggml_cont(ctx, ggml_permute(ctx, ggml_sqr(ctx, q4), 2, 0, 3, 1)); // [n_gqa, n_tokens, n_embd_head, n_head_kv]
    q2 = ggml_mean(ctx, ggml_reshape_2d(ctx, q2, q2->ne[0]*q2->ne[1], n_embd)); // [1, n_embd]
    ggml_tensor * xc = ggml_sub(ctx, xt, m);
    ggml_tensor * vk = ggml_mean(ctx, ggml_sqr(ctx, xc)); // [1, n_embd] about the ubatch mean
    if (rope) {
        ggml_tensor * thv  = g.theta(g.pair_of_value(), p.rope);
        ggml_tensor * th2  = ggml_scale(ctx, thv, 2.0f);
        ggml_tensor * rho2 = ggml_clamp(ctx, g.ratio(th2, H, n), -1.0f, 1.0f);
        ggml_tensor * psi2 = ggml_scale(ctx, th2, 0.5f*(H - 1.0f - n));
        ggml_tensor * C2   = g.per_head(ggml_mul(ctx, rho2, ggml_cos(ctx, psi2)));
        ggml_tensor * S2   = g.per_head(ggml_mul(ctx, ggml_mul(ctx, rho2, ggml_sin(ctx, psi2)), g.pair_sign()));
        auto turn = [&](ggml_tensor * t, ggml_tensor * cxy) {
            ggml_tensor * pa = g.pair_avg(t);
            return ggml_add(ctx, pa, ggml_sub(ctx, ggml_mul(ctx, ggml_sub(ctx, t, pa), C2), ggml_mul(ctx, cxy, S2)));
        };
        ggml_tensor * r   = g.per_head(g.ratio(thv, H, n));
        ggml_tensor * rho = ggml_clamp(ctx, r, -1.0f, 1.0f);
        // 1 - rho (2 r - rho), floored at 0 (|r| > 1: only near a zero of D(n-1))
        ggml_tensor * left = ggml_relu(ctx, ggml_scale_bias(ctx, ggml_mul(ctx, rho, ggml_sub(ctx, ggml_scale(ctx, r, 2.0f), rho)), -1.0f, 1.0f));
        q2 = turn(q2, g.query_pair_products(q4));
        vk = ggml_add(ctx, turn(vk, g.pair_products(xc)), ggml_mul(ctx, left, g.pair_avg(ggml_sqr(ctx, m))));
    }
    // a floor of 1% of the average keeps a value that happened not to vary in this ubatch (or that
    // queries ignore) from getting an extreme factor
    auto floored = [&](ggml_tensor * t) {
        ggml_tensor * avg = ggml_mean(ctx, ggml_reshape_2d(ctx, t, n_embd, 1)); // [1, 1]
        return ggml_add(ctx, t, ggml_scale(ctx, avg, 0.01f));
    };
    // keys that do not vary at all (one token, centred on itself): factors of 1, not q2 / 0
    ggml_tensor * vk_avg  = ggml_mean(ctx, ggml_reshape_2d(ctx, vk, n_embd, 1));
    ggml_tensor * q2f     = floored(q2);
    ggml_tensor * no_var  = ggml_scale_bias(ctx, ggml_step(ctx, vk_avg), -1.0f, 1.0f); // 1 where vk is all 0
    ggml_tensor * vkf     = ggml_add(ctx, floored(vk), ggml_mul(ctx, q2f, no_var));
    out.scale = ggml_reshape_2d(ctx, ggml_sqrt(ctx, ggml_sqrt(ctx, ggml_div(ctx, q2f, vkf))), n_embd_head, n_head_kv);
    return out;
}

ggml_tensor * tq_center_sink_mean(ggml_context * ctx, ggml_tensor * x, ggml_tensor * mean, ggml_tensor * scale,
                                  ggml_tensor * rot, ggml_type type) {
    // The first token (an attention sink: most queries put much of their weight on it) is coded
    // exactly: its centred, scaled and rotated vector goes through the cache's own quantizer and
    // back, and mu moves by the difference, so that the token's stored vector is a code word,
    // which the quantizer reproduces. Every other vector moves by that same small vector (the
    // sink's quantization error) and attention stays exact. Keys at position 0 are much alike
    // whatever the token, so a model without BOS gains as well.
    const int64_t n_embd_head = x->ne[0], n_head_kv = x->ne[1];
    ggml_tensor * x0 = ggml_view_3d(ctx, x, n_embd_head, n_head_kv, 1, x->nb[1], x->nb[2], 0);
    ggml_tensor * c  = ggml_sub(ctx, x0, ggml_reshape_3d(ctx, mean, n_embd_head, n_head_kv, 1));
    if (scale) {
        c = ggml_mul(ctx, c, ggml_reshape_3d(ctx, scale, n_embd_head, n_head_kv, 1));
    }
    if (rot) {
        c = llama_mul_mat_hadamard(ctx, c, rot);
    }
    c = ggml_cast(ctx, ggml_cast(ctx, c, type), GGML_TYPE_F32);
    if (rot) {
        c = llama_mul_mat_hadamard(ctx, c, rot);
    }
    if (scale) {
        c = ggml_div(ctx, c, ggml_reshape_3d(ctx, scale, n_embd_head, n_head_kv, 1));
    }
    return ggml_reshape_2d(ctx, ggml_sub(ctx, x0, c), n_embd_head, n_head_kv);
}

ggml_tensor * tq_center_uncenter_v(ggml_context * ctx, ggml_tensor * cur, ggml_tensor * mean_v) {
    if (!mean_v) {
        return cur;
    }
    const int64_t n_embd_head = mean_v->ne[0];
    const int64_t n_head_kv   = mean_v->ne[1];
    const int64_t n_head      = cur->ne[0]/n_embd_head;
    GGML_ASSERT(cur->ne[0] == n_embd_head*n_head && n_head % n_head_kv == 0 && ggml_is_contiguous(cur));
    const int64_t n_tokens = ggml_nelements(cur)/(n_embd_head*n_head);
    ggml_tensor * x = ggml_reshape_4d(ctx, cur, n_embd_head, n_head/n_head_kv, n_head_kv, n_tokens);
    x = ggml_add(ctx, x, ggml_reshape_4d(ctx, mean_v, n_embd_head, 1, n_head_kv, 1));
    return ggml_reshape_2d(ctx, x, cur->ne[0], n_tokens);
}

// ---------------------------------------------------------------------------------------------
// one cache

bool tq_kv_check_params(const llama_model & model, llama_context_params & params) {
    // K*Q of a tq K cache exists only inside flash attention (there is no mul_mat for it on GPUs)
    if (ggml_type_is_tq(params.type_k) && params.flash_attn_type != LLAMA_FLASH_ATTN_TYPE_ENABLED) {
        if (params.flash_attn_type == LLAMA_FLASH_ATTN_TYPE_AUTO) {
            LLAMA_LOG_INFO("%s: enabling flash_attn since it is required for the %s K cache\n", __func__, ggml_type_name(params.type_k));
            params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        } else {
            LLAMA_LOG_ERROR("%s: K cache type %s requires flash_attn to be enabled (-fa on, or flash_attn=True in Python)\n",
                __func__, ggml_type_name(params.type_k));
            return false;
        }
    }
    // the codec codes blocks of 64 values, which is also what the cache's Hadamard rotation needs
    for (const bool is_k : { true, false }) {
        const ggml_type t = is_k ? params.type_k : params.type_v;
        if (!ggml_type_is_tq(t)) {
            continue;
        }
        for (uint32_t il = 0; il < model.hparams.n_layer(); ++il) {
            const uint32_t n = is_k ? model.hparams.n_embd_head_k(il) : model.hparams.n_embd_head_v(il);
            if (n % 64 != 0) {
                LLAMA_LOG_ERROR("%s: %s cache type %s does not support head size %u (layer %u): head sizes must be multiples of 64\n",
                    __func__, is_k ? "K" : "V", ggml_type_name(t), n, il);
                return false;
            }
        }
    }
    return true;
}

void tq_kv_center::warn_unrotated(ggml_type tk, ggml_type tv, bool rot_k, bool rot_v) {
    for (const bool is_k : { true, false }) {
        const ggml_type t = is_k ? tk : tv;
        if (ggml_type_is_tq(t) && !(is_k ? rot_k : rot_v)) {
            LLAMA_LOG_WARN("%s: the %s cache (%s) is not rotated (LLAMA_ATTN_ROT_DISABLE, or head sizes differ between layers): "
                "TurboQuant accuracy will be poor\n", __func__, is_k ? "K" : "V", ggml_type_name(t));
        }
    }
}

void tq_kv_center::init(const llama_model & model, const llama_hparams & hparams, ggml_type tk, ggml_type tv,
                        bool is_mla, bool shares_cells, bool is_swa_cache, uint32_t kv_size, bool offload,
                        const std::function<bool(int32_t)> & has_layer) {
    hp = &hparams;
    type_k = tk;
    type_v = tv;
    tq_kv_options o = tq_kv_options_current();
    if (o.bits != 0.0) {
        // over every layer of the model, so that the caches of a model with sliding-window layers
        // (one for those, one for the others) take the same choice
        std::vector<int64_t> k_vals(hparams.n_layer_all), v_vals(hparams.n_layer_all);
        for (uint32_t il = 0; il < hparams.n_layer_all; ++il) {
            const bool kv = hparams.n_head_kv(il) > 0;
            k_vals[il] = kv ? (int64_t) hparams.n_embd_k_gqa(il) : 0;
            v_vals[il] = kv ? (int64_t) hparams.n_embd_v_gqa(il) : 0;
        }
        const std::string err = tq_kv_resolve_bits(o, tk, tv, k_vals, v_vals);
        if (!err.empty()) {
            throw std::runtime_error(err);
        }
        std::string desc;
        for (const auto * m : { &o.layer_k, &o.layer_v }) {
            if (!m->empty()) {
                desc += std::string(desc.empty() ? "" : ", ") + (m == &o.layer_k ? "K" : "V") + " of layers 0-" +
                        std::to_string(m->rbegin()->first) + " in " + ggml_type_name(m->begin()->second);
            }
        }
        LLAMA_LOG_INFO("%s: KV-cache option bits=%g: %s\n", __func__, o.bits, desc.empty() ? "no layer moves" : desc.c_str());
    }
    // per-layer types: another tq type in a layer of a tq cache (rotated like every layer of it)
    for (const auto * m : { &o.layer_k, &o.layer_v }) {
        const bool is_k = m == &o.layer_k;
        const ggml_type t = is_k ? tk : tv;
        if (!m->empty() && !ggml_type_is_tq(t)) {
            throw std::runtime_error(std::string("KV-cache option layers: per-layer ") + (is_k ? "K" : "V") +
                                     " types need a tq " + (is_k ? "K" : "V") + " cache, not " + ggml_type_name(t));
        }
    }
    const std::string missing = tq_check_layers(o, (int32_t) hparams.n_layer_all);
    if (!missing.empty()) {
        throw std::runtime_error(missing);
    }
    layer_k = o.layer_k;
    layer_v = o.layer_v;
    // tq2ts/tq3ts have CPU code only: a layer whose cache sits in a GPU's (or an RPC server's)
    // memory would reach a backend that cannot write or read it
    for (int32_t il = 0; offload && il < (int32_t) hparams.n_layer_all; ++il) {
        if (!has_layer(il) || ggml_backend_buft_is_host(ggml_backend_dev_buffer_type(model.dev_layer(il)))) {
            continue;
        }
        for (const bool is_k : { true, false }) {
            const ggml_type t = layer_type(il, is_k);
            if (ggml_type_is_tq_s8(t)) {
                throw std::runtime_error(std::string("the ") + (is_k ? "K" : "V") + " cache type " + ggml_type_name(t) +
                    " of layer " + std::to_string(il) + " runs on the CPU only, and this layer's cache is on " +
                    ggml_backend_dev_name(model.dev_layer(il)) + ": keep the KV cache on the CPU (offload_kqv off, "
                    "--no-kv-offload) or use " + (t == GGML_TYPE_TQ2TS ? "tq2t" : "tq3t"));
            }
        }
    }
    center_k = o.center == tq_center_mode::automatic ? ggml_type_is_tq(tk)
                                                     : o.center != tq_center_mode::off && ggml_is_quantized(tk);
    center_v = o.center == tq_center_mode::kv && ggml_is_quantized(tv) && !is_mla;

    // the shift is exact only when the mean goes through the same (whole-head) RoPE as the keys;
    // sinks and soft-capped logits are not shift-invariant, and a sink also breaks sum p_j = 1 for V
    const char * why_off = nullptr;
    bool full_rope = true;
    for (int32_t il = 0; il < (int32_t) hparams.n_layer_all; ++il) {
        if (!has_layer(il)) {
            continue;
        }
        if (hparams.has_rope(il) && hparams.n_rot(il) != hparams.n_embd_head_k(il)) {
            full_rope = false;
        }
        if ((size_t) il < model.layers.size() && model.layers[il].attn_sinks) {
            why_off = "the model has attention sinks";
        }
    }
    if (hparams.attn_soft_cap) {
        why_off = "the model soft-caps attention logits";
    } else if (shares_cells) {
        why_off = "the cache shares its cells with another cache";
    }
    if (enabled() && why_off) {
        LLAMA_LOG_WARN("%s: KV mean-centring off: %s, where it is not exact\n", __func__, why_off);
        center_k = center_v = false;
    }
    if (center_k && !full_rope) {
        LLAMA_LOG_WARN("%s: K mean-centring off: RoPE covers only part of the head (K-shift would not be exact)\n", __func__);
        center_k = false;
    }
    // the K statistics follow RoPE's pairs: plain and NeoX pairing only
    if (center_k && hparams.rope_type != LLAMA_ROPE_TYPE_NORM && hparams.rope_type != LLAMA_ROPE_TYPE_NEOX &&
            hparams.rope_type != LLAMA_ROPE_TYPE_NONE) {
        LLAMA_LOG_WARN("%s: K mean-centring off: RoPE type %d pairs values in a way it does not model\n", __func__, (int) hparams.rope_type);
        center_k = false;
    }
    equalize_k = center_k && o.equalize;
    sink_code  = o.sink;
    key_offset = o.key_offset;
    // keys centred before RoPE: flash attention adds their term back (tq K caches; CPU only: the
    // CUDA kernels do not add it yet), and one table of RoPE frequencies serves every layer
    rope_pre = false;
    if (center_k && o.rope != tq_rope_mode::post) {
        const char * why = nullptr;
        int32_t il0 = -1;
        for (int32_t il = 0; il < (int32_t) hparams.n_layer_all && !why; ++il) {
            if (!hparams.has_kv(il)) {
                why = "a layer reads another layer's cache";
            } else if (!has_layer(il)) {
                continue;
            } else if (offload && !ggml_backend_buft_is_host(ggml_backend_dev_buffer_type(model.dev_layer(il)))) {
                why = "a layer's cache is on a GPU (or another host), whose attention does not add the keys' offset back";
            } else if (!hparams.has_rope(il)) {
                why = "a layer has no RoPE";
            } else if (il0 < 0) {
                il0 = il;
            } else if (hparams.n_embd_head_k(il) != hparams.n_embd_head_k(il0) || hparams.is_swa(il) != hparams.is_swa(il0)) {
                why = "the layers' head sizes or RoPE frequencies differ";
            }
        }
        if (!ggml_type_is_tq(tk)) {
            why = "the K cache is not a tq type (flash attention adds the keys' offset back only there)";
        } else if (hparams.rope_type == LLAMA_ROPE_TYPE_NONE) {
            why = "the model has no RoPE";
        } else if (il0 < 0) {
            why = "the cache has no layers";
        }
        if (why && o.rope == tq_rope_mode::pre) {
            throw std::runtime_error(std::string("KV-cache option rope=pre: ") + why);
        }
        if (why) {
            LLAMA_LOG_INFO("%s: K centred after RoPE: %s\n", __func__, why);
        } else {
            rope_pre  = true;
            rope_neox = hparams.rope_type == LLAMA_ROPE_TYPE_NEOX;
            rope_dim  = hparams.n_embd_head_k(il0);
            const bool swa = hparams.is_swa(il0);
            const double base  = swa ? hparams.rope_freq_base_train_swa  : hparams.rope_freq_base_train;
            const double scale = swa ? hparams.rope_freq_scale_train_swa : hparams.rope_freq_scale_train;
            rope_theta.resize(rope_dim/2);
            for (int64_t i = 0; i < rope_dim/2; ++i) {
                rope_theta[i] = scale*pow(base, -2.0*(double) i/(double) rope_dim);
            }
            // Llama-3's frequency factors divide the frequencies (the same tensor in every layer)
            const ggml_tensor * ff = (size_t) il0 < model.layers.size() ? model.layers[il0].rope_freqs : nullptr;
            if (ff && ff->type == GGML_TYPE_F32 && ff->ne[0] >= rope_dim/2 && ff->buffer) {
                std::vector<float> f(rope_dim/2);
                ggml_backend_tensor_get(ff, f.data(), 0, f.size()*sizeof(float));
                for (int64_t i = 0; i < rope_dim/2; ++i) {
                    rope_theta[i] /= f[i];
                }
            }
        }
    }
    const auto & target = tq_kv_calibration_target_current();
    // the calibration's own context measures the statistics from its first ubatch (the text)
    source     = target.active ? tq_stats_source::first_ubatch : o.stats;
    // the positions the cache will hold: its size (or, while calibrating, the real cache's), or for
    // a sliding-window cache (whose positions run past its size) the training context (the
    // context's own length measured worse on Gemma-3: docs/method.md, Centring)
    positions = is_swa_cache ? (float) hparams.n_ctx_train : (float) (target.active ? target.positions : kv_size);
    if (enabled()) {
        LLAMA_LOG_INFO("%s: mean-centred K = %d (before RoPE = %d), V = %d, equalized K = %d, first token coded exactly = %d, statistics: %s\n",
            __func__, center_k, rope_pre, center_v, equalize_k, sink_code, source == tq_stats_source::calibration ? "calibration" : "first ubatch");
    }
}

void tq_kv_center::alloc_layer(ggml_context * ctx, int32_t il, const char * name_tag) {
    layer l;
    l.il = il;
    l.type_k = layer_type(il, true);
    l.type_v = layer_type(il, false);
    if (hp->rope_type != LLAMA_ROPE_TYPE_NONE) {
        l.rope.type       = hp->rope_type;
        l.rope.freq_base  = hp->is_swa(il) ? hp->rope_freq_base_train_swa  : hp->rope_freq_base_train;
        l.rope.freq_scale = hp->is_swa(il) ? hp->rope_freq_scale_train_swa : hp->rope_freq_scale_train;
    }
    auto make = [&](const char * what, uint32_t n_embd_head) {
        ggml_tensor * t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_embd_head, hp->n_head_kv(il));
        ggml_format_name(t, "cache_%s%s_l%d", name_tag, what, il);
        return t;
    };
    if (center_k) {
        l.mean_k = make("k_mean", hp->n_embd_head_k(il));
    }
    if (rope_pre) {
        l.mean_k0 = make("k_mean0", hp->n_embd_head_k(il));
    }
    if (equalize_k) {
        l.scale_k = make("k_scale", hp->n_embd_head_k(il));
    }
    if (center_v) {
        l.mean_v = make("v_mean", hp->n_embd_head_v(il));
    }
    by_il[il] = layers.size();
    layers.push_back(l);
}

ggml_type tq_kv_center::layer_type(int32_t il, bool is_k) const {
    const auto & m = is_k ? layer_k : layer_v;
    const auto it = m.find(il);
    return it == m.end() ? (is_k ? type_k : type_v) : it->second;
}

// the projection a chain starts from: below RoPE, views, and a norm with its weight (which
// ggml-cuda fuses with the RoPE that follows, so they stay with the chain)
static ggml_tensor * tq_chain_projection(ggml_tensor * t) {
    for (;;) {
        const ggml_op op = t->op;
        if (op == GGML_OP_ROPE || op == GGML_OP_RESHAPE || op == GGML_OP_VIEW || op == GGML_OP_PERMUTE ||
            op == GGML_OP_TRANSPOSE || op == GGML_OP_RMS_NORM || op == GGML_OP_NORM ||
            (op == GGML_OP_MUL && (t->src[0]->op == GGML_OP_RMS_NORM || t->src[0]->op == GGML_OP_NORM))) {
            t = t->src[0];
        } else {
            return t;
        }
    }
}

ggml_tensor * tq_kv_center::build(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * cur, int32_t il, bool is_k, bool init,
                                  ggml_tensor * rot, ggml_tensor ** mean_out, ggml_tensor ** q, int64_t n_seq_tokens,
                                  ggml_tensor * rope_cells, ggml_tensor * rope_tokens, tq_key_bias * kbias) const {
    // the projections of Q, K and V into the graph before any of their chains (K's call, which comes
    // first, places Q's and K's, V's call V's), so that the chains llama adds next (RoPE, centring,
    // rotation, the cache write) follow one another: ggml-cuda runs a layer's three in one launch
    // (native/cuda/tq-fused-write.cuh), where projections between them would keep them apart. Only
    // for short ubatches (decode), where launches are what the chains cost: the three projections
    // then live at once, which at a long ubatch would grow the compute buffer that it sizes.
    const ggml_tensor * tok = cur ? cur : q ? *q : nullptr;
    if (gf && tok && tok->ne[2] <= 64 && (ggml_type_is_tq(layer_type(il, true)) || ggml_type_is_tq(layer_type(il, false)))) {
        for (ggml_tensor * t : { is_k && q ? *q : nullptr, cur }) {
            if (t) {
                ggml_build_forward_expand(gf, tq_chain_projection(t));
            }
        }
    }
    const auto it = by_il.find(il);
    const layer * l = it == by_il.end() ? nullptr : &layers[it->second];
    ggml_tensor * ctr = l ? (is_k ? l->mean_k : l->mean_v) : nullptr;
    ggml_tensor * scl = l && is_k ? l->scale_k : nullptr;
    if (mean_out) {
        *mean_out = ctr;
    }
    if (!ctr) {
        return cur;
    }
    const int64_t n_embd_head = ctr->ne[0];
    const int64_t n_head_kv   = ctr->ne[1];
    GGML_ASSERT(!init || cur != nullptr);
    GGML_ASSERT(!cur || (cur->type == GGML_TYPE_F32 && cur->ne[0] == n_embd_head && cur->ne[1] == n_head_kv));

    ggml_tensor * mean  = ctr;
    ggml_tensor * scale = scl;
    ggml_tensor * q4    = nullptr; // q as [n_embd_head, n_gqa, n_head_kv, n_tokens]
    if (scl) {
        GGML_ASSERT(q && *q && (*q)->ne[0] == n_embd_head && (*q)->ne[1] % n_head_kv == 0);
        ggml_tensor * qc = ggml_is_contiguous(*q) ? *q : ggml_cont(ctx, *q);
        q4 = ggml_reshape_4d(ctx, qc, n_embd_head, (*q)->ne[1]/n_head_kv, n_head_kv, ggml_nelements(qc)/(n_embd_head*(*q)->ne[1]));
    }
    // keys centred before RoPE: k - R(p) mu0 goes on as the key, and the queries' term q.R(p) mu0
    // comes back in attention (tq_key_bias)
    ggml_tensor * mean0 = is_k && l->mean_k0 && rope_cells && rope_tokens ? l->mean_k0 : nullptr;
    GGML_ASSERT(!(is_k && l->mean_k0) || mean0 || !cur); // a graph without the tables would lose the offset
    // after the first ubatch the stored key is one node: the mean after RoPE and the scale join
    const bool fused = mean0 && !init;
    if (mean0) {
        const pair_ops po = { ctx, n_embd_head, rope_neox };
        if (init) {
            mean0 = tq_center_token_mean(ctx, po.unturn(cur, rope_tokens), n_seq_tokens);
            ggml_build_forward_expand(gf, ggml_cpy(ctx, mean0, l->mean_k0));
        }
        cur = po.sub_turned(cur, mean0, rope_tokens, fused ? ctr : nullptr, fused ? scl : nullptr);
        if (kbias) {
            GGML_ASSERT(q && *q && (*q)->ne[0] == n_embd_head && (*q)->ne[1] % n_head_kv == 0);
            ggml_tensor * qc = ggml_is_contiguous(*q) ? *q : ggml_cont(ctx, *q);
            kbias->qb = ggml_reshape_3d(ctx, po.query_term(qc, mean0), n_embd_head, (*q)->ne[1], ggml_nelements(qc)/(n_embd_head*(*q)->ne[1]));
            kbias->kb = rope_cells;
            kbias->mean0 = key_offset ? mean0 : nullptr;
            kbias->rot   = rot;
            kbias->neox  = rope_neox;
        }
    }
    if (init) {
        // written once, read by every later ubatch (whose graphs carry no write, so reads never
        // race a write)
        tq_center_stats_params p;
        p.n_seq_tokens = n_seq_tokens;
        p.positions    = positions;
        p.equalize     = scl != nullptr;
        if (is_k) {
            p.rope = l->rope;
        }
        const tq_center_stats st = tq_center_build_stats(ctx, cur, q4, p);
        mean = st.mean;
        if (scl) {
            scale = st.scale;
            ggml_build_forward_expand(gf, ggml_cpy(ctx, scale, scl));
        }
        // a QJL type's decoded vector is not a code word of its own quantizer (the residual signs of
        // the decoded vector differ): there the step would only move mu, which measured worse
        // (docs/method.md, The first token)
        const ggml_type type = is_k ? l->type_k : l->type_v;
        if (sink_code && type != GGML_TYPE_TQ3J && type != GGML_TYPE_TQ4J) {
            mean = tq_center_sink_mean(ctx, cur, mean, scale, rot, type);
        }
        ggml_build_forward_expand(gf, ggml_cpy(ctx, mean, ctr));
    }
    if (mean_out) {
        *mean_out = mean;
    }
    if (kbias && kbias->kb) {
        kbias->scale = scale; // this ubatch's factors (the first ubatch's own), by which its keys were scaled
    }
    ggml_tensor * res = !cur || fused ? cur : ggml_sub(ctx, cur, ggml_reshape_3d(ctx, mean, n_embd_head, n_head_kv, 1));
    if (scale) {
        if (res && !fused) {
            res = ggml_mul(ctx, res, ggml_reshape_3d(ctx, scale, n_embd_head, n_head_kv, 1));
        }
        q4 = ggml_div(ctx, q4, ggml_reshape_4d(ctx, scale, n_embd_head, 1, n_head_kv, 1));
        *q = ggml_reshape_3d(ctx, q4, n_embd_head, (*q)->ne[1], (*q)->ne[2]);
    }
    return res;
}

void tq_kv_center::build_input_rope(ggml_context * ctx, int64_t n_cells, int64_t n_tokens, ggml_tensor ** cells, ggml_tensor ** tokens) const {
    *cells = *tokens = nullptr;
    if (!rope_pre) {
        return;
    }
    *cells  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, rope_dim, n_cells);
    *tokens = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, rope_dim, n_tokens, 2);
    ggml_set_input(*cells);
    ggml_set_input(*tokens);
    ggml_set_name(*cells,  "attn_inp_tq_rope_cells");
    ggml_set_name(*tokens, "attn_inp_tq_rope_tokens");
}

void tq_kv_center::rope_row(int32_t pos, float * row) const {
    const int64_t h = rope_dim/2;
    for (int64_t j = 0; j < h; ++j) {
        const double a = (double) pos*rope_theta[j]; // in double: positions reach millions
        row[rope_neox ? j     : 2*j]     = (float) cos(a);
        row[rope_neox ? j + h : 2*j + 1] = (float) sin(a);
    }
}

void tq_kv_center::set_input_rope(ggml_tensor * cells, ggml_tensor * tokens, const int32_t * cell_pos, const int32_t * tok_pos) const {
    GGML_ASSERT(rope_pre && ggml_backend_buffer_is_host(cells->buffer) && ggml_backend_buffer_is_host(tokens->buffer));
    const int64_t n = rope_dim, n_cells = cells->ne[1], n_tokens = tokens->ne[1], h = n/2;
    // a row depends on its position only: a decode step recomputes the one cell that changed
    if ((int64_t) rope_cell_pos.size() != n_cells) {
        rope_cell_pos.assign(n_cells, INT32_MIN);
        rope_cell_rows.assign(n_cells*n, 0.0f);
    }
    for (int64_t i = 0; i < n_cells; ++i) {
        const int32_t p = std::max(cell_pos[i], 0); // an empty cell is masked: any row does
        if (rope_cell_pos[i] != p) {
            rope_row(p, rope_cell_rows.data() + i*n);
            rope_cell_pos[i] = p;
        }
    }
    memcpy(cells->data, rope_cell_rows.data(), ggml_nbytes(cells));
    float * cc = (float *) tokens->data;
    float * ss = cc + n*n_tokens;
    std::vector<float> row(n);
    for (int64_t t = 0; t < n_tokens; ++t) {
        rope_row(tok_pos[t], row.data());
        for (int64_t j = 0; j < h; ++j) {
            const float c = row[rope_neox ? j : 2*j], s = row[rope_neox ? j + h : 2*j + 1];
            const int64_t x = rope_neox ? j : 2*j, y = rope_neox ? j + h : 2*j + 1;
            cc[t*n + x] = cc[t*n + y] = c;
            ss[t*n + x] = ss[t*n + y] = s;
        }
    }
}

ggml_tensor * tq_kv_center::mean_v(int32_t il) const {
    const auto it = by_il.find(il);
    return it == by_il.end() ? nullptr : layers[it->second].mean_v;
}

// a centred cache holds s (k - mu): the K-shift turns k itself, s (R(stored/s + mu) - mu)
ggml_tensor * tq_kv_center::shift_unapply(ggml_context * ctx, ggml_tensor * tmp, int32_t il) const {
    const auto it = by_il.find(il);
    if (it == by_il.end()) {
        return tmp;
    }
    const layer & l = layers[it->second];
    if (l.scale_k) {
        tmp = ggml_div(ctx, tmp, ggml_reshape_3d(ctx, l.scale_k, l.scale_k->ne[0], l.scale_k->ne[1], 1));
    }
    if (l.mean_k) {
        tmp = ggml_add(ctx, tmp, ggml_reshape_3d(ctx, l.mean_k, l.mean_k->ne[0], l.mean_k->ne[1], 1));
    }
    return tmp;
}

ggml_tensor * tq_kv_center::shift_apply(ggml_context * ctx, ggml_tensor * tmp, int32_t il) const {
    const auto it = by_il.find(il);
    if (it == by_il.end()) {
        return tmp;
    }
    const layer & l = layers[it->second];
    if (l.mean_k) {
        tmp = ggml_sub(ctx, tmp, ggml_reshape_3d(ctx, l.mean_k, l.mean_k->ne[0], l.mean_k->ne[1], 1));
    }
    if (l.scale_k) {
        tmp = ggml_mul(ctx, tmp, ggml_reshape_3d(ctx, l.scale_k, l.scale_k->ne[0], l.scale_k->ne[1], 1));
    }
    return tmp;
}

// ---------------------------------------------------------------------------------------------
// state and the statistics as floats

uint32_t tq_kv_center::mode_bits() const {
    return (center_k ? 1u : 0u) | (center_v ? 2u : 0u) | (equalize_k ? 4u : 0u) | (rope_pre ? 8u : 0u);
}

// the centring section: which halves are centred, then per layer the K means, V means, K scales
// and the K means before RoPE (layer::stats)
void tq_kv_center::state_write(llama_io_write_i & io) const {
    const uint32_t mode = mode_bits();
    io.write(&mode, sizeof(mode));
    for (const auto & l : layers) {
        for (ggml_tensor * t : l.stats()) {
            if (t) {
                io.write_tensor(t, 0, ggml_nbytes(t));
            }
        }
    }
}

void tq_kv_center::state_read(llama_io_read_i & io, bool was_empty) {
    uint32_t mode;
    io.read(&mode, sizeof(mode));
    if (mode != mode_bits()) {
        throw std::runtime_error(format("KV mean-centring differs: the state has centred K %d V %d equalized K %d before RoPE %d, "
            "this cache %d %d %d %d (kv_center / LLAMA_KV_CENTER, LLAMA_KV_EQUALIZE, kv_options rope / LLAMA_KV_ROPE)",
            mode & 1, (mode >> 1) & 1, (mode >> 2) & 1, (mode >> 3) & 1, center_k, center_v, equalize_k, rope_pre));
    }
    bool changed = false;
    for (const auto & l : layers) {
        for (ggml_tensor * t : l.stats()) {
            if (!t) {
                continue;
            }
            const size_t n = ggml_nbytes(t);
            std::vector<uint8_t> src(n);
            io.read(src.data(), n);
            if (was_empty) {
                ggml_backend_tensor_set(t, src.data(), 0, n);
                changed = true;
            } else {
                // cells of another sequence already sit relative to our means: they must agree
                std::vector<uint8_t> cur(n);
                ggml_backend_tensor_get(t, cur.data(), 0, n);
                if (memcmp(cur.data(), src.data(), n) != 0) {
                    throw std::runtime_error("KV mean-centring: the sequence was saved with other centring statistics than "
                        "this non-empty cache holds; restore it into an empty cache");
                }
            }
        }
    }
    if (changed && fixed) {
        get(fixed_stats); // the state's statistics are the ones a clear must keep now
    }
}

size_t tq_kv_center::n_floats() const {
    size_t n = 0;
    for (const auto & l : layers) {
        for (ggml_tensor * t : l.stats()) {
            n += t ? (size_t) ggml_nelements(t) : 0;
        }
    }
    return n;
}

void tq_kv_center::get(std::vector<float> & out) const {
    out.resize(n_floats());
    size_t at = 0;
    for (const auto & l : layers) {
        for (ggml_tensor * t : l.stats()) {
            if (t) {
                ggml_backend_tensor_get(t, out.data() + at, 0, ggml_nbytes(t));
                at += ggml_nelements(t);
            }
        }
    }
}

void tq_kv_center::restore() {
    if (fixed) {
        set(std::vector<float>(fixed_stats));
    }
}

void tq_kv_center::set(const std::vector<float> & in) {
    GGML_ASSERT(in.size() == n_floats());
    fixed_stats = in;
    size_t at = 0;
    for (const auto & l : layers) {
        for (ggml_tensor * t : l.stats()) {
            if (t) {
                ggml_backend_tensor_set(t, in.data() + at, 0, ggml_nbytes(t));
                at += ggml_nelements(t);
            }
        }
    }
    fixed = true;
}

// ---------------------------------------------------------------------------------------------
// the statistics from host arrays (tests)

int32_t llama_tq_center_stats(const float * k, const float * q, int64_t n_embd_head, int64_t n_head_kv, int64_t n_gqa,
                              int64_t n_tokens, int64_t n_seq_tokens, float positions, int32_t rope_type, float freq_base,
                              float freq_scale, bool equalize, float * mean, float * scale) {
    if (!k || !mean || !scale || (equalize && !q) || n_embd_head < 2 || n_embd_head % 2 || n_head_kv < 1 || n_gqa < 1 ||
            n_tokens < 1 || n_seq_tokens < 0 || (n_seq_tokens > 0 && n_tokens % n_seq_tokens) || !(positions > 0) ||
            (rope_type != LLAMA_ROPE_TYPE_NONE && rope_type != LLAMA_ROPE_TYPE_NORM && rope_type != LLAMA_ROPE_TYPE_NEOX)) {
        return -1;
    }
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    if (!cpu) {
        return -1;
    }
    ggml_init_params ip = { ggml_tensor_overhead()*1024 + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * x  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n_embd_head, n_head_kv, n_tokens);
    ggml_tensor * q4 = equalize ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, n_embd_head, n_gqa, n_head_kv, n_tokens) : nullptr;
    tq_center_stats_params p;
    p.n_seq_tokens    = n_seq_tokens;
    p.positions       = positions;
    p.rope.type       = rope_type;
    p.rope.freq_base  = freq_base;
    p.rope.freq_scale = freq_scale;
    p.equalize        = equalize;
    const tq_center_stats st = tq_center_build_stats(ctx, x, q4, p);
    ggml_tensor * m = ggml_cont(ctx, st.mean);
    ggml_tensor * s = st.scale ? ggml_cont(ctx, st.scale) : nullptr;
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, m);
    if (s) {
        ggml_build_forward_expand(gf, s);
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, cpu);
    int32_t rc = buf ? 0 : -1;
    if (buf) {
        ggml_backend_tensor_set(x, k, 0, ggml_nbytes(x));
        if (q4) {
            ggml_backend_tensor_set(q4, q, 0, ggml_nbytes(q4));
        }
        rc = ggml_backend_graph_compute(cpu, gf) == GGML_STATUS_SUCCESS ? 0 : -1;
        if (rc == 0) {
            ggml_backend_tensor_get(m, mean, 0, ggml_nbytes(m));
            if (s) {
                ggml_backend_tensor_get(s, scale, 0, ggml_nbytes(s));
            } else {
                std::fill(scale, scale + n_embd_head*n_head_kv, 1.0f);
            }
        }
        ggml_backend_buffer_free(buf);
    }
    ggml_free(ctx);
    ggml_backend_free(cpu);
    return rc;
}
