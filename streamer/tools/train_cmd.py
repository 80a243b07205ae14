"""`rnnwatch train`: train a forecaster and write a model artifact (model.safetensors + config.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a forecaster from CSV files or synthetic data")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", nargs="+", type=Path, metavar="FILE",
                     help="CSV files; every numeric column but 'timestamp' is one training series")
    src.add_argument("--synthetic", action="store_true", help="the seeded synthetic generator")
    p.add_argument("--output", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from model.train import TrainConfig, train_to_artifact

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"cell": args.cell, "seed": args.seed}
    if args.hidden_size:
        overrides["hidden_size"] = args.hidden_size
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = dataclasses.replace(TrainConfig(), **overrides)
    for path in args.csv or []:
        if not path.is_file():
            raise ConfigError(f"--csv {path}: no such file")
    version = train_to_artifact(config, args.output, args.csv)
    print(f"train: wrote {args.output} (version {version})", file=sys.stderr)
    return 0
