"""Decode steps kernel by kernel, summed per kind of kernel, side by side, as a Markdown table, from
ncu CSV files (`ncu --metrics gpu__time_duration.sum --csv`, one step) or nsys kernel summaries
(`nsys stats --report cuda_gpu_kern_sum --format csv`, divided by --steps).

    python benchmarks/ncu_kernels.py ncu-f16.csv ncu-tq3.csv ncu-tq3-unfused.csv
    python benchmarks/ncu_kernels.py --steps 17 nsys-f16_cuda_gpu_kern_sum.csv nsys-tq3_cuda_gpu_kern_sum.csv

A column is named after its file (ncu-tq3-unfused.csv -> tq3-unfused). ncu runs every kernel alone
(CUDA graphs off, caches flushed), so its times are larger than a real step's; nsys times are those
of the real run (CUDA graphs on). What a cache type adds is the difference between columns.
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

# (label, pattern on the demangled kernel name), first match wins
KINDS = [
    ("weights: mul_mat_vec_q, quantize_q8_1", r"mul_mat_vec|quantize_q8_1|mul_mat_q"),
    ("the fused tq write / query chain", r"tq_k_fused_write"),
    ("flash attention (+ combine)", r"flash_attn|tq_fa_decode|fattn"),
    ("SET_ROWS (the cache write)", r"set_rows"),
    ("fwht_cuda (Hadamard rotation)", r"fwht"),
    ("k_bin_bcast (element-wise: centring, scaling)", r"k_bin_bcast"),
    ("rms_norm, rope, get_rows, other", r"."),
]
UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def read(path: Path, steps: int) -> dict[str, tuple[float, float]]:
    text = path.read_text(errors="replace").splitlines()
    nsys = any("Total Time (ns)" in ln for ln in text)
    lines = [ln for ln in text if ln.startswith('"') or (nsys and ln and not ln.startswith(("=", " ", "Processing", "Generating")))]
    out: dict[str, list] = {label: [0.0, 0.0] for label, _ in KINDS}
    for row in csv.DictReader(lines):
        if nsys:
            name, calls, us = row["Name"], int(row["Instances"]) / steps, float(row["Total Time (ns)"]) * 1e-3 / steps
        elif row.get("Metric Name") == "gpu__time_duration.sum":
            name, calls = row["Kernel Name"], 1
            us = float(row["Metric Value"].replace(",", "")) * UNIT_US[row["Metric Unit"]]
        else:
            continue
        label = next(label for label, pat in KINDS if re.search(pat, name))
        out[label][0] += calls
        out[label][1] += us
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(args: list[str]) -> None:
    steps = 1
    if args[:1] == ["--steps"]:
        steps, args = int(args[1]), args[2:]
    cols = [(Path(p).stem.removeprefix("ncu-").removesuffix("_cuda_gpu_kern_sum"), read(Path(p), steps)) for p in args]
    head = "| kernel | " + " | ".join(f"{n}: calls | {n}: µs" for n, _ in cols) + " |"
    print(head)
    print("|---" * (1 + 2 * len(cols)) + "|")
    for label, _ in KINDS:
        if all(c[label][0] == 0 for _, c in cols):
            continue
        print(f"| {label} | " + " | ".join(f"{c[label][0]:g} | {c[label][1]:.1f}" for _, c in cols) + " |")
    print("| **total** | " + " | ".join(f"{sum(v[0] for v in c.values()):g} | {sum(v[1] for v in c.values()):.1f}"
                                       for _, c in cols) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
