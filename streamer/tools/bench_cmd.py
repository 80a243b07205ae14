"""`rnnwatch bench {scoring,e2e,restore,checkpoint,message}`: benchmarks, one JSON object each with --json.

- `scoring`: the scoring pipeline alone against its bare recurrent cell (`streamer.tools.bench_scoring`).
- `e2e`: the daemon on a real broker against the bare client's consume+decode rate, plus reading→alert
  latency (`streamer.tools.bench_e2e`).
- `restore`: N device states written to a state changelog and restored, bytes per device
  (`streamer.tools.bench_restore`).
- `checkpoint`: the scoring loop over N active devices with checkpoints off, then on (background
  writes), all devices dirty at each; readings/s of both, the longest pause
  (`streamer.tools.bench_checkpoint`).
- `message`: the worst message the limits allow, decoded and scored in the daemon's chunks
  (`streamer.tools.bench_message`).

Each benchmark module defines `add_arguments(parser)` and `run(args)`; they are imported only when
their benchmark runs (they import torch), so their options are parsed then: `rnnwatch bench scoring
--help` still lists them.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

BENCHMARKS = {
    "scoring": ("streamer.tools.bench_scoring", "scoring pipeline vs bare recurrent cell, no Kafka"),
    "e2e": ("streamer.tools.bench_e2e", "daemon on a real broker vs raw consume+decode; alert latency"),
    "restore": ("streamer.tools.bench_restore", "write N device states to a changelog and restore them"),
    "checkpoint": ("streamer.tools.bench_checkpoint",
                   "scoring N devices with background checkpoints vs without; longest pause"),
    "message": ("streamer.tools.bench_message", "the worst message the limits allow, scored in chunks"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (JSON with --json)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        # "+" as prefix: every "--option" stays in `options`, for the module's own parser to read.
        sub = which.add_parser(name, help=help_text, prefix_chars="+", add_help=False)
        sub.add_argument("options", nargs="*", help=argparse.SUPPRESS)
        sub.set_defaults(func=_runner(name, module))


def _runner(name: str, module_name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"rnnwatch bench {name}", description=module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(args.options)))

    return run


def on_broker(bootstrap: str | None, measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Run `measure(bootstrap)` against the given broker, or an embedded one started for the run."""
    if bootstrap:
        return measure(bootstrap)
    from streamer.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        return measure(broker.bootstrap_servers)


def report(result: Mapping[str, Any], as_json: bool) -> int:
    """Print a benchmark's result: one JSON object with --json, else one aligned line per field."""
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        width = max((len(key) for key in result), default=0)
        for key, value in result.items():
            print(f"{key:>{width}}: {value}")
    return 0
