"""CPU decode speed of KV-cache types, interleaved: llama-bench -p 0 -n 64 at each depth, one type after
another, ROUNDS times, so that the VM's drift falls on every type alike. Prints and writes a table of
the median tokens/s per type and depth and its ratio to f16. A type may carry KV-cache options for
its row, `tq3t:rope=post` (each `:key=value` goes to llama-bench as LLAMA_KV_<KEY>=value).
--builds old=DIR,new=DIR runs every type on each build in turn (DIR: a copy of an installed
package's tq_llamacpp/bin and tq_llamacpp/lib side by side; llama-bench finds its libraries in
../lib), so that two builds are compared in one interleaved run; each row's ratio is to f16 of its
own build.
    python benchmarks/bench_decode.py [--model GGUF] [--types f16,tq4,tq3] [--depths 0,4096] [--rounds 3]
        [--builds NAME=DIR,...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import machine  # noqa: E402

from tq_llamacpp._libs import tool  # noqa: E402
from tq_llamacpp.compare import option_env, tool_env  # noqa: E402
from tq_llamacpp.data import model_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--types", default="f16,tq4,tq3")
    ap.add_argument("--depths", default="0,4096")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--builds", default=None, help="NAME=DIR,...: compare builds (see above)")
    a = ap.parse_args()
    model = a.model or str(model_path("smollm2"))
    types, depths = a.types.split(","), [int(d) for d in a.depths.split(",")]
    builds = [tuple(b.split("=", 1)) for b in a.builds.split(",")] if a.builds else [("", "")]
    for build, d in builds:
        if build and not (Path(d) / "bin" / "llama-bench").exists():
            sys.exit(f"--builds {build}={d}: no bin/llama-bench there")
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(a.rounds):
        for t in types:
            name, *opts = t.split(":")
            env = tool_env(dict(os.environ, **option_env(",".join(opts))))
            for build, d in builds:
                bench = Path(d) / "bin" / "llama-bench" if build else tool("llama-bench")
                cmd = [bench, "-m", model, "-fa", "1", "-t", str(a.threads), "-p", "0", "-n", "64",
                       "-d", a.depths, "-ctk", name, "-ctv", name, "-r", "1", "-o", "json"]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/", env=env).stdout
                row_name = f"{t} ({build})" if build else t
                for row in json.loads(out):
                    runs.setdefault((row_name, int(row["n_depth"])), []).append(float(row["avg_ts"]))
    builds_arg = f" --builds {a.builds}" if a.builds else ""
    lines = [f"`python benchmarks/bench_decode.py --types {a.types} --depths {a.depths} --rounds {a.rounds}{builds_arg}` "
             f"({Path(model).name}, -fa 1 -t {a.threads}, tg64; {datetime.date.today()}, "
             f"{machine()}): median tokens/s over the rounds (each round's value in brackets), "
             "and the ratio to f16", "",
             "| cache | " + " | ".join(f"tg64 @ {d}" for d in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for t in types:
        for build, _ in builds:
            row_name, f16 = (f"{t} ({build})", f"f16 ({build})") if build else (t, "f16")
            cells = []
            for d in depths:
                v = runs[(row_name, d)]
                m = statistics.median(v)
                ratio = m / statistics.median(runs[(f16, d)]) if (f16, d) in runs else float("nan")
                cells.append(f"{m:.1f} ({ratio:.2f}x) [{', '.join(f'{x:.1f}' for x in v)}]")
            lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = "".join(f"-{build}" for build, _ in builds if build)
    out = Path(__file__).parent / "results" / f"decode-{Path(model).stem}{suffix}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
