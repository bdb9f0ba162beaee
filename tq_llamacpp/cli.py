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


# name -> (help, add_arguments, run)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("version, CPU instruction sets and cache types", lambda p: None, _info),
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
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
