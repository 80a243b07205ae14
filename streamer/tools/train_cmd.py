"""`rnnwatch train`: train a forecaster, or fine-tune one on a fleet's own readings, and write an artifact.

    rnnwatch train --synthetic --output DIR                       # from scratch, the seeded generator
    rnnwatch train --csv FILE... --output DIR [--init-model M]     # every numeric column one series
    rnnwatch train --from-topic sensor.readings --bootstrap HOST:PORT --output DIR
                   [--since TS] [--until TS] [--alerts-topic sensor.alerts | --labels FILE]

With `--init-model` (and always with `--from-topic`, starting from the shipped model unless one is
named) the model is fine-tuned (`model.fine_tune`): the last `--holdout` share of every series is kept
out and both models are measured on it; the artifact records its data, the model it started from and
both validation errors. `--from-topic` leaves out the readings inside alert episodes, read from
`--alerts-topic` (default `sensor.alerts`) or a `--labels` CSV (`streamer.tools.fleet_history`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from streamer.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a forecaster (synthetic, CSV) or fine-tune one on a fleet")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", nargs="+", type=Path, metavar="FILE",
                     help="CSV files; every numeric column but 'timestamp' is one training series")
    src.add_argument("--synthetic", action="store_true", help="the seeded synthetic generator")
    src.add_argument("--from-topic", metavar="TOPIC", help="a readings topic: fine-tune on its readings")
    p.add_argument("--output", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--init-model", type=Path, default=None,
                   help="fine-tune this artifact instead of training from scratch (--from-topic: the "
                        "shipped model by default)")
    fleet = p.add_argument_group("--from-topic")
    fleet.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    fleet.add_argument("--since", default=None, help="first event time to use (epoch seconds or RFC 3339)")
    fleet.add_argument("--until", default=None, help="event time to stop before (epoch seconds or RFC 3339)")
    labels = fleet.add_mutually_exclusive_group()
    labels.add_argument("--alerts-topic", default="sensor.alerts",
                        help="alert episodes whose readings are left out (default sensor.alerts)")
    labels.add_argument("--labels", type=Path, default=None,
                        help="CSV device_id,start,end of abnormal spans to leave out, instead of the alerts")
    p.add_argument("--holdout", type=float, default=0.2, help="share at the end of each series kept out, for "
                   "validation, when fine-tuning (default 0.2)")
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="passes over the data (training from scratch)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps when fine-tuning (default 300)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for path in args.csv or []:
        if not path.is_file():
            raise ConfigError(f"--csv {path}: no such file")
    if args.from_topic or args.init_model:
        return _fine_tune(args)
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.train import TrainConfig, train_to_artifact

    overrides: dict[str, Any] = {"cell": args.cell, "seed": args.seed}
    if args.hidden_size:
        overrides["hidden_size"] = args.hidden_size
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = dataclasses.replace(TrainConfig(), **overrides)
    version = train_to_artifact(config, args.output, args.csv)
    print(f"train: wrote {args.output} (version {version})", file=sys.stderr)
    return 0


def _fine_tune(args: argparse.Namespace) -> int:
    import dataclasses

    from model import artifact
    from model.fine_tune import FineTuneConfig, fine_tune
    from model.train import read_csv_series

    base = artifact.load(args.init_model)
    if args.from_topic:
        series, described = _fleet_series(args)
    else:
        series = read_csv_series(args.csv)
        described = {"source": "csv", "files": [str(p) for p in args.csv], "series": len(series),
                     "readings": int(sum(len(s) for s in series))}
    overrides: dict[str, Any] = {"holdout": args.holdout, "seed": args.seed}
    if args.steps:
        overrides["steps"] = args.steps
    config = FineTuneConfig(**overrides)
    try:
        result = fine_tune(base, series, config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    training = {**described, "fine_tuned_from": base.version, **dataclasses.asdict(config)}
    version = artifact.save(result.model, args.output, base.normaliser, training=training,
                            metrics=result.metrics)
    m = result.metrics
    verdict = "better" if m["val_huber"] < m["val_huber_base"] else "NOT better: keep the base model"
    print(f"train: wrote {args.output} (version {version}, from {base.version}); held-out Huber loss "
          f"{m['val_huber']:.4f} vs {m['val_huber_base']:.4f} for the base model ({verdict}; "
          f"previous-value forecast {m['val_huber_previous_value']:.4f})", file=sys.stderr)
    return 0


def _fleet_series(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from streamer.kafka.admin import wait_for_broker
    from streamer.kafka.client_config import KafkaClientSettings
    from streamer.tools.fleet_history import (
        History,
        episodes_from_alerts,
        episodes_from_labels,
        event_time,
        read_topic_values,
        readings_of,
    )

    kafka = KafkaClientSettings(bootstrap_servers=args.bootstrap, client_id="rnnwatch-train")
    wait_for_broker(kafka, hint="check --bootstrap")
    bounds = [-math.inf if args.since is None else event_time(args.since, "--since"),
              math.inf if args.until is None else event_time(args.until, "--until")]
    if args.labels is not None:
        episodes, left_out_by = episodes_from_labels(args.labels), f"labels {args.labels}"
    else:
        values = [r.value for r in read_topic_values(kafka, args.alerts_topic)]
        episodes, left_out_by = episodes_from_alerts(values), f"alerts topic {args.alerts_topic}"
    history = History.collect(readings_of(read_topic_values(kafka, args.from_topic)), episodes, *bounds)
    print(f"train: {history.readings} readings of {history.devices} devices from {args.from_topic}, "
          f"{history.excluded} inside alert episodes left out", file=sys.stderr)
    described = {"source": f"topic {args.from_topic}", "since": args.since, "until": args.until,
                 "devices": history.devices, "series": len(history.series), "readings": history.readings,
                 "excluded_readings": history.excluded, "episodes_from": left_out_by}
    return history.series, described

