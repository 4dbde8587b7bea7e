"""Container, compose and Kubernetes files: validated statically (no Docker engine or cluster here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from predilect import contract

ROOT = Path(__file__).resolve().parent.parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
KUBERNETES_VERSION = "1.31.0"  # the schema set pinned by kubernetes-validate==1.31.0 in the deploy extra


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_manifest_validates_against_schema_when_strict(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="install predilect[deploy]")
    for doc in _docs(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_rejects_manifest_when_field_misspelt() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="install predilect[deploy]")
    (deployment,) = _docs(ROOT / "deploy" / "k8s" / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_deployment_probes_triton_health_endpoints_when_read() -> None:
    (deployment,) = _docs(ROOT / "deploy" / "k8s" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    shm = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    (service,) = _docs(ROOT / "deploy" / "k8s" / "service.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (hpa,) = _docs(ROOT / "deploy" / "k8s" / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_us_per_request"


def test_compose_reserves_gpu_and_health_checks_ready_when_read() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    triton = compose["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert triton["shm_size"] and "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert (ROOT / "deploy" / triton["build"]["context"] / triton["build"]["dockerfile"]).resolve().is_file()
    master, worker = compose["services"]["locust-master"], compose["services"]["locust-worker"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert master["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "triton:8001" in master["command"]


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_uses_tensorrt_10_9_tag_and_no_serve_extra_when_parsed() -> None:
    # The version story itself (tag, CUDA, TensorRT series, wheel): tests/test_container_packages.py.
    instructions = _dockerfile_instructions(ROOT / "docker" / "Dockerfile")
    known = {"ARG", "FROM", "ENV", "COPY", "SHELL", "RUN", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {name for name, _ in instructions} <= known
    tag = next(value for name, value in instructions if name == "ARG" and value.startswith("TRITON_TAG="))
    year, month = (int(x) for x in tag.split("=")[1].split("-")[0].split("."))
    assert (year, month) >= (25, 3), "NGC tags before 25.03 ship TensorRT < 10.9"
    runs = " ".join(value for name, value in instructions if name == "RUN")
    assert "[serve]" not in runs and "nvidia-pytriton" not in runs
    assert "versions_cli --libnvinfer --requirement" in runs and '"${TENSORRT}"' in runs
    entry = next(value for name, value in instructions if name == "ENTRYPOINT")
    assert "predilect-entrypoint" in entry


def test_entrypoint_passes_bash_syntax_and_shellcheck_when_checked() -> None:
    script = ROOT / "docker" / "entrypoint.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for flag in ("--strict-readiness=true", "--disable-auto-complete-config", "shm-default-byte-size"):
        assert flag in text
    assert "predilect trt-engine --model-repository" in text
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    subprocess.run(["shellcheck", str(script)], check=True)


def test_entrypoint_exits_2_when_repository_lacks_ensemble(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh")],
        env={"MODEL_REPOSITORY": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and contract.ENSEMBLE in done.stderr
