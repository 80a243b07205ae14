"""`rnnwatch` command line: one subcommand per module, each exposing `register(subparsers)`.

A command module adds a parser with `set_defaults(func=...)`; `func(args) -> int` is the exit status.
Heavy imports (torch, kafka) happen inside the command functions so `rnnwatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streamer.errors import RnnwatchError

# Modules that define subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "streamer.tools.replay",
    "streamer.tools.broker_cmd",
    "streamer.tools.simulate",
    "streamer.tools.serve_cmd",
    "streamer.tools.bench_cmd",
    "streamer.tools.train_cmd",
    "streamer.tools.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnwatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RnnwatchError as exc:
        print(f"rnnwatch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
