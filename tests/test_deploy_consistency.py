"""deploy/k8s: the manifests agree with each other, with the image and with the daemon's Settings."""

from __future__ import annotations

import re
from pathlib import Path

from deploy_support import BASE, GPU, config, dockerfile, dockerfile_uid, find, pod_spec, rendered

from streamer.service.settings import ENVIRONMENT, Settings

# every variable Settings reads, except the password: it comes from the mounted Secret's file
SETTINGS_ENV = tuple(name for name in ENVIRONMENT if name != "KAFKA_SASL_PASSWORD")


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
    assert settings.metrics_port == Settings().metrics_port  # the port the image EXPOSEs
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


def test_the_init_container_seeds_the_kernel_cache_the_image_built() -> None:
    """The image compiles the kernel into a cache (Dockerfile); the init container, same image, copies it
    into the emptyDir the daemon's NUMBA_CACHE_DIR names, as locked down as the daemon itself."""
    built = re.search(r"NUMBA_CACHE_DIR=(\S+) \S+ -m streamer\.scoring\.kernel\.prebuild", dockerfile())
    assert built, "the Dockerfile prebuilds the kernel into a cache directory"
    for overlay in (BASE, GPU):
        pod = pod_spec(rendered(overlay))
        (init,) = pod["initContainers"]
        (container,) = pod["containers"]
        assert init["image"] == container["image"]
        cache_dir = {e["name"]: e["value"] for e in container["env"]}["NUMBA_CACHE_DIR"]
        assert init["command"] == ["cp", "-R", f"{built[1]}/.", f"{cache_dir}/"]
        daemon_mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        mounts = [(m["name"], m["mountPath"]) for m in init["volumeMounts"]]
        assert mounts == [(daemon_mounts[cache_dir], cache_dir)]
        assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[daemon_mounts[cache_dir]]
        assert init["securityContext"] == container["securityContext"]
        assert {"cpu", "memory"} <= set(init["resources"]["requests"])
        assert "memory" in init["resources"]["limits"]


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
