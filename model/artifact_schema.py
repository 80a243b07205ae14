"""What a valid model artifact looks like, checked before anything is allocated.

An artifact may come from anywhere (`RNNWATCH_MODEL`), so nothing in it is trusted until checked:

- `config.json`: at most `MAX_CONFIG_BYTES`, a JSON object; every field of `architecture` present
  (but `channel_independent`, which older artifacts carry and which must then be true) and of
  `normaliser` (its fields may be left out: their defaults apply), of its type and in its range
  (`ARCHITECTURE_RANGES`, `NORMALISER_RANGES`); unknown fields there are refused (a typo must not
  fall back to a default silently). A hidden size of 1e9 is refused here, before a GRU of that size
  is built.
- `model.safetensors`: the header (8-byte length, then JSON of at most `MAX_HEADER_BYTES`) is read on
  its own and must name exactly the tensors the config implies (`expected_tensors`), each float32 of
  the implied shape, their byte ranges tiling the data without gap or overlap, and the file exactly
  as long as that. Only then are the tensors read (by safetensors: never unpickled).

So the most a valid-looking artifact can make the loader allocate is the largest model the ranges
allow: an LSTM of hidden size `MAX_HIDDEN_SIZE`, `MAX_WEIGHTS_BYTES` (about 17 MB) of weights.
Every refusal is an `ArtifactError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.forecaster import ForecasterConfig
from model.normaliser import NormaliserConfig


class ArtifactError(ValueError):
    """The artifact directory is missing, incomplete, of another format, or out of the allowed ranges."""


MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 16  # the shipped model's header is 512 bytes
MAX_HIDDEN_SIZE = 1024
INPUT_FEATURES = 2  # what the pipeline feeds (model.normaliser.model_input): [clipped z, first flag]
MAX_VERSION_CHARS = 128
_GATES = {"gru": 3, "lstm": 4}

@dataclass(frozen=True)
class Choice:
    """One of a few JSON values (compared with their JSON type: true is not 1)."""

    values: tuple[Any, ...]

    def check(self, value: Any) -> str | None:
        if any(type(value) is type(v) and value == v for v in self.values):
            return None
        return f"allowed: {', '.join(json.dumps(v) for v in self.values)}"


@dataclass(frozen=True)
class Number:
    """A JSON number in [low, high] ((low, high] when `low_open`); `integer`: no fraction, no float."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def check(self, value: Any) -> str | None:
        kinds = (int,) if self.integer else (int, float)
        ok = type(value) in kinds and self.low <= value <= self.high  # no NaN, no inf, no 10**400
        if ok and not (self.low_open and value == self.low):
            return None
        what = "an integer" if self.integer else "a number"
        return f"allowed: {what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


ARCHITECTURE_RANGES: dict[str, Choice | Number] = {
    "cell": Choice(("gru", "lstm")),
    "hidden_size": Number(1, MAX_HIDDEN_SIZE, integer=True),
    "input_features": Number(INPUT_FEATURES, INPUT_FEATURES, integer=True),
    "channel_independent": Choice((True,)),  # legacy: accepted when true, not stored (ForecasterConfig)
}
ARCHITECTURE_REQUIRED = ("cell", "hidden_size", "input_features")
NORMALISER_RANGES: dict[str, Choice | Number] = {
    "alpha": Number(0.0, 1.0, low_open=True),
    "rel_floor": Number(0.0, 1.0),
    "abs_floor": Number(0.0, 1e6, low_open=True),
    "day_weight": Number(0.0, 1.0, low_open=True),
    "level_beta": Number(0.0, 1.0, low_open=True),
    "settle": Number(0, 1_000_000, integer=True),
}


def expected_tensors(config: ForecasterConfig) -> dict[str, tuple[int, ...]]:
    """The weights a forecaster of this config has: name -> shape (all float32)."""
    h, f = config.hidden_size, config.input_features
    g = _GATES[config.cell] * h
    return {"rnn.weight_ih_l0": (g, f), "rnn.weight_hh_l0": (g, h), "rnn.bias_ih_l0": (g,),
            "rnn.bias_hh_l0": (g,), "head.weight": (1, h), "head.bias": (1,)}


_LARGEST = ForecasterConfig("lstm", MAX_HIDDEN_SIZE)
MAX_WEIGHTS_BYTES = 4 * sum(map(math.prod, expected_tensors(_LARGEST).values()))


