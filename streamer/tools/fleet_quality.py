"""How well a fleet's alerts match its injected faults, and `rnnwatch evaluate fleet`.

`alert_quality(fleet, alerts)` is what the daemon's fleet test and `evaluate fleet` report:

- *recall*: a fault is detected when its device fires between the fault's start and `grace_steps`
  readings after its end; *episodes per fault*: the firings in that window;
- *covered*: the share of each fault's duration with its device's alert open (a fault lasts from its
  first affected reading to one period after its last, so a one-reading spike is covered when its own
  reading alerts), averaged over the faults and per fault kind;
- *false alerts per fault-free device-day*: firings on devices without a fault, per device and day of
  the whole stream (history included);
- *recovered during a fault*: `resolved` events with reason `recovered` while one of the device's faults
  is still going on (the alert says "back to normal" while it is not), per fault.

`rnnwatch evaluate fleet --seeds 11,0,1 [--history-steps 1440]` replays simulated fleets (`simulate`)
through the daemon's pipeline, without Kafka (the daemon's fleet test checks that the daemon alerts
exactly like this replay), and prints these figures per seed and their mean. With `--history-steps
1440` every device has run a clean day before its faults, as in a fleet that has been in service: an
episode on a device past its first day holds the normal it had before (`PipelineConfig.mature_s`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.scoring.kernel import PATHS
from streamer.tools.simulate import FAULT_KINDS, FaultRecord, Fleet, generate_fleet

Alert = Mapping[str, Any]  # an alert record as published: at least device_id, state, ts


def open_spans(alerts: Sequence[Alert], device_id: str, end: float) -> list[tuple[float, float]]:
    """[start, end) event-time spans in which the device's alert was open (one still open runs to `end`).

    >>> open_spans([{"device_id": "d", "state": "firing", "ts": 5.0},
    ...             {"device_id": "d", "state": "resolved", "ts": 9.0},
    ...             {"device_id": "d", "state": "firing", "ts": 20.0}], "d", 30.0)
    [(5.0, 9.0), (20.0, 30.0)]
    """
    spans, opened = [], None
    for alert in sorted((a for a in alerts if a["device_id"] == device_id), key=lambda a: a["ts"]):
        if alert["state"] == "firing":
            opened = alert["ts"]
        elif opened is not None:
            spans.append((opened, alert["ts"]))
            opened = None
    return [*spans, (opened, end)] if opened is not None else spans


def covered(fault: FaultRecord, spans: Sequence[tuple[float, float]], period: float) -> float:
    """Share of the fault's duration inside the open spans (the fault ends one period after `end_ts`).

    >>> f = FaultRecord("d", "level_shift", ("c0",), 100.0, 190.0)  # 10 readings at a period of 10
    >>> covered(f, [(90.0, 150.0)], 10.0), covered(f, [(190.0, 250.0)], 10.0)
    (0.5, 0.1)
    """
    end = fault.end_ts + period
    return sum(max(0.0, min(b, end) - max(a, fault.start_ts)) for a, b in spans) / (end - fault.start_ts)


def alert_quality(fleet: Fleet, alerts: Sequence[Alert], grace_steps: int = 10) -> dict[str, Any]:
    """Recall, episodes per fault, coverage (mean and per kind) and false alerts of `alerts` on `fleet`."""
    period = float(fleet.ts[1] - fleet.ts[0])
    firing: dict[str, list[float]] = {}
    for alert in alerts:
        if alert["state"] == "firing":
            firing.setdefault(alert["device_id"], []).append(alert["ts"])
    detected = episodes = 0
    explained: set[tuple[str, float]] = set()
    for fault in fleet.faults:
        last = fault.end_ts + grace_steps * period
        hits = [t for t in firing.get(fault.device_id, ()) if fault.start_ts <= t <= last]
        detected += bool(hits)
        episodes += len(hits)
        explained.update((fault.device_id, t) for t in hits)
    end = float(fleet.ts[-1]) + period
    coverage = [covered(fault, open_spans(alerts, fault.device_id, end), period) for fault in fleet.faults]
    free = set(fleet.fault_free_devices)
    days = float(fleet.ts[-1] - fleet.ts[0] + period) / 86_400.0
    false_free = sum(len(ts) for device, ts in firing.items() if device in free)
    unexplained = sum(1 for device, ts in firing.items() if device not in free for t in ts
                      if (device, t) not in explained)
    n_faults = max(len(fleet.faults), 1)
    false_recoveries = sum(1 for a in alerts if a["state"] == "resolved" and a.get("reason") == "recovered"
                           and any(f.device_id == a["device_id"] and f.start_ts <= a["ts"] <= f.end_ts
                                   for f in fleet.faults))
    return {
        "faults": len(fleet.faults),
        "recall": detected / n_faults,
        "episodes_per_fault": episodes / n_faults,
        "fault_duration_covered": sum(coverage) / n_faults,  # mean share of each fault with an open alert
        "covered_by_kind": {kind: round(float(np.mean([c for f, c in zip(fleet.faults, coverage, strict=True)
                                                       if f.kind == kind])), 3)
                            for kind in sorted({f.kind for f in fleet.faults})},
        "false_alerts_fault_free": false_free,
        "fault_free_devices": len(free),
        "false_alerts_per_fault_free_device_day": false_free / max(len(free) * days, 1e-9),
        "unexplained_alerts_on_faulty_devices": unexplained,
        "recovered_during_fault_per_fault": false_recoveries / n_faults,
        "alerts": len(alerts),
    }


def replay_alerts(fleet: Fleet, pipeline: Any, chunk: int = 20_000) -> list[dict[str, Any]]:
    """The alert events the pipeline raises on the fleet's messages (as the daemon decodes them), fed
    directly in chunks of `chunk` readings, as dicts like the published records' fields used here."""
    from streamer.ingest.codec import ReadingDecoder
    from streamer.ingest.dead_letter import RawRecord
    from streamer.tools.simulate import reading_messages

    messages = enumerate(reading_messages(fleet))
    records = [RawRecord("direct", 0, i, key, value) for i, (key, value, _) in messages]
    decoder, events = ReadingDecoder(), []
    for start in range(0, len(records), chunk):
        events += pipeline.score(decoder.decode(records[start:start + chunk]).batch).events
    return [{"alert_id": e.alert_id, "device_id": e.device_id, "state": e.state, "ts": e.ts,
             "reason": e.reason} for e in events]


