// tq-llamacpp: the centring statistics of a model, measured once per model, cache types and cache
// size on a fixed text (tq-calib-text.h) and kept in a small file, then set into every cache of a
// context, so that the quality of a tq cache does not depend on how a program's first tokens
// arrive (one token at a time, a short chat turn, several sequences). docs/method.md, Statistics.
#pragma once

#include "llama.h"
#include "tq-kv-center.h"

// called by llama_init_from_model once the context exists: when its caches are centred with
// calibrated statistics (the default), set them from the file or a calibration run; if the run
// fails the caches fall back to first-ubatch statistics, with a warning. false (logged): the
// options name a calibration text that cannot be read, and the context is refused.
bool tq_kv_calibrate(llama_context * ctx, llama_model * model, const llama_context_params & params);
