"""Decode over llama.cpp's RPC backend against the same model run here: tokens/s, and the bytes per
decoded token that cross the socket (both ways, counted by tq_llamacpp.rpc.CountingRelay), per
cache type and depth. Writes a markdown table.

    # a server on this machine (any host: `tq-llama rpc-server --host 0.0.0.0`), then:
    python benchmarks/rpc_bench.py --model M --rpc 127.0.0.1:50052 --types f16,tq3 --depths 0,8192

"local" runs the model here with every layer offloaded (n_gpu_layers=-1: a GPU when this build and
machine have one, else the CPU); "rpc" puts every layer and the cache on the server. On the GPU
machine benchmarks/gpu_bench.sh (step "rpc") runs a CUDA server and this script as a CPU-only
client (CUDA_VISIBLE_DEVICES=""), so "rpc" is the CUDA server seen through the socket.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def run(model: str, cache: str, depth: int, n: int, rpc: str | None, local_layers: int) -> dict:
    """Decode n tokens after `depth` tokens: tokens/s on a direct connection (or locally), then, for
    RPC, the bytes per token each way in a second run through a counting relay (which adds latency)."""
    import tq_llamacpp
    from tq_llamacpp.rpc import CountingRelay

    def decode(endpoint: str | None, steps: int, relay=None) -> dict:
        kw = {"rpc_servers": endpoint} if endpoint else {"n_gpu_layers": local_layers, "n_threads": os.cpu_count(),
                                                         "n_threads_batch": os.cpu_count()}
        t0 = time.perf_counter()
        llm = tq_llamacpp.Llama(model, type_k=cache, type_v=cache, n_ctx=depth + n + 64, n_batch=2048,
                                n_ubatch=512, verbose=False, **kw)
        load_s, t0 = time.perf_counter() - t0, time.perf_counter()
        if depth:
            llm.eval([100 + i % 1000 for i in range(depth)])
        llm.eval([11])  # the first decode step builds its graph, and waits for the prefill (RPC runs it async)
        prefill_s = time.perf_counter() - t0
        before, t0 = relay.total if relay else 0, time.perf_counter()
        for i in range(steps):
            llm.eval([200 + i])
        dt = time.perf_counter() - t0
        nbytes = (relay.total - before) / steps if relay else None
        llm.close()
        return {"tg_tps": steps / dt, "bytes_per_token": nbytes, "load_s": load_s, "prefill_s": prefill_s}

    row = {"type": cache, "depth": depth, "where": "rpc" if rpc else "local", **decode(rpc, n)}
    if rpc:
        relay = CountingRelay(rpc)
        row["bytes_per_token"] = decode(relay.endpoint, 8, relay)["bytes_per_token"]
        relay.close()
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--rpc", required=True, help="host:port of a ggml-rpc-server")
    p.add_argument("--types", default="f16,tq3")
    p.add_argument("--depths", default="0,8192")
    p.add_argument("--n", type=int, default=32, help="decoded tokens per measurement")
    p.add_argument("--local-layers", type=int, default=-1, help="n_gpu_layers of the local run (default: all)")
    p.add_argument("--no-local", action="store_true", help="only the RPC runs")
    p.add_argument("--no-rpc", action="store_true", help="only the local runs")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    rows = []
    for cache in args.types.split(","):
        for depth in (int(d) for d in args.depths.split(",")):
            for rpc in ([None] if not args.no_local else []) + ([args.rpc] if not args.no_rpc else []):
                rows.append(run(args.model, cache, depth, args.n, rpc, args.local_layers))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| cache | depth | where | decode tokens/s | bytes/token over the socket | load s | prefill + 1 token, s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        wire = f"{r['bytes_per_token']:,.0f}" if r["where"] == "rpc" else "-"
        print(f"| {r['type']} | {r['depth']} | {r['where']} | {r['tg_tps']:.1f} | {wire} | {r['load_s']:.1f} | "
              f"{r['prefill_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
