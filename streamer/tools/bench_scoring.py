"""`rnnwatch bench scoring`: throughput of the whole scoring pipeline against its bare recurrent cell.

Readings are decoded up front (no Kafka, no JSON): the benchmark times `ScoringPipeline.score` on
batches holding `--readings-per-device` readings of every device (default one), and, in the same run,
the bare `model.step` over the same rows (a row is one channel of one device: the model is
channel-independent). The ratio of the two says how much the pipeline around the cell costs. With
`--shadow-model` every batch is also scored by a shadow model (`streamer.scoring.shadow`): the figure
then includes shadowing's cost. `--path kernel|torch|both` picks the scoring path (`PipelineConfig.path`:
the compiled kernel, the torch waves, or both on the same batches, each with its own fresh state,
reported side by side with the kernel's speed-up); `--torch-batches` times the torch path on fewer
batches where one of them takes minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streamer.scoring.factory import build_pipeline
from streamer.scoring.kernel import PATHS
from streamer.scoring.pipeline import PipelineConfig, ScoringPipeline
from streamer.scoring.readings import ReadingBatch
from streamer.scoring.shadow import ShadowedPipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batches", type=int, default=30, help="timed batches (one reading per device each)")
    p.add_argument("--warmup-batches", type=int, default=3)
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the daemon)")
    p.add_argument("--model", default=None)
    p.add_argument("--shadow-model", default=None,
                   help="also score every batch with this model in shadow (streamer.scoring.shadow)")
    p.add_argument("--readings-per-device", type=int, default=1,
                   help="readings of each device in one batch (default 1: one wave per batch)")
    p.add_argument("--path", choices=(*PATHS, "both"), default=PATHS[0],
                   help="scoring path timed: the compiled kernel, the torch waves, or both in one run")
    p.add_argument("--torch-batches", type=int, default=None,
                   help="timed batches of the torch path with --path both (default: --batches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def make_batches(devices: int, channels: int, count: int, seed: int) -> list[ReadingBatch]:
    """`count` batches, each one reading per device: a noisy daily cycle per channel."""
    rng = np.random.default_rng(seed)
    ids = [f"dev-{i:07d}" for i in range(devices)]
    names = tuple(f"c{k}" for k in range(channels))
    phase = rng.uniform(0, 2 * np.pi, (devices, channels))
    out = []
    for step in range(count):
        values = (np.sin(2 * np.pi * step / 288 + phase) + rng.normal(0, 0.1, (devices, channels)))
        out.append(ReadingBatch(
            device_ids=ids,
            ts=np.full(devices, 1.7e9 + 60.0 * step),
            values=values.astype(np.float32),
            n_channels=np.full(devices, channels, dtype=np.int16),
            channels=[names] * devices,
            partitions=np.full(devices, -1, dtype=np.int32),
            offsets=np.full(devices, -1, dtype=np.int64),
        ))
    return out


def _merge(steps: list[ReadingBatch]) -> ReadingBatch:
    """Consecutive one-reading-per-device batches as one batch, device after device (k readings each)."""
    if len(steps) == 1:
        return steps[0]
    n = len(steps[0])
    order = np.arange(n * len(steps)).reshape(len(steps), n).T.reshape(-1)  # device-major
    cat = {f: np.concatenate([getattr(b, f) for b in steps])[order]
           for f in ("ts", "values", "n_channels", "partitions", "offsets")}
    return ReadingBatch(device_ids=[steps[0].device_ids[i // len(steps)] for i in range(n * len(steps))],
                        channels=[steps[0].channels[0]] * (n * len(steps)), **cat)


def _bare_step_rows_per_s(pipeline: ScoringPipeline, rows: int, warmup: int, steps: int) -> float:
    """Rows per second of the bare recurrent step over `rows` rows, `steps` times (after `warmup`)."""
    model, device = pipeline.model, pipeline.device
    x = torch.randn(rows, model.config.input_features, device=device)  # (R, F)
    h = torch.zeros(rows, model.config.state_size, device=device)  # (R, S)
    with torch.inference_mode():
        for _ in range(warmup):
            _, h = model.step(x, h)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            _, h = model.step(x, h)
        _sync(device)
    return rows * steps / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(args: argparse.Namespace, path: str, batches: list[ReadingBatch], timed: int
           ) -> tuple[float, ScoringPipeline | ShadowedPipeline]:
    """Readings per second of `timed` batches scored on `path` after the warm-up batches."""
    config = PipelineConfig(path=path)  # type: ignore[arg-type]
    live = build_pipeline(args.model, args.device, config, cpu_threads=args.threads)
    pipeline: ScoringPipeline | ShadowedPipeline = live
    if args.shadow_model:
        pipeline = ShadowedPipeline(live, build_pipeline(args.shadow_model, args.device, config,
                                                         cpu_threads=args.threads))
    for batch in batches[: args.warmup_batches]:
        pipeline.score(batch)
    _sync(pipeline.device)
    started = time.perf_counter()
    for batch in batches[args.warmup_batches : args.warmup_batches + timed]:
        pipeline.score(batch)
    _sync(pipeline.device)
    return sum(map(len, batches[args.warmup_batches : args.warmup_batches + timed])) / (
        time.perf_counter() - started), pipeline


def bench(args: argparse.Namespace) -> dict[str, object]:
    k = max(1, args.readings_per_device)
    steps = make_batches(args.devices, args.channels, (args.warmup_batches + args.batches) * k, args.seed)
    batches = [_merge(steps[b * k : (b + 1) * k]) for b in range(args.warmup_batches + args.batches)]
    paths = ("kernel", "torch") if args.path == "both" else (args.path,)
    rates: dict[str, float] = {}
    for path in paths:
        timed = args.torch_batches if path == "torch" and args.path == "both" and args.torch_batches else \
            args.batches
        rates[path], pipeline = _timed(args, path, batches, timed)
    readings_per_s = rates[paths[0]]
    live = pipeline.live if isinstance(pipeline, ShadowedPipeline) else pipeline
    rows = args.devices * args.channels
    bare_rows_per_s = _bare_step_rows_per_s(live, rows, args.warmup_batches, args.batches * k)
    return {
        "benchmark": "scoring",
        "device": str(pipeline.device),
        "path": args.path,
        "devices": args.devices,
        "channels": args.channels,
        "batches": args.batches,
        "readings_per_device": k,
        "shape": f"{args.devices} devices x {k} readings x {args.channels} channels per batch",
        "shadow_model": pipeline.shadow.model_version if isinstance(pipeline, ShadowedPipeline) else None,
        "readings": args.devices * args.batches * k,
        "model_version": pipeline.model_version,
        "threads": args.threads,
        "readings_per_s": round(readings_per_s),
        "pipeline_rows_per_s": round(readings_per_s * args.channels),
        **{f"{path}_readings_per_s": round(rate) for path, rate in rates.items()},
        **({"speedup": round(rates["kernel"] / rates["torch"], 1)} if len(rates) == 2 else {}),
        "bare_step_rows_per_s": round(bare_rows_per_s),
        "ratio": round(readings_per_s * args.channels / bare_rows_per_s, 3),
        "bytes_per_device": pipeline.bytes_per_device(args.channels) if isinstance(pipeline, ShadowedPipeline)
        else pipeline.store.bytes_per_device(args.channels),
    }


def run(args: argparse.Namespace) -> int:
    from streamer.tools.bench_cmd import report

    return report(bench(args), args.json)
