"""The daemon's one frozen settings object, read once at the edge from CLI flags and the environment.

Precedence: a CLI flag beats its environment variable, which beats the default. This is the only
module that looks at environment variables, and it only reads the mapping it is given (the CLI passes
`os.environ`), so a test passes a plain dict.

    >>> s = Settings.from_sources(None, {"RNNWATCH_METRICS_PORT": "9200"})
    >>> s.metrics_port, s.readings_topic, s.scores_topic
    (9200, 'sensor.readings', None)
    >>> Settings.from_sources(None, {"RNNWATCH_METRICS_PORT": "http"})
    Traceback (most recent call last):
    ...
    streamer.errors.ConfigError: RNNWATCH_METRICS_PORT='http': expected an integer in [0, 65535]

Each default is written once: in the `Settings` fields below (the Kafka connection's in
`KafkaClientSettings`, the message limits' in `CodecLimits`). The `--help` texts, README.md's settings
tables (`settings_table()`, kept equal by tests/test_settings.py) and the ConfigMap check in
tests/test_deploy_consistency.py are derived from them and from `_OPTIONS`, which names each setting's
variable and flag:

    >>> print(settings_table().splitlines()[2])
    | `KAFKA_BOOTSTRAP_SERVERS` | `--bootstrap-servers` | `127.0.0.1:9092` | comma-separated host:port list |
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streamer.errors import ConfigError
from streamer.ingest.codec import CodecLimits
from streamer.kafka.client_choice import KAFKA_CLIENTS, resolve_client
from streamer.kafka.client_config import KafkaClientSettings
from streamer.scoring.event_time import REBASE_AFTER
from streamer.scoring.kernel import PATHS as SCORING_PATHS
from streamer.scoring.shape import RESHAPE_AFTER

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CODEC = CodecLimits()  # the decoder's own defaults


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `rnnwatch serve` needs to know, validated."""

    kafka: KafkaClientSettings = field(default_factory=KafkaClientSettings)
    kafka_client: str = "auto"
    group_id: str = "rnnwatch"
    readings_topic: str = "sensor.readings"
    alerts_topic: str = "sensor.alerts"
    dlq_topic: str = "sensor.readings.dlq"
    scores_topic: str | None = None
    state_topic: str = "rnnwatch.state"
    checkpoint_interval_s: float = 30.0
    max_devices: int = 1_000_000
    device_ttl_s: float = 7 * 86_400.0
    metrics_port: int = 9109
    model: str | None = None
    shadow_model: str | None = None
    shadow_alerts_topic: str = "sensor.alerts.shadow"
    feedback_topic: str | None = "sensor.alerts.feedback"
    model_check_interval_s: float = 30.0  # 0: no hot swap (a new model needs a restart)
    swap_deadline_s: float = 7200.0
    device: str = "auto"
    log_level: str = "INFO"
    torch_threads: int = 1
    scoring_path: str = SCORING_PATHS[0]
    max_future_s: float = 300.0
    clock_rebase_after: int = REBASE_AFTER
    reshape_after: int = RESHAPE_AFTER
    # flags only
    metrics_host: str = "0.0.0.0"
    create_topics: bool = True
    topic_partitions: int = 4  # for topics the daemon creates
    session_timeout_ms: int = 6_000
    max_poll_records: int = 20_000
    poll_timeout_ms: int = 500
    fetch_max_wait_ms: int = 100  # a fetch the broker cannot fill yet returns after this (latency bound)
    consumer_lag_interval_s: float = 5.0
    publish_timeout_s: float = 30.0
    max_in_flight_records: int = 100_000  # unacknowledged output records before the loop waits
    max_in_flight_bytes: int = 32 * 1024 * 1024
    decode_workers: int = 1  # 0: decode in the loop (one core); 1: a process decodes beside scoring
    startup_attempts: int = 0  # tries to reach the broker at start; 0 = keep trying until stopped
    stale_after_s: float = 60.0  # /healthz fails when the loop has not turned for this long
    max_message_bytes: int = _CODEC.max_message_bytes
    max_readings_per_message: int = _CODEC.max_readings_per_message  # also a scoring chunk's wave budget
    max_channels: int = _CODEC.max_channels
    max_device_id_bytes: int = _CODEC.max_device_id_bytes
    max_channel_name_bytes: int = _CODEC.max_channel_name_bytes

    @property
    def codec_limits(self) -> CodecLimits:
        return CodecLimits(self.max_message_bytes, self.max_readings_per_message, self.max_channels,
                           max_device_id_bytes=self.max_device_id_bytes,
                           max_channel_name_bytes=self.max_channel_name_bytes, max_future_s=self.max_future_s)

    @property
    def topics(self) -> dict[str, str]:
        """Every topic the daemon reads or writes, by role (scores only when enabled)."""
        roles = {"readings": self.readings_topic, "alerts": self.alerts_topic, "dlq": self.dlq_topic,
                 "state": self.state_topic}
        if self.scores_topic:
            roles["scores"] = self.scores_topic
        if self.shadow_model:
            roles["shadow_alerts"] = self.shadow_alerts_topic
        if self.feedback_topic:
            roles["feedback"] = self.feedback_topic
        return roles

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add a flag per setting; every default is None so `from_sources` can tell "not given"."""
        for opt in _OPTIONS:
            if opt.flag is None:
                continue
            variable = f"; {opt.env}" if opt.env else ""
            kwargs: dict[str, Any] = {"default": None, "dest": opt.dest,
                                      "help": f"{opt.help} (default: {default_text(opt)}{variable})"}
            if opt.parse is _flag_bool:
                parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                parser.add_argument(opt.flag, metavar=opt.metavar, **kwargs)

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None, environ: Mapping[str, str]) -> Settings:
        """Flags (args) over environment (environ) over defaults; `ConfigError` names what is wrong."""
        values: dict[str, Any] = {}
        for opt in _OPTIONS:
            raw, source = _lookup(opt, args, environ)
            if raw is None:
                continue
            try:
                values[opt.dest] = raw if isinstance(raw, bool) else opt.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}={raw!r}: {exc}") from None
        kafka = _kafka_settings(values)
        values.setdefault("state_topic", f"{values.get('group_id', 'rnnwatch')}.state")  # one per group
        own = {f.name for f in fields(cls)}
        settings = cls(kafka=kafka, **{k: v for k, v in values.items() if k in own})
        settings._check()
        return settings

    def _check(self) -> None:
        names = list(self.topics.values())
        if len(set(names)) != len(names):
            raise ConfigError(f"topics must differ from each other, got {self.topics}; "
                              "check the RNNWATCH_*_TOPIC variables")
        resolve_client(self.kafka_client)  # confluent asked for and not installed: say so at start


@dataclass(frozen=True, slots=True)
class _Option:
    dest: str
    env: str | None
    flag: str | None
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    default: str | None = None  # the default in words, where it is not a plain value (Markdown)


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _seconds_or_zero(raw: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds >= 0") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("expected a number of seconds >= 0")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer in [{lo}, {hi}]") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer in [{lo}, {hi}]")
        return value
    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds > 0") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("expected a number of seconds > 0")
    return value


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(_LOG_LEVELS)}")
    return level


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return parse


def _flag_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _readable_file(raw: str) -> str:
    path = Path(raw.strip())
    if not path.is_file():
        raise ValueError("no such file")
    return str(path)


_MAX_INT = 2**31 - 1
_OPTIONS: tuple[_Option, ...] = (
    _Option("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "--bootstrap-servers", _text,
            "comma-separated host:port list", "HOSTS"),
    _Option("kafka_client", "RNNWATCH_KAFKA_CLIENT", "--kafka-client", _choice(KAFKA_CLIENTS),
            "auto (confluent-kafka when installed, else kafka-python), kafka-python or confluent"),
    _Option("group_id", "RNNWATCH_GROUP_ID", "--group-id", _text, "consumer group id"),
    _Option("readings_topic", "RNNWATCH_READINGS_TOPIC", "--readings-topic", _text, "topic to consume"),
    _Option("alerts_topic", "RNNWATCH_ALERTS_TOPIC", "--alerts-topic", _text, "topic for alert events"),
    _Option("dlq_topic", "RNNWATCH_DLQ_TOPIC", "--dlq-topic", _text, "dead-letter topic"),
    _Option("scores_topic", "RNNWATCH_SCORES_TOPIC", "--scores-topic", _optional_text,
            "publish every score here ({device_id, ts, anomaly_score, alert}); unset: off"),
    _Option("state_topic", "RNNWATCH_STATE_TOPIC", "--state-topic", _text,
            "device state changelog topic (compacted, same partitions as readings)",
            default="`<group id>.state`"),
    _Option("checkpoint_interval_s", "RNNWATCH_CHECKPOINT_INTERVAL_S", "--checkpoint-interval-s", _seconds,
            "seconds between state checkpoints (and offset commits)"),
    _Option("max_devices", "RNNWATCH_MAX_DEVICES", "--max-devices", _int_in(1, _MAX_INT),
            "devices held in memory at most (least recently seen evicted)"),
    _Option("device_ttl_s", "RNNWATCH_DEVICE_TTL_S", "--device-ttl-s", _seconds,
            "seconds without a reading before a device's state may be evicted"),
    _Option("metrics_port", "RNNWATCH_METRICS_PORT", "--metrics-port", _int_in(0, 65535),
            "port of /metrics, /healthz, /readyz (0: any free port)"),
    _Option("model", "RNNWATCH_MODEL", "--model", _optional_text, "model artifact directory", "DIR",
            default="the shipped model"),
    _Option("shadow_model", "RNNWATCH_SHADOW_MODEL", "--shadow-model", _optional_text,
            "a second model artifact that scores every reading in shadow (its alerts go to the shadow "
            "alerts topic only); unset: off", "DIR"),
    _Option("shadow_alerts_topic", "RNNWATCH_SHADOW_ALERTS_TOPIC", "--shadow-alerts-topic", _text,
            "where the shadow model's alert events go"),
    _Option("feedback_topic", "RNNWATCH_FEEDBACK_TOPIC", "--feedback-topic", _optional_text,
            "operators' verdicts on alerts and device silences (same partitions as readings, keyed by device "
            "id); empty: off"),
    _Option("model_check_interval_s", "RNNWATCH_MODEL_CHECK_INTERVAL_S", "--model-check-interval-s",
            _seconds_or_zero, "seconds between looks at the model directory for a new artifact to swap to "
            "without a restart (SIGHUP: look now); 0: off"),
    _Option("swap_deadline_s", "RNNWATCH_SWAP_DEADLINE_S", "--swap-deadline-s", _seconds,
            "a hot swap completes after this long even if some devices did not warm up on the new model"),
    _Option("device", "RNNWATCH_DEVICE", "--device", _text,
            "auto (cuda when visible, else cpu), cpu or cuda[:N]"),
    _Option("log_level", "RNNWATCH_LOG_LEVEL", "--log-level", _log_level,
            "JSON logs on stderr: DEBUG, INFO, WARNING, ERROR"),
    _Option("torch_threads", "RNNWATCH_TORCH_THREADS", "--torch-threads", _int_in(1, 1024),
            "CPU threads for scoring, the kernel's and torch's (one leaves a core to the Kafka client)"),
    _Option("scoring_path", "RNNWATCH_SCORING_PATH", "--scoring-path", _choice(SCORING_PATHS),
            "on the CPU: kernel (one compiled pass per batch, built at start) or torch (wave by wave)"),
    _Option("max_future_s", "RNNWATCH_MAX_FUTURE_S", "--max-future-s", _seconds,
            "a reading whose ts is further ahead of the wall clock is dead-lettered (`future_timestamp`)"),
    _Option("clock_rebase_after", "RNNWATCH_CLOCK_REBASE_AFTER", "--clock-rebase-after",
            _int_in(1, 1_000_000),
            "readings in a row older than a device's clock before its clock is re-based"),
    _Option("reshape_after", "RNNWATCH_RESHAPE_AFTER", "--reshape-after", _int_in(1, 1_000_000),
            "readings in a row in one new channel set before a device is re-initialised for it"),
    _Option("security_protocol", "KAFKA_SECURITY_PROTOCOL", "--security-protocol", _text,
            "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    _Option("sasl_mechanism", "KAFKA_SASL_MECHANISM", "--sasl-mechanism", _optional_text,
            "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ..."),
    _Option("sasl_username", "KAFKA_SASL_USERNAME", "--sasl-username", _optional_text, "SASL user"),
    _Option("sasl_password", "KAFKA_SASL_PASSWORD", None, str,
            "SASL password (no flag: a password on a command line shows in `ps`)"),
    _Option("sasl_password_file", "KAFKA_SASL_PASSWORD_FILE", "--sasl-password-file", _readable_file,
            "file holding the SASL password (its content, trailing newline cut)", "FILE"),
    _Option("ssl_cafile", "KAFKA_SSL_CAFILE", "--ssl-cafile", _readable_file, "CA bundle (PEM)", "FILE"),
    _Option("ssl_certfile", "KAFKA_SSL_CERTFILE", "--ssl-certfile", _readable_file, "client cert (PEM)",
            "FILE"),
    _Option("ssl_keyfile", "KAFKA_SSL_KEYFILE", "--ssl-keyfile", _readable_file, "client key (PEM)", "FILE"),
    # flags only
    _Option("metrics_host", None, "--metrics-host", _text, "address the health server binds"),
    _Option("create_topics", None, "--create-topics", _flag_bool,
            "create missing topics at start (--no-create-topics: fail and name them)"),
    _Option("topic_partitions", None, "--topic-partitions", _int_in(1, 10_000),
            "partitions of the topics the daemon creates"),
    _Option("session_timeout_ms", None, "--session-timeout-ms", _int_in(1_000, 600_000),
            "consumer group session timeout"),
    _Option("max_poll_records", None, "--max-poll-records", _int_in(1, 10_000_000),
            "records per poll at most (the batch size under backlog; smaller when caught up)"),
    _Option("poll_timeout_ms", None, "--poll-timeout-ms", _int_in(1, 60_000), "poll wait"),
    _Option("fetch_max_wait_ms", None, "--fetch-max-wait-ms", _int_in(1, 60_000),
            "longest a fetch waits at the broker for data (a broker that does not answer as soon as data "
            "arrives delays readings by up to this)"),
    _Option("consumer_lag_interval_s", None, "--consumer-lag-interval-s", _seconds,
            "seconds between consumer-lag metric updates"),
    _Option("publish_timeout_s", None, "--publish-timeout-s", _seconds,
            "how long to wait for the broker to acknowledge the output in flight"),
    _Option("max_in_flight_records", None, "--max-in-flight-records", _int_in(1, _MAX_INT),
            "unacknowledged output records before the loop waits for the broker"),
    _Option("max_in_flight_bytes", None, "--max-in-flight-bytes", _int_in(1, _MAX_INT),
            "unacknowledged output bytes before the loop waits for the broker"),
    _Option("decode_workers", None, "--decode-workers", _int_in(0, 1),
            "1: a second process decodes large polls while the loop scores; 0: decode in the loop"),
    _Option("startup_attempts", None, "--startup-attempts", _int_in(0, 1_000_000),
            "tries to reach the broker at start, 0 = until stopped"),
    _Option("stale_after_s", None, "--stale-after-s", _seconds,
            "/healthz fails when the loop has not turned for this long"),
    _Option("max_message_bytes", None, "--max-message-bytes", _int_in(1, _MAX_INT),
            "larger reading messages are dead-lettered"),
    _Option("max_readings_per_message", None, "--max-readings-per-message", _int_in(1, _MAX_INT),
            "batch-form messages with more readings are dead-lettered"),
    _Option("max_channels", None, "--max-channels", _int_in(1, 32_767),
            "readings with more channels are dead-lettered"),
    _Option("max_device_id_bytes", None, "--max-device-id-bytes", _int_in(1, 65_535),
            "messages whose device id has more UTF-8 bytes are dead-lettered"),
    _Option("max_channel_name_bytes", None, "--max-channel-name-bytes", _int_in(1, 65_535),
            "readings with a longer channel name (UTF-8 bytes) are dead-lettered"),
)


def _lookup(opt: _Option, args: argparse.Namespace | None, environ: Mapping[str, str]) -> tuple[Any, str]:
    given = getattr(args, opt.dest, None) if args is not None and opt.flag else None
    if given is not None:
        return given, opt.flag or opt.dest
    if opt.env is not None and opt.env in environ:
        return environ[opt.env], opt.env
    return None, ""


def _kafka_settings(values: dict[str, Any]) -> KafkaClientSettings:
    password = values.get("sasl_password")
    password_file = values.get("sasl_password_file")
    if password is not None and password_file is not None:
        raise ConfigError("both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE (--sasl-password-file) "
                          "are set; keep one")
    if password_file is not None:
        try:
            password = Path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"KAFKA_SASL_PASSWORD_FILE={password_file!r}: cannot read it: {exc}") from None
    kwargs = {
        key: values[key]
        for key in ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
                    "ssl_cafile", "ssl_certfile", "ssl_keyfile")
        if key in values
    }
    try:
        return KafkaClientSettings(**kwargs, sasl_password=password)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (set by KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, "
                          "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD[_FILE])") from None


def log_level_number(settings: Settings) -> int:
    """The stdlib logging level of `settings.log_level`."""
    return int(logging.getLevelName(settings.log_level))


ENVIRONMENT = tuple(opt.env for opt in _OPTIONS if opt.env)  # every variable Settings reads


def source_name(dest: str) -> str:
    """The variable (else the flag) that sets the setting `dest`, for error messages."""
    opt = next(o for o in _OPTIONS if o.dest == dest)
    return opt.env or opt.flag or dest


def default_text(opt: _Option) -> str:
    """`opt`'s default as the help and the README write it, read from the dataclass that holds it."""
    if opt.default is not None:
        return opt.default
    holder = Settings() if opt.dest in _SETTINGS_FIELDS else KafkaClientSettings()
    value = getattr(holder, opt.dest, None)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_table() -> str:
    """README.md's settings tables (Markdown): the variables, then the flags that have none."""
    def cell(opt: _Option) -> str:  # a value in backticks; "unset" and written-out defaults as they are
        text = default_text(opt)
        return text if opt.default is not None or text == "unset" else f"`{text}`"

    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{o.env}` | {f'`{o.flag}`' if o.flag else 'none'} | {cell(o)} | {o.help} |"
             for o in _OPTIONS if o.env]
    rows += ["", "Tuning flags without a variable (rarely changed):", "",
             "| flag | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{o.flag}` | {cell(o)} | {o.help} |" for o in _OPTIONS if o.env is None]
    return "\n".join(rows)


_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))
