"""The alert policy's state machine: hysteresis, M-of-N confirmation, cooldown, deterministic ids."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.scoring.alert_policy import AlertPolicy, AlertPolicyConfig, alert_id
from streamer.scoring.state_store import StateStore


def _run(config: AlertPolicyConfig, scores: list[float], dt: float = 60.0) -> list[tuple[int, str]]:
    store = StateStore(1, columns=AlertPolicy.columns(), initial_devices=1)
    slots, _ = store.slots_for(["d"], np.array([1], np.int16), [None])
    policy = AlertPolicy(config)
    events = []
    for i, s in enumerate(scores):
        t = policy.update(store, slots, np.array([s]), np.array([dt * i]))
        events += [(i, "firing") for _ in t.opened] + [(i, "resolved") for _ in t.closed]
        assert bool(t.firing[0]) == (store.cols["alert_state"][slots[0]] == 1)
    return events


def test_hysteresis_keeps_one_episode_while_score_hovers() -> None:
    cfg = AlertPolicyConfig(open_threshold=0.5, close_threshold=0.3, close_after=2, cooldown_s=0)
    scores = [0.1, 0.6, 0.45, 0.55, 0.4, 0.35, 0.2, 0.1, 0.1]
    assert _run(cfg, scores) == [(1, "firing"), (7, "resolved")]


def test_m_of_n_confirmation_ignores_single_blips() -> None:
    cfg = AlertPolicyConfig(confirm_m=2, confirm_n=3, close_after=1, cooldown_s=0)
    assert _run(cfg, [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]) == []
    assert _run(cfg, [0.1, 0.9, 0.1, 0.9, 0.1]) == [(3, "firing"), (4, "resolved")]


def test_cooldown_blocks_reopening_for_a_while() -> None:
    cfg = AlertPolicyConfig(close_after=1, cooldown_s=300)
    scores = [0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9]
    assert _run(cfg, scores) == [(0, "firing"), (1, "resolved"), (7, "firing")]


def test_invalid_configuration_says_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="close <= open"):
        AlertPolicyConfig(open_threshold=0.2, close_threshold=0.4)
    with pytest.raises(ConfigError, match="M <= N"):
        AlertPolicyConfig(confirm_m=3, confirm_n=2)


def test_alert_ids_depend_on_device_start_and_model() -> None:
    a = alert_id("d", 60.0, "v1")
    assert a == alert_id("d", 60.0, "v1")
    assert len({a, alert_id("e", 60.0, "v1"), alert_id("d", 120.0, "v1"), alert_id("d", 60.0, "v2")}) == 4
