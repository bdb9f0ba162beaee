"""One decode step (or any ncu capture) kernel by kernel, summed per kind of kernel, side by side, as a Markdown table,
from ncu CSV files (`ncu --metrics gpu__time_duration.sum --csv`, benchmarks/gpu_bench.sh's
"profile" step).

    python benchmarks/ncu_kernels.py ncu-f16.csv ncu-tq3.csv ncu-tq3-unfused.csv

A column is named after its file (ncu-tq3-unfused.csv -> tq3-unfused). ncu runs every kernel alone
(CUDA graphs off, caches flushed), so its times are larger than a real step's; what a cache type
adds is the difference between columns.
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

# (label, pattern on the demangled kernel name), first match wins
KINDS = [
    ("K/V to f16 for the tensor-core kernel", r"tq_cuda_convert|dequantize_block|convert_unary"),
    ("weights: mul_mat_vec_q, quantize_q8_1", r"mul_mat_vec|quantize_q8_1|mul_mat_q"),
    ("the fused tq write / query chain", r"tq_k_fused_write"),
    ("flash attention (+ combine)", r"flash_attn|tq_fa_decode|fattn"),
    ("SET_ROWS (the cache write)", r"set_rows"),
    ("fwht_cuda (Hadamard rotation)", r"fwht"),
    ("k_bin_bcast (element-wise: centring, scaling)", r"k_bin_bcast"),
    ("rms_norm, rope, get_rows, other", r"."),
]
UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def read(path: Path) -> dict[str, tuple[int, float]]:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith('"')]
    out: dict[str, list] = {label: [0, 0.0] for label, _ in KINDS}
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(row["Metric Value"].replace(",", "")) * UNIT_US[row["Metric Unit"]]
        label = next(label for label, pat in KINDS if re.search(pat, row["Kernel Name"]))
        out[label][0] += 1
        out[label][1] += us
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(args: list[str]) -> None:
    cols = [(Path(p).stem.removeprefix("ncu-"), read(Path(p))) for p in args]
    head = "| kernel | " + " | ".join(f"{n}: calls | {n}: µs" for n, _ in cols) + " |"
    print(head)
    print("|---" * (1 + 2 * len(cols)) + "|")
    for label, _ in KINDS:
        if all(c[label][0] == 0 for _, c in cols):
            continue
        print(f"| {label} | " + " | ".join(f"{c[label][0]} | {c[label][1]:.1f}" for _, c in cols) + " |")
    print("| **total** | " + " | ".join(f"{sum(v[0] for v in c.values())} | {sum(v[1] for v in c.values()):.1f}"
                                       for _, c in cols) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
