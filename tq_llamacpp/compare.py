"""Cache types side by side: llama-perplexity with KL-divergence against an f16 cache.

One f16 run saves the reference log-probabilities (cached per model, text, ctx and chunks); each
cache type then runs with --kl-divergence against it. Shared by `tq-llama compare` and benchmarks/.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ._libs import tool
from ._progress import Progress
from .cache_types import pair_name
from .data import cache_dir, calib_dir
from .llama import _positive, check_cache_types, kv_bytes, kv_options_string, parse_spec


@dataclass
class Result:
    type: str
    bits_per_value: float  # mean of K and V, every scale counted
    kv_mib: float  # at the compared context length
    ppl: float
    kld_mean: Optional[float]
    kld_999: Optional[float]
    same_top_p: Optional[float]  # percent of tokens whose top-1 matches the f16 cache's
    tokens_per_s: Optional[float]  # prompt processing: llama-perplexity's first pass


_FLOAT = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PATTERNS = {
    "ppl_q": re.compile(r"Mean PPL\(Q\)\s*:\s*" + _FLOAT),
    "ppl_final": re.compile(r"Final estimate: PPL = " + _FLOAT),
    "kld_mean": re.compile(r"Mean\s+KLD:\s*" + _FLOAT),
    "kld_999": re.compile(r"99\.9%\s+KLD:\s*" + _FLOAT),
    "same_top_p": re.compile(r"Same top p:\s*" + _FLOAT),
    "sec_per_pass": re.compile(r": " + _FLOAT + r" seconds per pass"),
}
# "calculating perplexity over 20 chunks, n_ctx=512, batch_size=2048, n_seq=4" (KLD runs: "computing over")
_PASS = re.compile(r"over (\d+) chunks, n_ctx=(\d+), batch_size=\d+, n_seq=(\d+)")


def parse_output(text: str) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {}
    for key, pat in _PATTERNS.items():
        m = pat.findall(text)
        out[key] = float(m[-1]) if m else None
    # llama-perplexity times its first pass: n_seq chunks of n_ctx tokens evaluated together
    p = _PASS.search(text)
    out["tps"] = None
    if p and out["sec_per_pass"]:
        chunks, n_ctx, n_seq = (int(g) for g in p.groups())
        out["tps"] = min(chunks, n_seq) * n_ctx / out["sec_per_pass"]
    return out


def tool_env(env: Optional[dict] = None) -> dict:
    """The environment for a llama.cpp tool run by the package: its KV centring calibration kept
    where Llama keeps it (TQ_CACHE_DIR/kv-calib) unless LLAMA_KV_CALIB_DIR says otherwise, so that a
    model is calibrated once for both and a fresh TQ_CACHE_DIR (CI) starts without calibrations."""
    env = dict(os.environ if env is None else env)
    env.setdefault("LLAMA_KV_CALIB_DIR", str(calib_dir()))
    return env


# per-layer types, which an f16 reference cache does not take from the environment
_LAYER_ENV = ("LLAMA_KV_LAYERS", "LLAMA_KV_BITS")


def option_env(kv_options: Union[None, str, dict] = None) -> dict[str, str]:
    """KV-cache options (Llama's kv_options: "key=value,..." or a dict) as the environment variables
    a llama.cpp tool reads, LLAMA_KV_<KEY>; checked first, as a context checks them."""
    env = {}
    for item in kv_options_string(None, kv_options).split(","):
        if item.strip():
            key, _, value = item.partition("=")
            env["LLAMA_KV_" + key.strip().upper()] = value.strip()
    return env


def _run(cmd: Sequence[str], label: str, chunks: int, progress: bool, env: Optional[dict] = None) -> str:
    """Run llama-perplexity, showing its chunks on a progress bar; return its whole output."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace", env=tool_env(env))
    lines = []
    assert proc.stdout is not None
    with Progress(label, total=chunks, unit="chunk", enabled=progress) as bar:
        for line in proc.stdout:
            lines.append(line)
            # PPL runs print "[1]12.3,[2]..." and KLD runs one line per chunk starting with its number
            done = max([int(n) for n in re.findall(r"\[(\d+)\]", line)] or [0])
            m = re.match(r"^\s{0,3}(\d+)\s{4}", line)
            if m:
                done = max(done, int(m.group(1)))
            bar.update_to(done)
    rc = proc.wait()
    text = "".join(lines)
    if rc != 0:
        tail = "".join(lines[-15:])
        raise RuntimeError(f"llama-perplexity failed for {label} (exit {rc}):\n{tail}")
    return text


def _base_file(model: Path, text: Path, ctx: int, chunks: int, exe: Path) -> Path:
    """The f16 reference is reused while the model, text, settings and llama.cpp build are the same."""
    h = hashlib.sha256()
    for p in (model, text, exe):
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(f"{ctx}:{chunks}".encode())
    d = cache_dir() / "kld"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{model.stem}-{h.hexdigest()[:16]}.kld"


