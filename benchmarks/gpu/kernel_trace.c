// kernel_trace.c: a timeline of what a CUDA program runs, for a machine without Nsight Systems.
// A CUPTI injection library: the CUDA driver loads it into any program started with
//   CUDA_INJECTION64_PATH=/path/libkernel_trace.so TQ_TRACE_OUT=trace.csv program ...
// and it writes one line per kernel, memory copy and memset (GPU start and end, stream, the CUDA
// graph it ran in) and per runtime API call (host start and end, thread), all in CUPTI's one
// nanosecond timebase, so a step's kernels can be placed against the host calls that launched them
// (benchmarks/gpu_timeline.py reads it). ncu times kernels one at a time; this shows what a step
// waits on between them.
//   cc -O2 -shared -fPIC -I$CUDA/include benchmarks/gpu/kernel_trace.c -L$CUDA/lib64 -lcupti -o libkernel_trace.so
#include <cupti.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRACE_BUF (8u << 20)

static FILE * trace_out;

#define CUPTI_OK(call)                                                                       \
    do {                                                                                     \
        CUptiResult r_ = (call);                                                             \
        if (r_ != CUPTI_SUCCESS) {                                                           \
            const char * s_ = "?";                                                           \
            cuptiGetResultString(r_, &s_);                                                   \
            fprintf(stderr, "kernel_trace: %s failed: %s\n", #call, s_);                     \
            return 0;                                                                        \
        }                                                                                    \
    } while (0)

static void CUPTIAPI buffer_requested(uint8_t ** buffer, size_t * size, size_t * max_records) {
    *buffer = aligned_alloc(ACTIVITY_RECORD_ALIGNMENT, TRACE_BUF);
    *size = *buffer ? TRACE_BUF : 0;
    *max_records = 0;
}

static void write_record(const CUpti_Activity * rec) {
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const CUpti_ActivityKernel10 * k = (const CUpti_ActivityKernel10 *) rec;
        fprintf(trace_out, "K,%llu,%llu,%u,%u,%u,%u,%s\n", (unsigned long long) k->start, (unsigned long long) k->end,
                k->streamId, k->graphId, k->correlationId, k->gridX * k->gridY * k->gridZ, k->name ? k->name : "?");
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const CUpti_ActivityMemcpy6 * m = (const CUpti_ActivityMemcpy6 *) rec;
        fprintf(trace_out, "C,%llu,%llu,%u,%u,%u,%llu,memcpy kind %u\n", (unsigned long long) m->start,
                (unsigned long long) m->end, m->streamId, m->graphId, m->correlationId, (unsigned long long) m->bytes,
                (unsigned) m->copyKind);
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
        const CUpti_ActivityMemset4 * m = (const CUpti_ActivityMemset4 *) rec;
        fprintf(trace_out, "S,%llu,%llu,%u,%u,%u,%llu,memset\n", (unsigned long long) m->start,
                (unsigned long long) m->end, m->streamId, m->graphId, m->correlationId, (unsigned long long) m->bytes);
        break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
        const CUpti_ActivityAPI * a = (const CUpti_ActivityAPI *) rec;
        const char * name = "?";
        cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
        fprintf(trace_out, "R,%llu,%llu,%u,0,%u,0,%s\n", (unsigned long long) a->start, (unsigned long long) a->end,
                a->threadId, a->correlationId, name);
        break;
    }
    default:
        break;
    }
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t * buffer, size_t size, size_t valid) {
    (void) ctx; (void) stream; (void) size;
    CUpti_Activity * rec = NULL;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        write_record(rec);
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS && dropped) {
        fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
    }
    free(buffer);
}

static void trace_flush(void) {
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    if (trace_out) {
        fflush(trace_out);
    }
}

// called by the CUDA driver at cuInit (CUDA_INJECTION64_PATH)
int InitializeInjection(void) {
    const char * path = getenv("TQ_TRACE_OUT");
    trace_out = fopen(path ? path : "kernel_trace.csv", "w");
    if (!trace_out) {
        perror("kernel_trace: TQ_TRACE_OUT");
        return 0;
    }
    fprintf(trace_out, "what,start_ns,end_ns,stream_or_thread,graph,correlation,size,name\n");
    CUPTI_OK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
    atexit(trace_flush);
    return 1;
}
