"""What a decode step waits on: a CUDA timeline (benchmarks/gpu/kernel_trace.c) taken apart step by step.

Each cudaGraphLaunch is one step (llama.cpp replays one CUDA graph per token when the whole model is
on the GPU); the kernels that carry its correlation id are the step's graph. Per step: the host's
period from one launch to the next, the span of the graph on the GPU from its first kernel's start
to its last kernel's end, the kernels' own time (summed, and as the union of their intervals), the
GPU's idle time inside the span (between dependent kernels: launch latency), and the GPU's idle
time outside it (waiting for the host: building the next step, its inputs, reading the logits).
Medians over the steady steps. Then the kernels by name, µs per step, side by side.

    python benchmarks/gpu_timeline.py f16=trace-f16.csv tq3=trace-tq3.csv [--skip 4] [--last 56] [--top 20]
"""

from __future__ import annotations

import argparse
import bisect
import csv
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict


def load(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append((r["what"], int(r["start_ns"]), int(r["end_ns"]), int(r["graph"]),
                             int(r["correlation"]), r["name"]))
            except (KeyError, ValueError):
                continue
    return rows


def union(intervals):
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def demangle(names):
    """CUPTI gives kernels' mangled names: c++filt, where the machine has it, makes them readable."""
    names = sorted(set(names))
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short(name, n=70):
    base = name.split("(")[0].split("<")[0].split(" ")[-1]  # no return type, template or arguments
    return base if len(base) <= n else base[: n - 3] + "..."


def steps(rows, skip, last):
    launches = sorted((s, c, e) for w, s, e, g, c, n in rows if w == "R" and n.startswith("cudaGraphLaunch"))
    gpu = sorted((s, e, w, c, n) for w, s, e, g, c, n in rows if w in "KCS")
    by_corr = defaultdict(list)
    for s, e, w, c, n in gpu:
        by_corr[c].append((s, e, n))
    # a step's window holds the records that start before its end and end after its start: found from
    # the sorted starts, no record being longer than the longest
    starts = [r[0] for r in gpu]
    longest = max((e - s for s, e, *_ in gpu), default=0)
    out = []
    for (t0, c0, l0), (t1, _, _) in zip(launches, launches[1:]):
        ks = by_corr.get(c0, [])
        if not ks:
            continue
        span0 = min(s for s, _, _ in ks)
        span1 = max(e for _, e, _ in ks)
        inside = [(s, e) for s, e, _ in ks]
        lo, hi = bisect.bisect_left(starts, t0 - longest), bisect.bisect_left(starts, t1)
        window = [(max(s, t0), min(e, t1)) for s, e, _, _, _ in gpu[lo:hi] if e > t0]
        out.append({
            "period": t1 - t0,
            "launch_to_first": span0 - t0,
            "launch_call": l0 - t0,
            "span": span1 - span0,
            "kernels": len(ks),
            "kernel_sum": sum(e - s for s, e in inside),
            "kernel_union": union(inside),
            "gpu_busy": union(window),
            "names": ks,
        })
    out = out[skip:]
    return out[-last:] if last else out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", help="LABEL=trace.csv")
    ap.add_argument("--skip", type=int, default=4, help="steps to leave out at the start (warm-up, graph capture)")
    ap.add_argument("--last", type=int, default=0,
                    help="only the last N steps (llama-bench -n N: its decode steps, after a prefill to the depth)")
    ap.add_argument("--top", type=int, default=20, help="kernels by name to list")
    args = ap.parse_args(argv)

    runs = {}
    for t in args.traces:
        label, _, path = t.partition("=")
        if not path:
            sys.exit(f"gpu_timeline.py: '{t}' is not LABEL=trace.csv")
        st = steps(load(path), args.skip, args.last)
        if not st:
            sys.exit(f"gpu_timeline.py: no graph launches with kernels in {path}")
        runs[label] = st

    us = lambda ns: ns / 1000.0  # noqa: E731
    med = lambda st, k: statistics.median(s[k] for s in st)  # noqa: E731
    labels = list(runs)
    print("| per step (median, µs) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    rows = [
        ("steps measured", lambda st: f"{len(st)}"),
        ("period, launch to launch", lambda st: f"{us(med(st, 'period')):.1f}"),
        ("graph span on the GPU", lambda st: f"{us(med(st, 'span')):.1f}"),
        ("kernels", lambda st: f"{med(st, 'kernels'):.0f}"),
        ("kernels' own time, summed", lambda st: f"{us(med(st, 'kernel_sum')):.1f}"),
        ("GPU idle inside the span", lambda st: f"{us(med([dict(x, idle=x['span'] - x['kernel_union']) for x in st], 'idle')):.1f}"),
        ("GPU idle in the period (host-bound)", lambda st: f"{us(med([dict(x, idle=x['period'] - x['gpu_busy']) for x in st], 'idle')):.1f}"),
        ("the host's cudaGraphLaunch call", lambda st: f"{us(med(st, 'launch_call')):.1f}"),
        ("launch call to first kernel", lambda st: f"{us(med(st, 'launch_to_first')):.1f}"),
    ]
    for name, fn in rows:
        print(f"| {name} | " + " | ".join(fn(runs[l]) for l in labels) + " |")

    plain = demangle(n for st in runs.values() for s in st for _, _, n in s["names"])
    per = {}
    for label, st in runs.items():
        acc = defaultdict(lambda: [0, 0])
        for s in st:
            for a, b, n in s["names"]:
                acc[short(plain[n])][0] += 1
                acc[short(plain[n])][1] += b - a
        per[label] = {k: (c / len(st), t / len(st)) for k, (c, t) in acc.items()}
    names = sorted({k for p in per.values() for k in p}, key=lambda k: -max(p.get(k, (0, 0))[1] for p in per.values()))
    print()
    print("| kernel | " + " | ".join(f"{l}: count, µs" for l in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for k in names[: args.top]:
        cells = []
        for l in labels:
            c, t = per[l].get(k, (0, 0))
            cells.append(f"{c:.0f}, {us(t):.1f}" if c else "")
        print(f"| `{k}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
