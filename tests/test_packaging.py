"""The wheel: one namespace, and a base install that is the thin client only."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the wheel must hold: one module of every part, the data files the code reads when installed.
WHEEL_MEMBERS = (
    "catalog.py",
    "contract.py",
    "quality_calibration.json",
    "catalogs/default.json",
    "kernels/triton_source.py",
    "models/classifier.py",
    "training/train.py",
    "training/recipes/demo.toml",
    "training/phantom/vocabulary.json",
    "build/export.py",
    "serving/server.py",
    "client/__init__.py",
    "client/report.html.j2",
    "client/schemas/journal-record.v2.schema.json",
    "dicom/gateway.py",
    "benchmarks/__init__.py",
    "model_repository/fused_screen/1/model.py",
    "model_repository/gpu/preprocess/1/dali.py",
)
HEAVY = ("torch", "onnx", "onnxruntime", "nvidia-dali", "nvidia-pytriton", "tensorrt", "safetensors", "pillow")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
    )
    (path,) = out.glob("predilect-*.whl")
    return path


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def test_wheel_installs_only_predilect_namespace_when_built(wheel):
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert tops == {"predilect", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for member in WHEEL_MEMBERS:
        assert f"predilect/{member}" in names, member
    assert not [n for n in names if "/results/" in n or n.endswith((".sh", ".ipynb"))]
    assert not [n for n in names if n.startswith("predilect/") and n.count("/predilect/")], "a portion was not merged"


def test_wheel_base_requirements_are_thin_client_when_no_extra(wheel):
    base = [r for r in _requires(wheel) if "extra ==" not in r]
    names = sorted(r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in base)
    assert names == ["numpy", "pydantic", "tritonclient"]
    assert any(r.startswith("tritonclient[grpc]") for r in base)


def test_wheel_heavy_stacks_only_in_extras_when_declared(wheel):
    extras = [r for r in _requires(wheel) if "extra ==" in r]
    assert any(r.startswith("torch==2.13.0") for r in extras)
    for requirement in _requires(wheel):
        if any(requirement.lower().startswith(h) for h in HEAVY):
            assert "extra ==" in requirement, requirement


def test_cli_help_runs_when_only_client_dependencies_importable(tmp_path):
    # A stand-in for the thin install: block the heavy stacks and run the CLI's help.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'onnx', 'onnxruntime', 'nvidia', 'PIL', 'jinja2'}:\n"
        "            raise ImportError(f'{name} is not part of the thin client install')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = (
        "from predilect.cli import main; import predilect.client, sys; "
        "rc = main(['--help']); print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch','onnx','onnxruntime','nvidia','PIL'})))"
    )
    proc = subprocess.run(
        [sys.executable, "-P", "-c", "import json; " + code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
