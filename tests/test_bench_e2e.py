"""`rnnwatch bench e2e` at a tiny size: every figure is there and plausible (the real run is manual)."""

from __future__ import annotations

import argparse

import pytest

from streamer.tools import bench_e2e

pytestmark = pytest.mark.kafka


def test_bench_e2e_reports_both_rates_their_ratio_and_alert_latency(kafka_bootstrap):
    parser = argparse.ArgumentParser()
    bench_e2e.add_arguments(parser)
    # 20 devices: the paced phase reaches each device's spike (after ~140 readings) within seconds
    args = parser.parse_args(["--readings", "3000", "--devices", "20", "--partitions", "2", "--repeat", "1",
                              "--latency-seconds", "6", "--latency-fraction", "0.3"])
    result = bench_e2e.bench(args, kafka_bootstrap)
    assert result["readings"] == 3000
    assert result["raw_consume_decode_readings_per_s"] > 0 and result["daemon_readings_per_s"] > 0
    rates = result["daemon_readings_per_s"] / result["raw_consume_decode_readings_per_s"]
    assert result["ratio"] == pytest.approx(rates, rel=1e-2, abs=1e-3)  # ratio is rounded
    latency = result["latency"]
    assert latency["firing_alerts"] > 0, latency
    assert 0 < latency["p50_s"] <= latency["p99_s"] < 30