# ---- config.json ----------------------------------------------------------------------------------
def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict, refusing a file too big, not UTF-8 JSON, or not an object."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ArtifactError(f"{path}: {size} bytes, more than the {MAX_CONFIG_BYTES} a config may take")
        config = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read it as JSON ({exc})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: JSON nested too deeply") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def check_config(config: Mapping[str, Any], path: Path, fmt: str
                 ) -> tuple[ForecasterConfig, NormaliserConfig]:
    """The architecture and normaliser of a config.json, every field checked (ArtifactError otherwise)."""
    if config.get("format") != fmt:
        raise ArtifactError(f"{path}: format {str(config.get('format'))[:64]!r}, expected {fmt!r}")
    version = config.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_CHARS:
        raise ArtifactError(f"{path}: version must be a string of 1 to {MAX_VERSION_CHARS} characters")
    for name in ("training", "metrics"):
        if not isinstance(config.get(name, {}), dict):
            raise ArtifactError(f"{path}: {name} must be a JSON object")
    arch = _section(config, "architecture", path, ARCHITECTURE_RANGES, required=ARCHITECTURE_REQUIRED)
    norm = _section(config, "normaliser", path, NORMALISER_RANGES, required=())
    return ForecasterConfig(**arch), NormaliserConfig(**norm)


def _section(config: Mapping[str, Any], name: str, path: Path, ranges: Mapping[str, Choice | Number], *,
             required: Iterable[str]) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ArtifactError(f"{path}: {name} must be a JSON object with {', '.join(ranges)}")
    unknown = sorted(set(section) - set(ranges))
    if unknown:
        raise ArtifactError(f"{path}: {name} has unknown fields {unknown[:5]}; allowed: {', '.join(ranges)}")
    missing = [key for key in required if key not in section]
    if missing:
        raise ArtifactError(f"{path}: {name} lacks {', '.join(missing)}")
    out = {}
    for key, allowed in ranges.items():
        if key in section:
            problem = allowed.check(section[key])
            if problem is not None:
                raise ArtifactError(f"{path}: {name}.{key} is {_shown(section[key])}; {problem}")
            out[key] = section[key]
    return out


def _shown(value: Any) -> str:
    return repr(value)[:40]


# ---- model.safetensors ----------------------------------------------------------------------------
def check_weights(path: Path, config: ForecasterConfig) -> None:
    """The safetensors file holds exactly the float32 tensors `config` implies (header read alone)."""
    expected = expected_tensors(config)
    data_bytes = 4 * sum(math.prod(shape) for shape in expected.values())
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= MAX_HEADER_BYTES:
                raise ArtifactError(f"{path}: not a safetensors file of this model (header length {n}; "
                                    f"expected 2 to {MAX_HEADER_BYTES} bytes)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read the safetensors header ({exc})") from None
    if size != 8 + n + data_bytes:
        raise ArtifactError(f"{path}: {size} bytes, but a {config.cell} of hidden size {config.hidden_size} "
                            f"takes {8 + n + data_bytes} (truncated, padded or another model)")
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: safetensors header is not a JSON object")
    _check_tensors(path, header, expected, data_bytes)


def _check_tensors(path: Path, header: dict[str, Any], expected: Mapping[str, tuple[int, ...]],
                   data_bytes: int) -> None:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ArtifactError(f"{path}: safetensors __metadata__ must map names to strings")
    names = set(header) - {"__metadata__"}
    if names != set(expected):
        raise ArtifactError(f"{path}: tensors {sorted(names)[:8]} do not fit the architecture of "
                            f"config.json, which needs {sorted(expected)}")
    spans = []
    for name, shape in expected.items():
        info = header[name]
        if not isinstance(info, dict) or info.get("dtype") != "F32" or info.get("shape") != list(shape):
            raise ArtifactError(f"{path}: tensor {name} is {_shown(info)}; expected F32 of shape "
                                f"{list(shape)}")
        offsets = info.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or offsets[1] - offsets[0] != 4 * math.prod(shape)):
            raise ArtifactError(f"{path}: tensor {name} has data_offsets {_shown(offsets)}, expected "
                                f"[start, start + {4 * math.prod(shape)}]")
        spans.append((offsets[0], offsets[1]))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise ArtifactError(f"{path}: tensor data overlaps or leaves a gap at byte {position}")
        position = end
    if position != data_bytes:
        raise ArtifactError(f"{path}: tensor data ends at byte {position}, the file holds {data_bytes}")