# ---- rnnwatch evaluate fleet ---------------------------------------------------------------------------
_MEANS = ("recall", "episodes_per_fault", "fault_duration_covered", "false_alerts_per_fault_free_device_day",
          "recovered_during_fault_per_fault")


def register(bench: argparse._SubParsersAction) -> None:
    """Add `fleet` under `rnnwatch evaluate`."""
    fleet = bench.add_parser("fleet", help="simulated fleets with labelled faults: recall, coverage, false "
                             "alerts")
    fleet.add_argument("--seeds", default="11,0,1", help="comma-separated fleet seeds (default 11,0,1)")
    fleet.add_argument("--devices", type=int, default=60)
    fleet.add_argument("--steps", type=int, default=1440,
                       help="readings with faults per device (a day at 60 s)")
    fleet.add_argument("--history-steps", type=int, default=0,
                       help="clean readings per device before them (1440: a day old when faults may begin)")
    fleet.add_argument("--model", default=None, help="model artifact directory (default: the shipped model)")
    fleet.add_argument("--device", default="auto")
    fleet.add_argument("--scoring-path", choices=PATHS, default=PATHS[0],
                       help="on the CPU: the compiled kernel (default) or the torch waves (the same alerts)")
    fleet.add_argument("--output-dir", type=Path, default=None, help="also write fleet.json here")
    fleet.set_defaults(func=run_fleet)


def run_fleet(args: argparse.Namespace) -> int:
    from streamer.scoring.factory import build_pipeline
    from streamer.scoring.pipeline import PipelineConfig

    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    per_seed: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for seed in seeds:
        fleet = generate_fleet(n_devices=args.devices, n_steps=args.steps, seed=seed,
                               history_steps=args.history_steps)
        pipeline = build_pipeline(args.model, args.device, PipelineConfig(path=args.scoring_path))
        quality = alert_quality(fleet, replay_alerts(fleet, pipeline))
        per_seed[str(seed)] = quality
        by_kind = quality["covered_by_kind"]
        kinds = " ".join(f"{k} {by_kind.get(k, float('nan')):.2f}" for k in FAULT_KINDS)
        print(f"seed {seed}: {quality['faults']} faults, recall {quality['recall']:.3f}, "
              f"{quality['episodes_per_fault']:.3f} episodes/fault, "
              f"covered {quality['fault_duration_covered']:.3f} ({kinds}), "
              f"{quality['false_alerts_per_fault_free_device_day']:.3f} false alerts per fault-free "
              f"device-day, {quality['recovered_during_fault_per_fault']:.3f} 'recovered' during a fault per "
              "fault")
    mean = {k: float(np.mean([q[k] for q in per_seed.values()])) for k in _MEANS}
    print("mean over seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
          + f" ({time.monotonic() - started:.1f} s; history {args.history_steps} readings per device)")
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        document = {"devices": args.devices, "steps": args.steps, "history_steps": args.history_steps,
                    "seeds": per_seed, "mean": mean}
        (args.output_dir / "fleet.json").write_text(json.dumps(document, indent=1))
    return 0
