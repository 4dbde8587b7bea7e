"""The serving image's Python steps run on exactly what docker/Dockerfile installs, and its versions agree.

A fresh virtualenv gets what the Dockerfile gives the image's Python: the predilect wheel without
its dependencies and the Python-step package list it installs (``docker/requirements-steps.txt``);
the engine list (TensorRT, OpenAI Triton, cuda-python: CUDA builds) is left out, and pip's
resolution of the step list is checked to hold no CUDA build. Then every backend module the GPU
repository's ``model.py`` shims import is imported there, and a JPEG and a PNG go through
``validate_image``. pip resolves against the configured index with its cache (a few small wheels).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from predilect.build.tensorrt import versions

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
STEPS = ROOT / "docker" / "requirements-steps.txt"
CUDA_DISTRIBUTIONS = re.compile(r"^(nvidia-.*|cuda-.*|cuda|tensorrt.*|torch.*|triton|onnxruntime-gpu|cupy.*)$")
"""Distributions that are (or pull) CUDA builds: none may be resolved for the Python steps."""


def _dockerfile_text() -> str:
    return re.sub(r"\\\n", " ", DOCKERFILE.read_text())


def _run(args: list, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args[:4]}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_dockerfile_installs_the_step_list_and_the_wheel_without_dependencies_when_read() -> None:
    text = _dockerfile_text()
    copied = next(line for line in text.splitlines() if line.startswith("COPY dist/"))
    assert "docker/requirements-steps.txt" in copied and "docker/requirements-engine.txt" in copied
    assert "pip install --no-deps /tmp/predilect/predilect-*.whl" in text
    assert "-r /tmp/predilect/requirements-steps.txt" in text
    steps = [line.split(";")[0].strip() for line in STEPS.read_text().splitlines() if line.strip()[:1].isalnum()]
    assert any(line.startswith("simplejpeg") for line in steps) and any(line.startswith("pillow") for line in steps)


def test_one_tensorrt_series_in_container_gpu_extra_and_gpu_check_when_compared() -> None:
    # The container's tag, its CUDA and TensorRT (versions.py), the gpu extra and make gpu-check agree.
    text = _dockerfile_text()
    tag = re.search(r"^ARG TRITON_TAG=(\S+)$", text, flags=re.M)
    assert tag is not None and tag[1] == f"{versions.SERVING_CONTAINER}-py3"
    assert "versions_cli --libnvinfer --requirement" in text and "versions_cli --bindings" in text
    assert f"tensorrt-cu{versions.SERVING_CUDA_MAJOR}" == versions.TENSORRT_WHEEL
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (tensorrt,) = [r for r in extras["gpu"] if r.startswith("tensorrt")]
    assert tensorrt == versions.served_requirement() == "tensorrt-cu13>=10.13,<10.14"
    makefile = (ROOT / "Makefile").read_text()
    gpu_check = makefile[makefile.index("\ngpu-check:") :].split("\n\n")[0]
    assert "-c constraints-gpu.txt" in gpu_check and "versions_cli --bindings" in gpu_check
    extras_line = re.search(r"^GPU_EXTRAS \?= (\S+)$", makefile, flags=re.M)
    assert extras_line is not None and "gpu" in extras_line[1].split(",")
    constraints = (ROOT / "constraints-gpu.txt").read_text()
    assert not re.search(r"^tensorrt", constraints, flags=re.M), "the gpu extra pins TensorRT, not the constraints"
    # Torch-TensorRT brings TensorRT 11.0: not the serving series, so its plans are refused for a repository.
    (torch_trt,) = [r for r in extras["torchtrt"] if r.startswith("torch-tensorrt")]
    assert torch_trt == "torch-tensorrt>=2.13,<2.14"
    with pytest.raises(versions.TensorRTVersionError, match="not a serving route"):
        versions.check_served_tensorrt("11.0.0.114")
    versions.check_served_tensorrt("10.13.2.6")
    assert versions.bindings_requirement("10.13.2") == "tensorrt-cu13==10.13.2.*"


def _jpeg_and_png(folder: Path) -> list[Path]:
    yy, xx = np.mgrid[:480, :640]
    rgb = np.zeros((480, 640, 3), np.uint8)
    disc = (yy - 240) ** 2 + (xx - 320) ** 2 < 200**2
    rgb[disc] = np.random.default_rng(0).integers(40, 220, (int(disc.sum()), 3))
    paths = []
    for fmt, name in (("JPEG", "fundus.jpg"), ("PNG", "fundus.png")):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt)
        (folder / name).write_bytes(buffer.getvalue())
        paths.append(folder / name)
    return paths


def _shim_modules() -> list[str]:
    shims = sorted((ROOT / "model_repository" / "gpu").glob("*/1/model.py"))
    pattern = re.compile(r"^from (predilect\.[\w.]+) import", re.M)
    modules = sorted({m for shim in shims for m in pattern.findall(shim.read_text())})
    assert len(shims) == 2 and len(modules) == 2, (shims, modules)  # validate_image and postprocess
    return [*modules, "predilect.serving.dali_pipeline"]  # dali.py's own module (DALI is the image's)


CHECK = """
import json, sys
import numpy as np
for name in sys.argv[2].split(","):
    __import__(name)
from predilect.preprocess import PreprocessCfg
from predilect.serving.backends.validate import validate_requests
images = [np.frombuffer(open(p, "rb").read(), np.uint8)[np.newaxis] for p in sys.argv[3:]]
out = validate_requests(images, PreprocessCfg())
print(json.dumps({
    "answers": [type(o).__name__ for o in out],
    "fov": [o.fov_extent.tolist() for o in out if hasattr(o, "fov_extent")],
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx", "onnxruntime", "nvidia", "tensorrt"}),
    "prefix": sys.prefix,
}))
"""


@pytest.mark.timeout(900)  # about 70 s on the 2-core CI machine with pip's cache warm
def test_python_steps_import_and_validate_jpeg_and_png_when_only_dockerfile_packages_installed(tmp_path) -> None:
    env_dir = tmp_path / "image-python"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    report = tmp_path / "resolved.json"
    _run([*pip, "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report), "-r", str(STEPS)])
    resolved = sorted(item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"])
    assert "simplejpeg" in resolved and "pillow" in resolved
    assert [name for name in resolved if CUDA_DISTRIBUTIONS.match(name)] == [], resolved
    _run([*pip, "install", "-q", "-r", str(STEPS)])
    wheels = tmp_path / "wheel"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), ROOT])
    (wheel,) = wheels.glob("predilect-*.whl")
    _run([*pip, "install", "-q", "--no-deps", str(wheel)])
    modules = _shim_modules()
    done = _run([python, "-P", "-c", CHECK, "x", ",".join(modules), *map(str, _jpeg_and_png(tmp_path))], cwd=tmp_path)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["prefix"] == str(env_dir)  # the virtualenv's Python, not this checkout's
    assert seen["answers"] == ["ValidImage", "ValidImage"], seen
    assert all(w > 300 and h > 300 for w, h in (row[0] for row in seen["fov"])), seen["fov"]
    assert seen["heavy"] == []
