"""A model artifact from outside: every field range-checked, the weights header checked before loading.

Whatever is done to config.json or model.safetensors, `load` gives an `ArtifactError` that names the
file and what is allowed, or a model equal to the shipped one: never another exception, and never an
allocation beyond the stated bound (`ADDRESS_SPACE_SLACK`, enforced with RLIMIT_AS while fuzzing).
The CLI turns the error into one line and exit status 2 (test_hostile_input.py runs `rnnwatch serve`).
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import artifact
from model.artifact_schema import MAX_WEIGHTS_BYTES, ArtifactError

SHIPPED = artifact.default_model_dir()
CONFIG = json.loads((SHIPPED / artifact.CONFIG).read_text())
WEIGHTS = (SHIPPED / artifact.WEIGHTS).read_bytes()
REFERENCE = artifact.load()
ADDRESS_SPACE_SLACK = 1 << 30  # what fuzzing may add to the address space (the largest model: 17 MB)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(directory: Path, config: Any = CONFIG, weights: bytes = WEIGHTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, bytes) else json.dumps(config).encode()
    (directory / artifact.CONFIG).write_bytes(text)
    (directory / artifact.WEIGHTS).write_bytes(weights)
    return directory


def load_or_refuse(directory: Path) -> artifact.ModelArtifact | None:
    """The loaded artifact, or None when refused with an ArtifactError; anything else fails the test."""
    try:
        return artifact.load(directory)
    except ArtifactError as exc:
        assert str(exc) and "\n" not in str(exc), exc
        return None


def assert_is_the_shipped_model(loaded: artifact.ModelArtifact) -> None:
    for (name, a), (_, b) in zip(REFERENCE.model.state_dict().items(), loaded.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    x, h = torch.zeros(3, 2), torch.zeros(3, loaded.model.config.state_size)
    pred, _ = loaded.model.step(x, h)
    assert torch.isfinite(pred).all()


@pytest.fixture
def bounded_memory() -> Iterator[None]:
    """Address space limited to what the process holds now plus ADDRESS_SPACE_SLACK."""
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + ADDRESS_SPACE_SLACK, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ---- the poison pills of the issue ------------------------------------------------------------------------
@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("architecture", "hidden_size", 1e9,
     r"architecture.hidden_size is 1000000000.0; allowed: an integer in \[1, 1024\]"),
    ("architecture", "hidden_size", 10**9, r"hidden_size .* in \[1, 1024\]"),
    ("architecture", "input_features", 10**9, r"input_features .* in \[2, 2\]"),
    ("architecture", "input_features", -5, r"input_features is -5"),
    ("architecture", "cell", "transformer", r"cell is 'transformer'; allowed: \"gru\", \"lstm\""),
    ("architecture", "channel_independent", 1, r"channel_independent is 1; allowed: true"),
    ("architecture", "layers", 3, r"architecture has unknown fields \['layers'\]"),
    ("normaliser", "alpha", 0, r"normaliser.alpha is 0; allowed: a number in \(0, 1\]"),
    ("normaliser", "abs_floor", float("nan"), r"normaliser.abs_floor is nan"),
    ("normaliser", "settle", 2.5, r"normaliser.settle is 2.5; allowed: an integer"),
    ("normaliser", "settel", 32, r"unknown fields \['settel'\]"),
])
def test_config_fields_out_of_range_are_named_with_what_is_allowed(tmp_path, section, key, value, message):
    config = json.loads(json.dumps(CONFIG))
    config[section][key] = value
    with pytest.raises(ArtifactError, match=message):
        artifact.load(write(tmp_path, config))


@pytest.mark.parametrize(("weights", "message"), [
    (b"", "not a safetensors file"),
    (WEIGHTS[:100], "safetensors"),
    (WEIGHTS[:-4], "truncated, padded or another model"),
    (WEIGHTS + b"\0" * 8, "truncated, padded or another model"),
    (b"\xff" * len(WEIGHTS), "header length"),
    (struct.pack("<Q", 30) + b"{" * 30 + WEIGHTS[38:], "cannot read the safetensors header"),
])
def test_truncated_empty_or_garbled_weights_are_refused(tmp_path, weights, message):
    with pytest.raises(ArtifactError, match=message):
        artifact.load(write(tmp_path, weights=weights))


def test_a_header_claiming_a_huge_tensor_is_refused_before_reading_it(tmp_path):
    n = struct.unpack("<Q", WEIGHTS[:8])[0]
    header = json.loads(WEIGHTS[8:8 + n])
    header["rnn.weight_hh_l0"]["shape"] = [10**9, 10**9]
    raw = json.dumps(header).encode()
    with pytest.raises(ArtifactError, match="expected F32 of shape"):
        artifact.load(write(tmp_path, weights=struct.pack("<Q", len(raw)) + raw + WEIGHTS[8 + n:]))


@pytest.mark.parametrize("text", [b"", b"{", b"[]", b"\xff\xfe", b"[" * 100_000, b" " * (2 << 20)])
def test_an_invalid_config_json_is_refused(tmp_path, text):
    with pytest.raises(ArtifactError, match=artifact.CONFIG):
        artifact.load(write(tmp_path, text))


def test_the_shipped_model_still_loads_and_the_bound_is_what_the_docs_say():
    assert_is_the_shipped_model(artifact.load())
    assert MAX_WEIGHTS_BYTES < 18_000_000  # LSTM of hidden size 1024, float32


# ---- fuzzing ---------------------------------------------------------------------------------------------
plausible = st.integers(-8, 70_000) | st.floats(-2.0, 2.0) | st.sampled_from(["lstm", True, 1e9, 2**31])
json_values = plausible | st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
SECTIONS = ("architecture", "normaliser")
config_paths = st.sampled_from([(None, k) for k in CONFIG] + [(s, k) for s in SECTIONS for k in CONFIG[s]])


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    config = json.loads(json.dumps(CONFIG))
    for _ in range(draw(st.integers(1, 3))):
        section, key = draw(config_paths)
        target = config if section is None else config.get(section)
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            target[key] = draw(json_values)
        elif action == "delete":
            target.pop(key, None)
        else:
            target[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return config


@FUZZ
@given(config=mutated_configs())
def test_any_config_mutation_gives_a_clear_error_or_the_right_model(tmp_path, bounded_memory, config):
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
    loaded = load_or_refuse(write(tmp_path / "a", config))
    if loaded is not None:
        assert_is_the_shipped_model(loaded)
        declared = {k: v for k, v in config["architecture"].items() if k != "channel_independent"}
        assert loaded.model.config.to_dict() == declared
        assert loaded.version == config["version"]


@st.composite
def mutated_weights(draw: st.DrawFn) -> bytes:
    data = bytearray(WEIGHTS)
    header_end = 8 + struct.unpack("<Q", WEIGHTS[:8])[0]
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["flip", "flip_header", "truncate", "insert", "length"]))
        if not data and action != "insert":
            break
        if action == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif action == "flip_header":
            data[draw(st.integers(0, min(header_end, len(data)) - 1))] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif action == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


@FUZZ
@given(weights=mutated_weights())
def test_any_weights_mutation_gives_a_clear_error_or_the_right_model(tmp_path, bounded_memory, weights):
    shutil.rmtree(tmp_path / "w", ignore_errors=True)
    loaded = load_or_refuse(write(tmp_path / "w", weights=weights))
    if loaded is not None:
        assert_is_the_shipped_model(loaded)

