/* Prelude of the cffi module tq_llamacpp._native (cdef: _native.cdef.txt). */
#include "turboquant.h"
#include "tq-ggml.h"
