"""TensorRT build path without TensorRT: plugin signatures, PTX calling convention, precision, gate, sidecar."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from serving_fixtures import build_attention_onnx

from predilect import contract
from predilect.build.export import onnx_probabilities
from predilect.build.tensorrt import plugin
from predilect.build.tensorrt.accuracy import AccuracyGateError, check_accuracy
from predilect.build.tensorrt.onnx_rewrite import OP_TYPE, find_attention, rewrite
from predilect.build.tensorrt.precision import PRECISIONS, cast_float, onnx_precision, quantize, served_onnx
from predilect.build.tensorrt.sidecar import EngineSidecar, TensorShapes, engine_key, read_sidecar, write_sidecar
from predilect.catalog import DEFAULT_CATALOG

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return build_attention_onnx(tmp_path_factory.mktemp("attention"))


def _pixels(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


# ----------------------------------------------------------------------------- plugin module
class _TensorDesc:  # stand-ins for tensorrt.plugin's classes: the boundary we do not own here
    pass


class _AutoTuneCombination:
    pass


class _KernelLaunchParams:
    pass


class _SymExprs:
    pass


def _stub_trtp() -> tuple[types.SimpleNamespace, dict[str, object]]:
    registered: dict[str, object] = {}

    def recorder(kind: str):
        def decorator_factory(plugin_id: str):
            def decorator(fn):
                registered[kind] = fn
                return fn

            return decorator

        return decorator_factory

    trtp = types.SimpleNamespace(
        TensorDesc=_TensorDesc,
        AutoTuneCombination=_AutoTuneCombination,
        KernelLaunchParams=_KernelLaunchParams,
        SymExprs=_SymExprs,
        register=recorder("register"),
        autotune=recorder("autotune"),
        aot_impl=recorder("aot_impl"),
    )
    return trtp, registered


def test_plugin_signatures_are_real_classes_when_defined() -> None:
    # tensorrt.plugin checks issubclass(param.annotation, TensorDesc): strings would raise TypeError.
    trtp, registered = _stub_trtp()
    plugin._define(trtp)
    source_lines = Path(plugin.__file__).read_text().splitlines()
    assert "from __future__ import annotations" not in [line.strip() for line in source_lines]
    for kind in ("register", "autotune", "aot_impl"):
        parameters = inspect.signature(registered[kind]).parameters
        tensors = [p for p in parameters.values() if p.name in ("tokens", "sites", "weight", "bias")]
        assert len(tensors) == 4 and all(issubclass(p.annotation, _TensorDesc) for p in tensors)
        assert parameters["sites_per_disease"].annotation is int
    assert inspect.signature(registered["register"]).return_annotation is _TensorDesc


def test_dtype_map_covers_tensorrt_enum_names_when_looked_up() -> None:
    assert {plugin.TRITON_DTYPES[name] for name in ("FLOAT", "HALF", "BF16")} == {"fp32", "fp16", "bf16"}
    with pytest.raises(ValueError, match="unsupported dtype"):
        plugin.compile_kernel("INT8", 3, 1)


@pytest.mark.parametrize(
    "version,ok", [("10.8.0.43", False), ("10.9.0.34", True), ("10.13.3.9", True), ("11.0.0", True), ("9.3", False)]
)
def test_check_tensorrt_version_requires_10_9_when_given(version: str, ok: bool) -> None:
    if ok:
        plugin.check_tensorrt_version(version)
    else:
        with pytest.raises(plugin.TensorRTUnavailableError, match=r">= 10\.9"):
            plugin.check_tensorrt_version(version)


def test_launch_scalars_match_kernel_runtime_arguments_when_counted() -> None:
    from predilect.kernels.triton_source import predilection_attention_kernel

    runtime = [
        name
        for name in predilection_attention_kernel.arg_names
        if name in plugin.SCALAR_NAMES or name.endswith("_ptr") and name != "attn_ptr"
    ]
    assert runtime == ["tokens_ptr", "sites_ptr", "weight_ptr", "bias_ptr", *plugin.SCALAR_NAMES, "logits_ptr"]
    # N, D, C, K, then the strides of contiguous tokens (B,N,D), sites (C,K,D), weight (C,D), logits (B,C)
    assert plugin.launch_scalars(197, 48, 5, 3) == (197, 48, 5, 3, 197 * 48, 48, 3 * 48, 48, 48, 5)


def test_compiled_ptx_declares_exactly_tensorrt_parameters_when_compiled_for_sm90() -> None:
    # A fresh interpreter: other tests in this session may have set TRITON_INTERPRET=1.
    script = (
        "from triton.backends.compiler import GPUTarget\n"
        "from predilect.build.tensorrt.plugin import compile_kernel, ptx_entry_params\n"
        "for dtype in ('FLOAT', 'HALF', 'BF16'):\n"
        "    k = compile_kernel(dtype, 4, 1, target=GPUTarget('cuda', 90, 32), ptx_version=87)\n"
        "    version = [l for l in k.ptx.splitlines() if l.startswith('.version')][0]\n"
        "    print(dtype, version.split()[1], k.shared_mem, ' '.join(t for t, _ in ptx_entry_params(k.ptx, k.name)))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [line[0] for line in lines] == ["FLOAT", "HALF", "BF16"]
    for _, version, shared, *params in lines:
        assert version == "8.7"  # loadable by a CUDA 12.8 driver, not Triton's newer default
        assert tuple(params) == plugin.LAUNCH_PARAM_TYPES and len(params) == 15
        assert int(shared) <= 48 * 1024


def test_compile_kernel_stamps_ptx_both_driver_and_ptxas_accept_when_version_not_given() -> None:
    # A CUDA 13 driver (PTX 9.0) with Triton's bundled 12.8 ptxas (8.7) failed on an H200 before the cap.
    script = (
        "from triton.backends.compiler import GPUTarget\n"
        "from predilect.build.tensorrt.plugin import aot_ptx_version, compile_kernel, ptxas_ptx_version\n"
        "k = compile_kernel('HALF', 4, 1, target=GPUTarget('cuda', 90, 32))\n"
        "version = [l for l in k.ptx.splitlines() if l.startswith('.version')][0].split()[1]\n"
        "print(version, ptxas_ptx_version(90), aot_ptx_version(90))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    version, ptxas, chosen = done.stdout.split()
    assert int(ptxas) >= 80 and int(chosen) <= int(ptxas)
    assert version == f"{int(chosen) // 10}.{int(chosen) % 10}"


def test_trim_ptx_params_refuses_when_kernel_reads_dropped_parameter() -> None:
    ptx = (
        ".version 8.7\n.visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n"
        "\tld.param.u64 %rd1, [k_param_1];\n}\n"
    )
    with pytest.raises(ValueError, match="k_param_1"):
        plugin.trim_ptx_params(ptx, "k", 1)
    unused = ptx.replace("[k_param_1]", "[k_param_0]")
    assert [t for t, _ in plugin.ptx_entry_params(plugin.trim_ptx_params(unused, "k", 1), "k")] == [".u64"]


# ----------------------------------------------------------------------------- precision from ONNX types
def test_fp16_cast_keeps_fp32_io_and_parity_when_run_under_onnxruntime(exported, tmp_path) -> None:
    model = cast_float(rewrite(onnx.load(str(exported))), "fp16")
    assert onnx_precision(model) == "fp16"
    types_io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert types_io == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    onnx.save(model, str(tmp_path / "fp16.onnx"))
    diff = np.abs(onnx_probabilities(tmp_path / "fp16.onnx", _pixels()) - onnx_probabilities(exported, _pixels()))
    assert diff.max() <= 5e-3


def test_bf16_cast_is_valid_onnx_with_plugin_node_when_converted(exported) -> None:
    model = cast_float(rewrite(onnx.load(str(exported))), "bf16")  # checker with full type check inside
    assert onnx_precision(model) == "bf16"
    assert [n.op_type for n in model.graph.node].count(OP_TYPE) == 1


def test_int8_quantisation_leaves_attention_head_for_plugin_when_calibrated(exported, tmp_path) -> None:
    model = onnx.load(str(exported))
    head = [node.name for node in find_attention(gs.import_onnx(model)).nodes]
    quantized = quantize(model, _pixels(16, seed=1), "int8", exclude_nodes=head)
    assert onnx_precision(quantized) == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    assert [n.op_type for n in rewrite(quantized).graph.node].count(OP_TYPE) == 1
    onnx.save(quantized, str(tmp_path / "int8.onnx"))
    diff = np.abs(onnx_probabilities(tmp_path / "int8.onnx", _pixels()) - onnx_probabilities(exported, _pixels()))
    assert diff.max() <= 5e-2


def test_onnx_precision_reads_fp32_when_export_unchanged(exported) -> None:
    assert onnx_precision(onnx.load(str(exported))) == "fp32"


# ----------------------------------------------------------------------------- gate and sidecar
def test_accuracy_gate_passes_when_within_tolerance_and_raises_when_past() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 3)) < 0.5).astype(np.float32)
    reference = np.clip(labels * 0.6 + rng.random((40, 3)) * 0.4, 0, 1)
    report = check_accuracy(reference, reference + 1e-5, precision="fp32", labels=labels)
    assert report.passed and report.max_abs_dp <= 1e-4 and abs(report.auroc_change) < 1e-9
    with pytest.raises(AccuracyGateError, match="max \\|dp\\|"):
        check_accuracy(reference, reference[::-1], precision="fp16", labels=labels)
    with pytest.raises(AccuracyGateError):
        check_accuracy(reference, np.full_like(reference, np.nan), precision="int8")


def test_sidecar_round_trips_and_keys_engine_by_gpu_and_tensorrt_when_written(tmp_path) -> None:
    shapes = TensorShapes(contract.PIXELS, "fp32", (1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))
    sidecar = EngineSidecar(
        tensorrt_version="10.9.0.34",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        frontend="onnx",
        onnx_sha256="ab" * 32,
        catalog_digest=DEFAULT_CATALOG.digest(),
        model_name="m",
        model_version="1+x",
        plugin=True,
        inputs=(shapes,),
        outputs=(TensorShapes(contract.LOGITS, "fp32", (1, 28), (8, 28), (16, 28)),),
        gate={"passed": True},
    )
    write_sidecar(tmp_path / "model.plan", sidecar)
    assert read_sidecar(tmp_path / "model.plan") == sidecar
    assert sidecar.key == engine_key("9.0", "10.9.0.34") == "sm90-trt10.9.0.34" and sidecar.max_batch == 16


def test_reference_probabilities_match_export_parity_path_when_same_onnx(exported) -> None:
    from predilect.build.tensorrt.engine import reference_probabilities

    np.testing.assert_allclose(
        reference_probabilities(exported, _pixels()), onnx_probabilities(exported, _pixels()), atol=1e-6
    )


def test_engine_module_runs_without_torch_up_to_tensorrt_when_torch_blocked(exported) -> None:
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from predilect.build.tensorrt.engine import engine_logits, reference_probabilities\n"
        "from predilect.build.tensorrt.repository_engine import ensure_engine\n"
        "from predilect.build.tensorrt.gate_set import manifest_gate_set\n"
        "import predilect.serving.gpu_profile, predilect.serving.backends.validate\n"
        "import predilect.build.tensorrt.engine_cli, predilect.kernels.triton_source\n"
        "from predilect.build.tensorrt.plugin import TensorRTUnavailableError\n"
        "try:\n    engine_logits(b'', np.zeros((1, 3, 8, 8), np.float32))\n"
        "except TensorRTUnavailableError as e:\n    print('unavailable:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    if "unavailable" not in done.stdout:  # TensorRT present: the call got further (and needs a GPU)
        pytest.skip("tensorrt is installed here")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("use_plugin", [True, False])
def test_tensorrt_onnx_serves_logits_only_when_export_has_attention(exported, use_plugin) -> None:
    from predilect.build.tensorrt.engine import tensorrt_onnx
    from predilect.contract import ATTENTION, LOGITS

    model = onnx.load(str(exported))
    assert [o.name for o in model.graph.output] == [LOGITS, ATTENTION]
    parsed = tensorrt_onnx(model, use_plugin=use_plugin)
    assert [o.name for o in parsed.graph.output] == [LOGITS]
    if not use_plugin:  # the plugin form names a custom op the checker cannot see
        onnx.checker.check_model(parsed)


# ----------------------------------------------------------------------------- the rewrite, once per precision
@pytest.mark.parametrize("use_plugin", [True, False], ids=["plugin", "no-plugin"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_network_onnx_has_attention_rewritten_once_when_stored_in_each_precision(
    exported, precision: str, use_plugin: bool
) -> None:
    # What a GPU repository stores for each precision, then what the engine build parses from it.
    from predilect.build.tensorrt.engine import EngineCfg, network_onnx

    stored = served_onnx(onnx.load(str(exported)), precision, calibration_pixels=_pixels(16, seed=1))
    assert onnx_precision(stored) == precision
    parsed = network_onnx(onnx.load_from_string(stored.SerializeToString()), EngineCfg(use_plugin=use_plugin))
    ops = [n.op_type for n in parsed.graph.node]
    assert (ops.count(OP_TYPE), ops.count("Softmax")) == ((1, 0) if use_plugin else (0, 1))
    assert [o.name for o in parsed.graph.output] == [contract.LOGITS]
    if use_plugin:
        (node,) = [n for n in parsed.graph.node if n.op_type == OP_TYPE]
        assert {a.name for a in node.attribute} >= {"plugin_namespace", "aot"} and not parsed.functions
    else:
        onnx.checker.check_model(parsed, full_check=True)


def test_assembled_fp16_repository_reaches_tensorrt_with_one_plugin_node_when_read_back(exported, tmp_path) -> None:
    # The repository as the container entrypoint reads it (classifier/1/model.onnx + engine_build.json).
    from predilect.build.tensorrt.engine import network_onnx
    from predilect.build.tensorrt.repository_engine import engine_cfg
    from predilect.serving.gpu_profile import GpuServingOptions, assemble_gpu

    repo = assemble_gpu(exported, tmp_path / "repo", GpuServingOptions(precision="fp16"))
    stored = onnx.load(str(repo / contract.CLASSIFIER_MODEL / contract.TRITON_VERSION / contract.ONNX_FILENAME))
    parsed = network_onnx(stored, engine_cfg(repo))
    assert [n.op_type for n in parsed.graph.node].count(OP_TYPE) == 1
