"""Read a running daemon's /metrics the way Prometheus would, for assertions in integration tests."""

from __future__ import annotations

import urllib.request


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """/metrics as {'name{labels}': value} for every rnnwatch_ sample."""
    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line.startswith("rnnwatch_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