def compare(model: Path, text: Path, types: Sequence[str], ctx: int = 512, chunks: int = 20,
            threads: Optional[int] = None, progress: bool = False,
            extra_args: Sequence[str] = (), kv_options: Union[None, str, dict] = None) -> list[Result]:
    """KLD, PPL and speed of each cache type (or K/V pair) against the f16 cache. kv_options (as
    Llama's) apply to every compared type, on top of the LLAMA_KV_* environment; the f16 reference
    takes no per-layer types (LLAMA_KV_LAYERS, LLAMA_KV_BITS) from either."""
    model, text = Path(model), Path(text)
    # llama-perplexity reads --chunks -1 (and 0) as the whole text, which would run for hours
    chunks = _positive(chunks, "chunks")
    if threads is not None:
        threads = _positive(threads, "threads")
    if not text.is_file():
        raise FileNotFoundError(f"text file not found: {text}")
    options = kv_options_string(None, kv_options)
    opt_env = option_env(options)
    pairs = [parse_spec(t) for t in types]
    # every type's cache sized before any run: options a type cannot take (per-layer types on a cache
    # that is not tq) fail here, naming the type
    f16_size = kv_bytes(model, "f16", "f16", n_ctx=ctx, kv_options={"layers": "", "bits": 0})
    sizes = []
    for k, v, _ in pairs:
        check_cache_types(model, k, v)
        try:
            sizes.append(kv_bytes(model, k, v, n_ctx=ctx, kv_options=options or None))
        except ValueError as e:
            raise type(e)(f"cache {pair_name(k, v)}: {e}") from None
    threads = threads or os.cpu_count() or 1
    exe = str(tool("llama-perplexity"))
    common = [exe, "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads),
              "-fa", "on", *extra_args]
    base = _base_file(model, text, ctx, chunks, Path(exe))
    results = []
    base_ppl = None
    if not base.exists():
        tmp = base.with_suffix(".tmp")
        ref_env = {key: val for key, val in os.environ.items() if key not in _LAYER_ENV}
        out = _run(common + ["-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", str(tmp)], "f16 reference",
                   chunks, progress, ref_env)
        tmp.replace(base)
        base_ppl = parse_output(out)["ppl_final"]
    for (k, v, center), size in zip(pairs, sizes):
        label = pair_name(k, v) + (f"@{center}" if center else "") + (f" [{options}]" if options else "")
        env = dict(os.environ, **opt_env)
        if center is not None:
            env["LLAMA_KV_CENTER"] = center
        out = _run(common + ["-ctk", k.name, "-ctv", v.name, "--kl-divergence-base", str(base), "--kl-divergence"],
                   label, chunks, progress, env)
        r = parse_output(out)
        ppl = r["ppl_q"] if r["ppl_q"] is not None else base_ppl
        if ppl is None:
            raise RuntimeError(f"could not read the perplexity of {label} from llama-perplexity's output")
        results.append(Result(
            type=label,
            bits_per_value=16.0 * size / f16_size,  # with per-layer types, the average over the cache
            kv_mib=size / 2**20,
            ppl=ppl,
            kld_mean=r["kld_mean"],
            kld_999=r["kld_999"],
            same_top_p=r["same_top_p"],
            tokens_per_s=r["tps"],
        ))
    return results


def _fmt(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(results: Sequence[Result], title: str = "") -> str:
    rows = [f"{title}\n" if title else "",
            "| cache K/V | bits/value | KV MiB | PPL | mean KLD | 99.9% KLD | same top-1 % | tokens/s |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.type} | {r.bits_per_value:.2f} | {r.kv_mib:.1f} | {r.ppl:.4f} | {_fmt(r.kld_mean, '.5f')} "
                    f"| {_fmt(r.kld_999, '.4f')} | {_fmt(r.same_top_p, '.2f')} | {_fmt(r.tokens_per_s, '.1f')} |")
    return "\n".join(x for x in rows if x) + "\n"


def write_outputs(results: Sequence[Result], out_dir: Path, meta: dict, stem: str = "compare") -> list[Path]:
    """<stem>.md, <stem>.json and <stem>.png (mean KLD against bits/value, log scale)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results, meta.get("title", "")) + "\n" + meta.get("how", "") + "\n")
    js = out_dir / f"{stem}.json"
    js.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    paths = [md, js]
    png = out_dir / f"{stem}.png"
    try:
        import matplotlib  # noqa: PLC0415  (slow import: only when a plot is written)
    except ImportError:
        print(f"no plot ({png.name}): matplotlib is not installed (pip install 'tq-llamacpp[plot]')",
              file=sys.stderr)
        return paths

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        if r.kld_mean is None or r.kld_mean <= 0:
            continue
        tq = r.type.startswith("tq")
        ax.scatter(r.bits_per_value, r.kld_mean, color="tab:red" if tq else "tab:blue", zorder=3)
        ax.annotate(r.type, (r.bits_per_value, r.kld_mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("bits per value (K/V mean, scales included)")
    ax.set_ylabel("mean KLD vs f16 cache (lower is better)")
    ax.set_title(meta.get("title", "KV cache quality"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    paths.append(png)
    return paths


def now_stamp() -> str:
    return time.strftime("%Y-%m-%d")
