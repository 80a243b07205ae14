"""The operator's loop without a broker: feedback messages, their effects on a device, silences."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import _shipped, _sine_stream

from streamer.feedback.effects import APPLIED, UNKNOWN_ALERT, UNKNOWN_DEVICE, FeedbackEffects
from streamer.feedback.messages import Silence, Verdict, decode_feedback
from streamer.feedback.silencing import apply_silences, silenced_now
from streamer.ingest.dead_letter import DeadLetter, DeadLetterReason, RawRecord
from streamer.scoring.pipeline import ScoringPipeline
from streamer.scoring.readings import AlertEvent, ReadingBatch, ScoredBatch


# ---- messages ------------------------------------------------------------------------------------
def _record(obj: object, key: bytes | None = b"pump-1") -> RawRecord:
    return RawRecord("sensor.alerts.feedback", 0, 7, key, orjson.dumps(obj))


def test_the_three_message_forms_decode() -> None:
    assert decode_feedback(_record({"alert_id": "a", "device_id": "pump-1", "verdict": "false_positive"})) \
        == Verdict("pump-1", "a", "false_positive")
    silence = decode_feedback(_record({"device_id": "pump-1", "silence_until": "2026-12-07T14:00:00Z",
                                       "reason": "maintenance"}))
    assert silence == Silence("pump-1", 1796652000.0, "maintenance")
    lift = decode_feedback(_record({"device_id": "pump-1", "silence_until": None}))
    assert isinstance(lift, Silence) and lift.lifts


@pytest.mark.parametrize(("obj", "key", "reason"), [
    ({"alert_id": "a", "device_id": "pump-1", "verdict": "maybe"}, b"pump-1", DeadLetterReason.WRONG_TYPE),
    ({"alert_id": "a", "device_id": "pump-2", "verdict": "ack"}, b"pump-1", DeadLetterReason.KEY_MISMATCH),
    ({"device_id": "pump-1"}, b"pump-1", DeadLetterReason.MISSING_FIELD),
    ({"device_id": "pump-1", "silence_until": "tomorrow"}, b"pump-1", DeadLetterReason.BAD_TIMESTAMP),
    ({"device_id": "pump-1", "silence_until": True}, b"pump-1", DeadLetterReason.BAD_TIMESTAMP),
    ({"device_id": 7, "verdict": "ack", "alert_id": "a"}, None, DeadLetterReason.WRONG_TYPE),
    ([1, 2], None, DeadLetterReason.NOT_OBJECT),
])
def test_malformed_feedback_is_a_dead_letter_with_its_reason(obj: object, key: bytes | None,
                                                              reason: DeadLetterReason) -> None:
    out = decode_feedback(_record(obj, key))
    assert isinstance(out, DeadLetter) and out.reason is reason, out


@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_to_feedback_or_a_dead_letter(value: bytes, key: bytes | None) -> None:
    out = decode_feedback(RawRecord("fb", 1, 2, key, value))
    assert isinstance(out, Verdict | Silence | DeadLetter)
    if isinstance(out, Silence) and not out.lifts:
        assert math.isfinite(out.until) and out.until > 0


@given(st.text(min_size=1, max_size=40), st.sampled_from(["false_positive", "true_positive", "ack"]),
       st.text(min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_every_valid_verdict_round_trips(device: str, verdict: str, alert: str) -> None:
    out = decode_feedback(_record({"alert_id": alert, "device_id": device, "verdict": verdict},
                                  key=device.encode()))
    assert out == Verdict(device, alert, verdict)  # type: ignore[arg-type]


# ---- effects ---------------------------------------------------------------------------------------
def _feed(pipe: ScoringPipeline, values: np.ndarray, a: int, b: int, device: str = "dev") -> ScoredBatch:
    return pipe.score(ReadingBatch.from_rows([device] * (b - a), 60.0 * np.arange(a, b),
                                             [[v] for v in values[a:b]]))


def _effects(pipe: ScoringPipeline) -> FeedbackEffects:
    return FeedbackEffects(pipe.store, pipe.model_version, calibration=pipe.config.calibration,
                           policy=pipe.config.policy)


def _shifts(big: float) -> np.ndarray:
    """A sine; the same +6 shift at 1600 and 2200 (one hour each); a +`big` one at 2800."""
    values = _sine_stream(3400, 11)
    values[1600:1660] += 6
    values[2200:2260] += 6
    values[2800:2860] += big
    return values


def _firing(events: list[AlertEvent]) -> list[float]:
    return [e.ts / 60 for e in events if e.state == "firing"]


def test_a_false_positive_stops_the_same_pattern_and_a_bigger_fault_still_fires() -> None:
    values = _shifts(18.0)
    pipe = _shipped()
    effects = _effects(pipe)
    opened = [e for e in _feed(pipe, values, 0, 1605).events if e.state == "firing"]
    assert [e.ts / 60 for e in opened] == [1600]
    applied = effects.apply(Verdict("dev", opened[0].alert_id, "false_positive"))
    assert applied.outcome == APPLIED and applied.changed == pipe.store.slot("dev")
    assert [(e.state, e.reason, e.alert_id) for e in applied.events] == \
        [("resolved", "false_positive", opened[0].alert_id)]
    assert not pipe.policy.firing(pipe.store, np.array([applied.changed]))[0]
    # a redelivered verdict is spent
    assert effects.apply(Verdict("dev", opened[0].alert_id, "false_positive")).outcome == UNKNOWN_ALERT
    assert _firing(_feed(pipe, values, 1605, 2700).events) == []  # the same shift at 2200: quiet
    assert _firing(_feed(pipe, values, 2700, 3400).events) == [2800]  # three times bigger: fires


@pytest.mark.slow  # 3,400 readings of one device, one at a time in waves
def test_without_the_verdict_the_same_pattern_fires_again() -> None:
    """The control for the test above: the second shift does fire when nobody said anything."""
    values = _shifts(18.0)
    assert _firing(_feed(_shipped(), values, 0, 2700).events) == [1600, 2200]


@pytest.mark.slow  # 3,400 readings of one device, one at a time in waves
def test_a_stuck_sensor_still_fires_after_a_false_positive_on_a_shift() -> None:
    values = _shifts(0.0)
    values[2800:3000] = values[2800]
    pipe = _shipped()
    opened = [e for e in _feed(pipe, values, 0, 1605).events if e.state == "firing"]
    _effects(pipe).apply(Verdict("dev", opened[0].alert_id, "false_positive"))
    fired = _firing(_feed(pipe, values, 1605, 3400).events)
    assert len(fired) == 1 and 2800 <= fired[0] <= 2830, fired


def test_true_positive_and_ack_change_nothing_and_unknowns_are_told_apart() -> None:
    values = _shifts(0.0)
    pipe = _shipped()
    effects = _effects(pipe)
    opened = [e for e in _feed(pipe, values, 0, 1605).events if e.state == "firing"]
    slot = pipe.store.slot("dev")
    before = pipe.store.cols["cal_var"][slot].copy()
    for verdict in ("true_positive", "ack"):
        applied = effects.apply(Verdict("dev", opened[0].alert_id, verdict))  # type: ignore[arg-type]
        assert (applied.outcome, applied.changed, applied.events) == (APPLIED, None, [])
    assert (pipe.store.cols["cal_var"][slot] == before).all()
    assert pipe.policy.firing(pipe.store, np.array([slot]))[0]
    assert effects.apply(Verdict("dev", "not-an-alert", "false_positive")).outcome == UNKNOWN_ALERT
    assert effects.apply(Verdict("other", opened[0].alert_id, "ack")).outcome == UNKNOWN_DEVICE
    assert effects.apply(Silence("other", 1e9, "")).outcome == UNKNOWN_DEVICE


# ---- silences --------------------------------------------------------------------------------------
def _silenced_feed(pipe: ScoringPipeline, values: np.ndarray, a: int, b: int) -> ScoredBatch:
    batch = ReadingBatch.from_rows(["dev"] * (b - a), 60.0 * np.arange(a, b), [[v] for v in values[a:b]])
    return apply_silences(pipe.store, batch, pipe.score(batch), pipe.config.policy, pipe.model_version)


def test_a_silence_withholds_episodes_until_it_ends_and_not_after() -> None:
    values = _sine_stream(3400, 11)
    values[1600:1660] += 6  # inside the silence, over before it ends
    values[2150:2300] += 6  # starts inside, outlasts it: announced when the silence ends (2200)
    values[2800:2860] += 6  # after: fires as usual
    pipe = _shipped()
    effects = _effects(pipe)
    _silenced_feed(pipe, values, 0, 1500)
    assert effects.apply(Silence("dev", 60.0 * 2200 - 0.5, "maintenance")).outcome == APPLIED
    assert silenced_now(pipe.store, 60.0 * 1500) == 1 and silenced_now(pipe.store, 60.0 * 2200) == 0
    during = _silenced_feed(pipe, values, 1500, 2200)
    assert _firing(during.events) == [] and during.silenced == 2  # the episodes at 1600 and 2150
    assert not during.alerting.any()
    assert pipe.policy.firing(pipe.store, np.array([pipe.store.slot("dev")]))[0]  # scored and held as usual
    after = _silenced_feed(pipe, values, 2200, 3400)
    assert _firing(after.events) == [2200, 2800]
    announced = after.events[0]  # the episode that opened inside the silence, under its own id and start
    assert 2150 <= announced.started_at / 60 < 2200 and announced.ts / 60 == 2200
    assert int(pipe.store.cols["silence_until"][pipe.store.slot("dev")]) == 0  # over


@pytest.mark.slow  # 3,400 readings of one device, one at a time in waves
def test_a_lifted_silence_lets_the_next_episode_fire() -> None:
    values = _sine_stream(2000, 11)
    values[1600:1660] += 6
    pipe = _shipped()
    effects = _effects(pipe)
    _silenced_feed(pipe, values, 0, 1500)
    effects.apply(Silence("dev", 60.0 * 5000, "maintenance"))
    effects.apply(Silence("dev", math.nan, ""))
    assert _firing(_silenced_feed(pipe, values, 1500, 2000).events) == [1600]


def test_the_silence_survives_a_checkpoint_round_trip() -> None:
    from streamer.checkpoint.state_codec import decode_state, encode_states, install_states

    pipe = _shipped()
    _silenced_feed(pipe, _sine_stream(200, 3), 0, 200)
    _effects(pipe).apply(Silence("dev", 1.9e9 + 0.25, "x"))
    slot = np.array([pipe.store.slot("dev")])
    record = decode_state(encode_states(pipe.store, slot, pipe.model_version)[0])
    fresh = _shipped()
    install_states(fresh.store, [record])
    assert int(fresh.store.cols["silence_until"][fresh.store.slot("dev")]) == 1_900_000_001
