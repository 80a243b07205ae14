"""deploy/grafana: the dashboard has the panels operators look for, all on a datasource variable."""

from __future__ import annotations

from deploy_support import dashboard, dashboard_exprs


def test_dashboard_has_the_panels_and_a_datasource_variable() -> None:
    dash = dashboard()
    (variable,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    text = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "consumer lag", "scoring latency", "end-to-end lag", "alerts",
                  "dead letters", "devices tracked", "state memory", "restore progress", "model version"):
        assert topic in text, f"no panel for {topic}"
    exprs = " ".join(dashboard_exprs())
    for needle in ("rnnwatch_readings_consumed_total", "rnnwatch_readings_scored_total",
                   "histogram_quantile(0.99, sum by (le) (rate(rnnwatch_scoring_latency_seconds_bucket",
                   "histogram_quantile(0.5, sum by (le) (rate(rnnwatch_end_to_end_lag_seconds_bucket",
                   "rnnwatch_model_info"):
        assert needle in exprs
