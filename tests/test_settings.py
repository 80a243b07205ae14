"""Settings: flags over environment over defaults; errors name the variable to fix."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from streamer.errors import ConfigError
from streamer.service.settings import Settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_documented_ones():
    s = Settings.from_sources(parse([]), {})
    assert s == Settings()
    assert (s.kafka.bootstrap_servers, s.group_id, s.readings_topic, s.alerts_topic, s.dlq_topic) == (
        "127.0.0.1:9092", "rnnwatch", "sensor.readings", "sensor.alerts", "sensor.readings.dlq")
    assert (s.scores_topic, s.metrics_port, s.model, s.device) == (None, 9109, None, "auto")
    assert s.create_topics and s.session_timeout_ms == 6000


def test_flag_beats_environment_beats_default():
    env = {"RNNWATCH_ALERTS_TOPIC": "env.alerts", "RNNWATCH_GROUP_ID": "env-group",
           "RNNWATCH_SCORES_TOPIC": "env.scores", "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092"}
    s = Settings.from_sources(parse(["--alerts-topic", "flag.alerts", "--no-create-topics"]), env)
    assert s.alerts_topic == "flag.alerts"
    assert s.group_id == "env-group"
    assert s.scores_topic == "env.scores"
    assert s.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert s.dlq_topic == "sensor.readings.dlq"
    assert s.create_topics is False


@pytest.mark.parametrize(("env", "named"), [
    ({"RNNWATCH_METRICS_PORT": "70000"}, "RNNWATCH_METRICS_PORT"),
    ({"RNNWATCH_MAX_DEVICES": "lots"}, "RNNWATCH_MAX_DEVICES"),
    ({"RNNWATCH_CHECKPOINT_INTERVAL_S": "-1"}, "RNNWATCH_CHECKPOINT_INTERVAL_S"),
    ({"RNNWATCH_DEVICE_TTL_S": "nan"}, "RNNWATCH_DEVICE_TTL_S"),
    ({"RNNWATCH_LOG_LEVEL": "loud"}, "RNNWATCH_LOG_LEVEL"),
    ({"RNNWATCH_READINGS_TOPIC": " "}, "RNNWATCH_READINGS_TOPIC"),
    ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_PASSWORD"),
    ({"RNNWATCH_DLQ_TOPIC": "sensor.readings"}, "RNNWATCH_"),
])
def test_invalid_values_raise_config_error_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_sources(parse([]), env)


def test_invalid_flag_names_the_flag():
    with pytest.raises(ConfigError, match="--metrics-port"):
        Settings.from_sources(parse(["--metrics-port", "x"]), {"RNNWATCH_METRICS_PORT": "1"})


def test_sasl_password_from_file_or_env_but_not_both(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    s = Settings.from_sources(parse([]), env)
    assert s.kafka.sasl_password == "s3cret"
    assert "s3cret" not in repr(s)
    env_pw = {k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD_FILE"} | {"KAFKA_SASL_PASSWORD": "p"}
    assert Settings.from_sources(parse([]), env_pw).kafka.sasl_password == "p"
    with pytest.raises(ConfigError, match="keep one"):
        Settings.from_sources(parse([]), {**env, "KAFKA_SASL_PASSWORD": "p"})


def test_settings_are_frozen_and_list_their_topics():
    s = Settings.from_sources(None, {"RNNWATCH_SCORES_TOPIC": "scores"})
    with pytest.raises(AttributeError):
        s.group_id = "x"  # type: ignore[misc]
    assert s.topics == {"readings": "sensor.readings", "alerts": "sensor.alerts",
                        "dlq": "sensor.readings.dlq", "state": "rnnwatch.state", "scores": "scores",
                        "feedback": "sensor.alerts.feedback"}
    assert s.codec_limits.max_message_bytes == 1_048_576


def test_readme_settings_tables_are_the_rendered_declaration():
    between = re.search(r"<!-- settings-table: begin[^>]*-->\n(.*?)\n<!-- settings-table: end -->",
                        README.read_text(), re.S)
    assert between, "README.md lost its settings-table markers"
    assert between[1] == settings_table(), (
        "README.md's settings tables differ from streamer/service/settings.py; paste the output of "
        "python -c 'from streamer.service.settings import settings_table; print(settings_table())'")


def test_help_shows_each_default_and_variable_once_declared():
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    helps = {action.option_strings[0]: action.help for action in parser._actions}
    assert helps["--topic-partitions"] == "partitions of the topics the daemon creates (default: 4)"
    assert helps["--checkpoint-interval-s"].endswith("(default: 30; RNNWATCH_CHECKPOINT_INTERVAL_S)")
    assert helps["--torch-threads"].endswith("(default: 1; RNNWATCH_TORCH_THREADS)")
    assert helps["--max-message-bytes"].endswith(f"(default: {Settings().max_message_bytes})")  # CodecLimits'
    assert helps["--model"].endswith("(default: the shipped model; RNNWATCH_MODEL)")


def test_hostile_input_limits_have_their_defaults_and_reach_the_decoder():
    s = Settings.from_sources(parse(["--max-device-id-bytes", "64"]), {"RNNWATCH_MAX_FUTURE_S": "60",
                                                                       "RNNWATCH_RESHAPE_AFTER": "2"})
    limits = s.codec_limits
    assert (limits.max_device_id_bytes, limits.max_channel_name_bytes, limits.max_future_s) == (64, 128, 60.0)
    assert (limits.max_readings_per_message, s.clock_rebase_after, s.reshape_after) == (1_000, 20, 2)
    for env in ({"RNNWATCH_MAX_FUTURE_S": "0"}, {"RNNWATCH_CLOCK_REBASE_AFTER": "0"},
                {"RNNWATCH_RESHAPE_AFTER": "many"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_sources(parse([]), env)


def test_readme_bad_input_tables_list_every_reason_and_limit_with_its_default():
    import re
    from pathlib import Path

    from streamer.ingest.dead_letter import DeadLetterReason
    from streamer.scoring.readings import DropReason

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    reasons = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert reasons == {r.value for r in DeadLetterReason}
    for drop in DropReason:
        assert drop is DropReason.SCORED or f"`{drop.label}`" in section, drop
    limits = dict(re.findall(r"^\| `([-\w]+)` \| ([\w.,]+) \|", section, re.M))
    s = Settings()
    for flag, value in {"--max-message-bytes": s.max_message_bytes,
                        "--max-readings-per-message": s.max_readings_per_message,
                        "--max-channels": s.max_channels, "--max-device-id-bytes": s.max_device_id_bytes,
                        "--max-channel-name-bytes": s.max_channel_name_bytes,
                        "RNNWATCH_MAX_FUTURE_S": s.max_future_s,
                        "RNNWATCH_CLOCK_REBASE_AFTER": s.clock_rebase_after,
                        "RNNWATCH_RESHAPE_AFTER": s.reshape_after}.items():
        assert float(limits[flag]) == value, (flag, limits.get(flag), value)
