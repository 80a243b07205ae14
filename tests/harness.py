"""What the integration tests share to drive a daemon: one wait, one daemon-in-a-thread, one scrape.

- `wait_for(condition, timeout_s, what)`: poll until true, else fail naming what was awaited.
- `running_daemon(settings, pipeline)`: `Daemon.run()` in a background thread; optionally waits until
  it is ready, stops it on exit and fails when it hangs or raised.
- `exposition(port)`, `scrape(port)`, `ready(port)`: a daemon's /metrics (as Prometheus reads it) and
  /readyz over loopback HTTP.
"""

from __future__ import annotations

import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from streamer.service.daemon import Daemon
from streamer.service.settings import Settings

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


@contextmanager
def running_daemon(settings: Settings, pipeline: Any = None, *, ready_within_s: float | None = None,
                   stop_within_s: float = 30.0) -> Iterator[Daemon]:
    """The daemon serving in a thread. `pipeline` None: the shipped model on CPU.

    ready_within_s: wait (at most this long) until it is ready before the block runs; None: do not.
    stop_within_s: on exit it is stopped and must have returned by then; what it raised fails the test.
    """
    if pipeline is None:
        from streamer.scoring.factory import build_pipeline

        pipeline = build_pipeline(None, "cpu")
    daemon = Daemon(settings, pipeline)
    errors: list[BaseException] = []

    def main() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced below, not swallowed
            errors.append(exc)

    thread = threading.Thread(target=main, name=f"daemon-{id(daemon)}", daemon=True)
    thread.start()
    try:
        if ready_within_s is not None:
            wait_for(lambda: daemon.readiness()[0] or bool(errors), ready_within_s, "daemon ready")
            assert not errors, _traced(errors)
        yield daemon
    finally:
        daemon.stop()
        thread.join(stop_within_s)
        assert not thread.is_alive(), f"daemon did not stop within {stop_within_s} s (hung)"
        assert not errors, _traced(errors)


def exposition(port: int, accept: str | None = None, host: str = "127.0.0.1") -> str:
    """The /metrics body, in the format `accept` asks for (None: Prometheus text)."""
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """/metrics as {'name{labels}': value} for every rnnwatch_ sample."""
    samples = {}
    for line in exposition(port, host=host).splitlines():
        if line.startswith("rnnwatch_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def ready(port: int, host: str = "127.0.0.1") -> bool:
    """Whether /readyz answers 200 (False while nothing listens or it says 503)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _traced(errors: list[BaseException]) -> str:
    """What the daemon thread raised, with where it raised it."""
    return "\n".join("".join(traceback.format_exception(exc)) for exc in errors)
