"""`rnnwatch bench e2e` at a tiny size: every figure is there and plausible (the real run is manual)."""

from __future__ import annotations

import argparse

import pytest

from streamer.tools import bench_e2e

pytestmark = pytest.mark.kafka


def test_bench_e2e_reports_the_rates_their_ratio_and_alert_latency(kafka_bootstrap, kafka_client):
    parser = argparse.ArgumentParser()
    bench_e2e.add_arguments(parser)
    # 20 devices: the paced phase reaches each device's spike (after ~140 readings) within seconds
    args = parser.parse_args(["--readings", "3000", "--devices", "20", "--partitions", "2", "--repeat", "1",
                              "--latency-seconds", "6", "--latency-fraction", "0.3",
                              "--client", kafka_client])
    result = bench_e2e.bench(args, kafka_bootstrap)
    assert result["readings"] == 3000 and result["client"] == kafka_client
    raw, core = result["raw_consume_decode_readings_per_s"], result["scoring_core_readings_per_s"]
    daemon = result["daemon_readings_per_s"]
    assert raw > 0 and core > 0 and daemon > 0
    assert result["ratio"] == pytest.approx(daemon / min(raw, core), rel=1e-2, abs=1e-3)  # rounded
    assert result["ratio_to_raw"] == pytest.approx(daemon / raw, rel=1e-2, abs=1e-3)
    latency = result["latency"]
    assert latency["firing_alerts"] > 0, latency
    assert 0 < latency["p50_s"] <= latency["p99_s"] < 30
