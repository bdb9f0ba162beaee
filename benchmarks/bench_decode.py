"""CPU decode speed of KV-cache types, interleaved: llama-bench -p 0 -n 64 at each depth, one type after
another, ROUNDS times, so that the VM's drift falls on every type alike. Prints and writes a table of
the median tokens/s per type and depth and its ratio to f16. A type may carry KV-cache options for
its row, `tq3t:rope=post` (each `:key=value` goes to llama-bench as LLAMA_KV_<KEY>=value).
    python benchmarks/bench_decode.py [--model GGUF] [--types f16,tq4,tq3] [--depths 0,4096] [--rounds 3]
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
    a = ap.parse_args()
    model = a.model or str(model_path("smollm2"))
    types, depths = a.types.split(","), [int(d) for d in a.depths.split(",")]
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(a.rounds):
        for t in types:
            name, *opts = t.split(":")
            env = tool_env(dict(os.environ, **option_env(",".join(opts))))
            cmd = [tool("llama-bench"), "-m", model, "-fa", "1", "-t", str(a.threads), "-p", "0", "-n", "64",
                   "-d", a.depths, "-ctk", name, "-ctv", name, "-r", "1", "-o", "json"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/", env=env).stdout
            for row in json.loads(out):
                runs.setdefault((t, int(row["n_depth"])), []).append(float(row["avg_ts"]))
    lines = [f"`python benchmarks/bench_decode.py --types {a.types} --depths {a.depths} --rounds {a.rounds}` "
             f"({Path(model).name}, -fa 1 -t {a.threads}, tg64; {datetime.date.today()}, "
             f"{machine()}): median tokens/s over the rounds (each round's value in brackets), "
             "and the ratio to f16", "",
             "| cache | " + " | ".join(f"tg64 @ {d}" for d in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for t in types:
        cells = []
        for d in depths:
            v = runs[(t, d)]
            m = statistics.median(v)
            ratio = m / statistics.median(runs[("f16", d)]) if ("f16", d) in runs else float("nan")
            cells.append(f"{m:.1f} ({ratio:.2f}x) [{', '.join(f'{x:.1f}' for x in v)}]")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / f"decode-{Path(model).stem}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
