"""deploy/prometheus: the alert rules pass promtool, the PrometheusRule carries them, each has a runbook."""

from __future__ import annotations

import re
import subprocess
import urllib.parse

from deploy_support import (
    ALERTS,
    BASE,
    RULES,
    RUNBOOK,
    alert_rules,
    find,
    rendered,
    require_tool,
    rule_groups,
)


def test_prometheusrule_carries_the_same_groups() -> None:
    assert find(rendered(BASE), "PrometheusRule")["spec"]["groups"] == rule_groups()


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", "rules.test.yml"], cwd=RULES.parent,
                          capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section() -> None:
    assert sorted(rule["alert"] for rule in alert_rules()) == sorted(ALERTS)
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    for rule in alert_rules():
        url = urllib.parse.urlparse(rule["annotations"]["runbook_url"])
        assert url.scheme == "https" and url.path.endswith("/deploy/RUNBOOK.md"), url
        assert url.fragment == rule["alert"].lower() and url.fragment in anchors, url
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
