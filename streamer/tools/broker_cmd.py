"""`rnnwatch broker`: run the embedded tansu broker in the foreground until SIGINT or SIGTERM.

Storage is in memory: stopping it loses every topic and record. For local runs and demos only.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="run an embedded Kafka-compatible broker (tansu, in memory) until Ctrl-C",
        description=__doc__,
    )
    parser.add_argument("--port", type=int, default=9092, help="listen port (default 9092; 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="listen and advertised address")
    parser.add_argument("--log", type=Path, default=None, help="tansu log file (default: a temporary file)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamer.kafka.broker import EmbeddedBroker

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(port=args.port or None, host=args.host, log_path=args.log) as broker:
            print(f"bootstrap servers: {broker.bootstrap_servers}", flush=True)
            print(f"log: {broker.log_path}; Ctrl-C or SIGTERM stops it (all data is in memory)", flush=True)
            while not stop.wait(1.0):
                if not broker.running:
                    print(f"broker exited on its own; log tail:\n{broker.log_tail()}", flush=True)
                    return 1
        print("broker stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
