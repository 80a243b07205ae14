"""One small HTTP server for Prometheus and the kubelet: `/metrics`, `/healthz`, `/readyz`.

- `/metrics`: the registry in the exposition format the scraper asks for (text or OpenMetrics).
- `/healthz`: 200 while the main loop's heartbeat is younger than `stale_after_s`, else 503. Liveness:
  a loop stuck for longer than that gets the pod restarted.
- `/readyz`: 200 when `readiness()` says ready, else 503 with its reason as the body.

The server runs in a daemon thread; `close()` stops it. The heartbeat and the clock are injected, so a
test drives both: `heartbeat()` returns the time (on `clock`'s scale) of the loop's latest iteration,
or None before the first one, in which case the age counts from the server's start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

Heartbeat = Callable[[], float | None]
Readiness = Callable[[], tuple[bool, str]]  # (ready, reason shown when not ready)
_TEXT = "text/plain; charset=utf-8"
_SHUTDOWN_POLL_S = 0.05  # how often the serving thread checks for close(): close() waits up to this long


class HealthServer:
    """Serves the registry and the two probes on `host:port` (port 0: any free port, see `.port`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        heartbeat: Heartbeat,
        readiness: Readiness,
        *,
        stale_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        host: str = "0.0.0.0",
        port: int = 9109,
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        self._registry = registry
        self._heartbeat = heartbeat
        self._readiness = readiness
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._started = clock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(_SHUTDOWN_POLL_S,), name=f"health-http:{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def liveness(self) -> tuple[bool, str]:
        beat = self._heartbeat()
        age = self._clock() - (self._started if beat is None else beat)
        if age <= self._stale_after_s:
            return True, f"main loop heartbeat {age:.1f} s old"
        return False, f"main loop heartbeat {age:.1f} s old, over the {self._stale_after_s:g} s limit"

    def readiness(self) -> tuple[bool, str]:
        return self._readiness()

    def metrics(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type


def _handler_for(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    probes: dict[str, Callable[[], tuple[bool, str]]] = {
        "/healthz": server.liveness,
        "/readyz": server.readiness,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = server.metrics(self.headers.get("Accept"))
                self._reply(HTTPStatus.OK, body, content_type)
            elif path in probes:
                self._probe(probes[path])
            else:
                self._reply(HTTPStatus.NOT_FOUND, b"try /metrics, /healthz or /readyz\n")

        def _probe(self, check: Callable[[], tuple[bool, str]]) -> None:
            try:
                ok, reason = check()
            except Exception as exc:  # a broken check must read as unhealthy, not kill the handler
                log.exception("probe %s raised", self.path)
                ok, reason = False, f"check raised {type(exc).__name__}: {exc}"
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._reply(status, f"{'ok' if ok else 'not ok'}: {reason}\n".encode())

        def _reply(self, status: HTTPStatus, body: bytes, content_type: str = _TEXT) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
