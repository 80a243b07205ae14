"""deploy/k8s: the overlays render as kustomize renders them, and every manifest validates.

kubernetes-validate has no schemas for CRDs (ServiceMonitor, PrometheusRule, ScaledObject,
TriggerAuthentication), so those get the minimal schemas of `CRD_SCHEMAS`: the fields we rely on, with
their types; the HPA behaviour inside the ScaledObject is validated as a real autoscaling/v2 object.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from deploy_support import BASE, K8S_VERSION, OVERLAYS, Doc, by_key, find, kustomize_command, render, rendered


@OVERLAYS
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


@OVERLAYS
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
