"""The alert policy's state machine: held alarm, resolve span, maximum episode, M-of-N, cooldown, ids."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.scoring.alert_policy import AlertPolicy, AlertPolicyConfig, alert_id
from streamer.scoring.state_store import StateStore


def _run(config: AlertPolicyConfig, alarms: list[float], dt: float = 60.0) -> list[tuple[int, str]]:
    store = StateStore(1, columns=AlertPolicy.columns(), initial_devices=1)
    slots, _ = store.slots_for(["d"], np.array([1], np.int16), [None])
    policy = AlertPolicy(config)
    events = []
    for i, s in enumerate(alarms):
        t = policy.update(store, slots, np.array([s]), np.array([dt * i]))
        events += [(i, "firing") for _ in t.opened] + [(i, "recovered") for _ in t.recovered]
        events += [(i, "accepted_new_normal") for _ in t.accepted]
        assert bool(t.firing[0]) == (store.cols["alert_state"][slots[0]] == 1)
    return events


def test_episode_stays_open_while_alarms_come_and_go() -> None:
    """A fault that only makes the alarm intermittent holds one episode: the held alarm averages it."""
    cfg = AlertPolicyConfig(open_threshold=0.5, close_threshold=0.2, resolve_after=3, hold_beta=0.25,
                            cooldown_s=0)
    alarms = [0.1, 0.8] + [0.6, 0.1, 0.1, 0.5] * 5 + [0.0] * 12
    events = _run(cfg, alarms)
    assert [e for _, e in events] == ["firing", "recovered"]
    assert events[0][0] == 1 and events[1][0] > 21  # only after the alarms stopped


def test_resolves_only_after_the_span_back_to_normal() -> None:
    cfg = AlertPolicyConfig(close_threshold=0.3, resolve_after=4, hold_beta=1.0, cooldown_s=0)
    # three quiet readings, then one loud one: not resolved; four quiet: resolved at the fourth
    assert _run(cfg, [0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1]) == [(0, "firing"), (8, "recovered")]


def test_an_episode_that_outlives_the_maximum_accepts_the_new_normal() -> None:
    cfg = AlertPolicyConfig(max_episode_s=600, cooldown_s=0, hold_beta=1.0)
    events = _run(cfg, [0.9] * 15, dt=60.0)
    assert events[:2] == [(0, "firing"), (10, "accepted_new_normal")]


def test_m_of_n_confirmation_ignores_single_blips() -> None:
    cfg = AlertPolicyConfig(confirm_m=2, confirm_n=3, resolve_after=1, hold_beta=1.0, cooldown_s=0)
    assert _run(cfg, [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]) == []
    assert _run(cfg, [0.1, 0.9, 0.1, 0.9, 0.1]) == [(3, "firing"), (4, "recovered")]


def test_cooldown_blocks_reopening_for_a_while() -> None:
    cfg = AlertPolicyConfig(resolve_after=1, hold_beta=1.0, cooldown_s=300)
    alarms = [0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9]
    assert _run(cfg, alarms) == [(0, "firing"), (1, "recovered"), (7, "firing")]


def test_invalid_configuration_says_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="close <= open"):
        AlertPolicyConfig(open_threshold=0.2, close_threshold=0.4)
    with pytest.raises(ConfigError, match="M <= N"):
        AlertPolicyConfig(confirm_m=3, confirm_n=2)
    with pytest.raises(ConfigError, match="resolve_after"):
        AlertPolicyConfig(resolve_after=0)
    with pytest.raises(ConfigError, match="max_episode_s"):
        AlertPolicyConfig(max_episode_s=0)


def test_alert_ids_depend_on_device_and_start_only() -> None:
    """Not on the model: an episode a new model carries on (restart, hot swap) keeps its id."""
    a = alert_id("d", 60.0)
    assert a == alert_id("d", 60.0)
    assert len({a, alert_id("e", 60.0), alert_id("d", 120.0)}) == 3
