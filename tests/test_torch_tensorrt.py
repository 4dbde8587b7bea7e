"""The Torch-TensorRT route: torch.export with the custom op on CPU, the plugin glue, the CLI; engines on a GPU."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Tuple  # noqa: UP035 - the form tensorrt.plugin's validator reads

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from predilect.build.export import export_onnx, onnx_probabilities
from predilect.build.tensorrt import plugin
from predilect.build.tensorrt.engine import EngineCfg, GateData
from predilect.build.tensorrt.engine_cli import main as trt_engine_main
from predilect.build.tensorrt.sidecar import TORCH_LOWERINGS, TORCH_PRECISIONS, EngineSidecar, read_sidecar
from predilect.build.tensorrt.torch_engine import (
    ReferenceMismatchError,
    TorchBuild,
    TorchTensorRTUnavailableError,
    build_torch_engine,
    check_reference,
    compile_options,
    profile_shapes,
)
from predilect.build.tensorrt.torch_export import (
    TORCH_DTYPES,
    ExportError,
    export_fundus,
    op_nodes,
)
from predilect.catalog import DEFAULT_CATALOG
from predilect.cli import EXIT_UNAVAILABLE, EXIT_USAGE
from predilect.kernels import OP_NAME
from predilect.kernels.attention import custom_op_attention, reference_attention
from predilect.models.checkpoint import read_meta, save_checkpoint
from predilect.models.classifier import FundusClassifier, ModelCfg
from predilect.preprocess import PreprocessCfg

REPO = Path(__file__).resolve().parent.parent
SIZE = 64
HAS_TORCH_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None and torch.cuda.is_available()
NEEDS_TORCH_TENSORRT = pytest.mark.skipif(
    not HAS_TORCH_TENSORRT,
    reason="needs torch_tensorrt with the CUDA torch build on a GPU (make gpu-check GPU_EXTRAS=torchtrt)",
)


def _model(seed: int = 0, **overrides: Any) -> FundusClassifier:
    torch.manual_seed(seed)
    cfg = dict(num_diseases=len(DEFAULT_CATALOG), image_size=SIZE, widths=(8, 16, 32), sites_per_disease=3)
    return FundusClassifier(ModelCfg(**{**cfg, **overrides})).eval()


def _checkpoint(folder: Path, seed: int = 0) -> Path:
    path = folder / f"model-{seed}.safetensors"
    save_checkpoint(path, _model(seed), preprocess=PreprocessCfg(size=SIZE), catalog=DEFAULT_CATALOG)
    return path


@pytest.fixture(scope="module")
def model() -> FundusClassifier:
    return _model()


@pytest.fixture(scope="module")
def program(model):
    return export_fundus(model, max_batch=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("torchtrt"))


@pytest.fixture(scope="module")
def reference_onnx(checkpoint) -> Path:
    out = checkpoint.parent / "fp32-export.onnx"
    export_onnx(checkpoint, out)
    return out


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32))


# --------------------------------------------------------------- the switch (predilect.kernels.attention)
class _OpLog(TorchDispatchMode):
    """Every operator the dispatcher runs, by name (``predilect::predilection_attention``, ``aten::mm``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def _op_calls(model: FundusClassifier, pixels: torch.Tensor) -> int:
    with _OpLog() as log, torch.no_grad():
        model(pixels)
    assert log.names  # the log sees the model's operators at all
    return log.names.count(OP_NAME)


def test_custom_op_attention_routes_cpu_head_through_op_when_active_and_reference_wins(model) -> None:
    pixels = _pixels(2)
    assert _op_calls(model, pixels) == 0  # CPU default: the reference ops
    with custom_op_attention():
        assert _op_calls(model, pixels) == 1
        with reference_attention():  # the ONNX export's switch wins
            assert _op_calls(model, pixels) == 0
        with torch.no_grad():
            routed = model(pixels)
    assert _op_calls(model, pixels) == 0  # restored on exit
    with torch.no_grad():
        np.testing.assert_array_equal(routed.numpy(), model(pixels).numpy())  # the op's CPU impl is the reference


# ----------------------------------------------------------------------------- torch.export
def test_export_fundus_has_one_op_node_and_dynamic_batch_when_exported(program) -> None:
    (node,) = op_nodes(program.program)
    assert len(node.users) == 1  # only the logits are read: the unused map's getitem is gone
    (batch_range,) = program.program.range_constraints.values()
    assert (int(batch_range.lower), int(batch_range.upper)) == (1, 16)
    assert program.input_shape == (3, SIZE, SIZE) and program.precision == "fp32"


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_exported_program_round_trips_and_matches_eager_when_batch_odd(program, model, tmp_path, batch) -> None:
    torch.export.save(program.program, str(tmp_path / "fundus.pt2"))
    loaded = torch.export.load(str(tmp_path / "fundus.pt2"))  # the op is registered: this module imported it
    assert len(op_nodes(loaded)) == 1
    pixels = _pixels(batch, seed=batch)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module()(pixels).numpy(), model(pixels).numpy(), rtol=0, atol=1e-5)


def test_exported_program_rejects_batch_past_profile_when_called(program) -> None:
    with pytest.raises(AssertionError, match=r"size\(\)\[0\] <= 16"):
        program.program.module()(_pixels(17))


@pytest.mark.parametrize("precision,tolerance", [("fp16", 5e-3), ("bf16", 2e-2)])
def test_reduced_precision_export_keeps_fp32_io_and_op_in_precision_when_exported(model, precision, tolerance) -> None:
    exported = export_fundus(model, max_batch=8, precision=precision)
    (node,) = op_nodes(exported.program)
    tensors: list[Any] = list(node.args[:4])
    assert {arg.meta["val"].dtype for arg in tensors} == {TORCH_DTYPES[precision]}
    pixels = _pixels(3)
    with torch.no_grad():
        got, want = exported.program.module()(pixels), model(pixels)
    assert got.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32  # caller's model unchanged
    assert (torch.sigmoid(got) - torch.sigmoid(want)).abs().max().item() <= tolerance


def test_export_fundus_refuses_quantised_precision_when_asked(model) -> None:
    assert tuple(TORCH_DTYPES) == TORCH_PRECISIONS
    with pytest.raises(ExportError, match="onnx frontend"):
        export_fundus(model, max_batch=8, precision="int8")


def test_export_fundus_raises_when_head_past_kernel_limits() -> None:
    too_many_queries = _model(num_diseases=len(DEFAULT_CATALOG), sites_per_disease=600 // len(DEFAULT_CATALOG) + 1)
    with pytest.raises(ExportError, match="expected 1 .* found 0"):
        export_fundus(too_many_queries, max_batch=4)


def test_export_without_custom_op_has_reference_ops_only_when_plugin_off(model) -> None:
    exported = export_fundus(model, max_batch=4, custom_op=False)
    assert op_nodes(exported.program) == []
    assert any("softmax" in str(n.target) for n in exported.program.graph.nodes)


# ----------------------------------------------------------------------------- plugin glue (no TensorRT here)
class _TensorDesc:  # stand-ins for tensorrt.plugin's classes: the boundary we do not own here
    pass


class _AutoTuneCombination:
    def __init__(self, types: str, formats: str) -> None:
        self.types, self.formats = types, formats
        self.tactic_ids: list[int] = []

    def tactics(self, ids: list[int]) -> None:
        self.tactic_ids = ids


def _stub_trtp() -> tuple[types.SimpleNamespace, dict[str, tuple[str, Any]]]:
    registered: dict[str, tuple[str, Any]] = {}

    def recorder(kind: str):
        def factory(plugin_id: str):
            def decorator(fn):
                registered[kind] = (plugin_id, fn)
                return fn

            return decorator

        return factory

    trtp = types.SimpleNamespace(
        TensorDesc=_TensorDesc,
        AutoTuneCombination=_AutoTuneCombination,
        KernelLaunchParams=object,
        SymExprs=object,
        autotune=recorder("autotune"),
        aot_impl=recorder("aot_impl"),
    )
    return trtp, registered


def test_op_plugin_definitions_match_generated_descriptor_when_defined() -> None:
    trtp, registered = _stub_trtp()
    plugin.define_op_plugin(trtp, "test_ns::op_a", sites_per_disease=3)
    schema = torch.ops.predilect.predilection_attention.default._schema
    arguments = [a.name for a in schema.arguments]
    for kind, extra in (("autotune", ["outputs"]), ("aot_impl", ["outputs", "tactic"])):
        plugin_id, fn = registered[kind]
        assert plugin_id == "test_ns::op_a"
        parameters = inspect.signature(fn).parameters
        assert list(parameters) == arguments + extra  # the order generate_plugin registers
        for name in arguments[:4]:
            assert parameters[name].annotation is _TensorDesc
        # Torch-TensorRT's generate_plugin declares a bool argument as this ndarray alias.
        assert parameters["return_attention"].annotation == np.ndarray[Any, np.dtype[np.bool_]]
        assert parameters["outputs"].annotation == Tuple[(_TensorDesc,) * len(schema.returns)]  # noqa: UP006


def test_op_plugin_sites_come_from_constant_shape_else_from_build_when_looked_up() -> None:
    trtp, _ = _stub_trtp()
    plugin.define_op_plugin(trtp, "test_ns::op_b", sites_per_disease=3)

    def sites(constant: bool, fake: bool = False) -> types.SimpleNamespace:
        dim = types.SimpleNamespace(is_fake=fake, is_constant=constant, constant_value=lambda: 5)
        return types.SimpleNamespace(shape_expr=[None, dim, None])

    assert plugin._op_sites("test_ns::op_b", sites(True)) == 5
    assert plugin._op_sites("test_ns::op_b", sites(False)) == 3
    assert plugin._op_sites("test_ns::op_b", sites(True, fake=True)) == 3
    plugin.define_op_plugin(trtp, "test_ns::op_b", sites_per_disease=4)  # a second model in the process
    assert plugin._op_sites("test_ns::op_b") == 4
    with pytest.raises(RuntimeError, match="define_op_plugin first"):
        plugin._op_sites("test_ns::never_defined")


def test_op_plugin_aot_refuses_attention_map_when_requested() -> None:
    trtp, registered = _stub_trtp()
    plugin.define_op_plugin(trtp, "test_ns::op_c", sites_per_disease=3)
    _, aot = registered["aot_impl"]
    with pytest.raises(ValueError, match="logits only"):
        aot(None, None, None, None, np.array(True), (None, None), 1)


def test_compiled_ptx_has_map_pointer_as_tensorrt_passes_when_two_outputs() -> None:
    script = (
        "from triton.backends.compiler import GPUTarget\n"
        "from predilect.build.tensorrt.plugin import compile_kernel, ptx_entry_params\n"
        "k = compile_kernel('FLOAT', 3, 1, target=GPUTarget('cuda', 90, 32), ptx_version=87, map_output=True)\n"
        "print(k.shared_mem, ' '.join(t for t, _ in ptx_entry_params(k.ptx, k.name)))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shared, *params = done.stdout.split()
    assert tuple(params) == plugin.launch_param_types(map_output=True) == (*plugin.LAUNCH_PARAM_TYPES, ".u64")
    assert int(shared) <= 48 * 1024


class _Interpreter:  # the part of Torch-TensorRT's TRTInterpreter the naming relies on: a boundary we do not own
    def __init__(self) -> None:
        self.input_specs_iter = 0
        self._output_names: list[str] = []
        self.inputs: list[str] = []

    def placeholder(self, target: str, args: Any, kwargs: Any) -> str:
        self.inputs.append(target)
        self.input_specs_iter += 1
        return target

    def output(self, target: str, args: Any, kwargs: Any) -> list[Any]:
        outputs = [types.SimpleNamespace(name=f"output{i}") for i in range(len(args[0]))]
        self._output_names = [o.name for o in outputs]
        return outputs


def test_contract_io_names_renames_inputs_and_outputs_then_restores_when_used(monkeypatch) -> None:
    from predilect.build.tensorrt.torch_engine import contract_io_names
    from predilect.contract import LOGITS, PIXELS

    conversion: Any = types.ModuleType("torch_tensorrt.dynamo.conversion._conversion")
    conversion.TRTInterpreter = _Interpreter
    monkeypatch.setitem(sys.modules, conversion.__name__, conversion)
    with contract_io_names():
        interpreter = conversion.TRTInterpreter()
        assert interpreter.placeholder("pixels", (), {}) == PIXELS and interpreter.inputs == [PIXELS]
        with pytest.raises(RuntimeError, match="second placeholder"):
            interpreter.placeholder("mask", (), {})
        (output,) = interpreter.output("output", ((None,),), {})
        assert output.name == LOGITS and interpreter._output_names == [LOGITS]
        with pytest.raises(RuntimeError, match="one output"):
            conversion.TRTInterpreter().output("output", ((None, None),), {})
    assert conversion.TRTInterpreter is _Interpreter


# ----------------------------------------------------------------------------- build options
def test_profile_and_compile_options_follow_engine_cfg_when_built(tmp_path) -> None:
    cfg = EngineCfg(opt_batch=8, max_batch=16, timing_cache=tmp_path / "timing.cache")
    assert profile_shapes(cfg, (3, SIZE, SIZE)) == ((1, 3, SIZE, SIZE), (8, 3, SIZE, SIZE), (16, 3, SIZE, SIZE))
    fp32, fp16 = compile_options(cfg, "fp32"), compile_options(cfg, "fp16")
    assert fp32["require_full_compilation"] and fp32["min_block_size"] == 1 and fp32["immutable_weights"]
    assert fp32["disable_tf32"] and not fp16["disable_tf32"]
    assert fp32["timing_cache_path"] == str(tmp_path / "timing.cache")
    assert fp32["workspace_size"] == 2 << 30
    assert "timing_cache_path" not in compile_options(EngineCfg(), "fp32")


def test_check_reference_raises_when_onnx_is_another_checkpoint(checkpoint, reference_onnx, tmp_path) -> None:
    check_reference(read_meta(checkpoint), reference_onnx)
    other = _checkpoint(tmp_path, seed=1)
    with pytest.raises(ReferenceMismatchError, match="version"):
        check_reference(read_meta(other), reference_onnx)


def test_sidecar_without_checkpoint_field_reads_when_written_by_onnx_route() -> None:
    text = EngineSidecar(
        tensorrt_version="10.9.0.34",
        gpu_name="g",
        compute_capability="9.0",
        precision="fp32",
        frontend="onnx",
        onnx_sha256="ab" * 32,
        catalog_digest="",
        model_name="m",
        model_version="1",
        plugin=True,
        inputs=(),
        outputs=(),
    ).to_json()
    old = text.replace('  "checkpoint_sha256": "",\n', "")
    assert old != text and EngineSidecar.from_json(old).checkpoint_sha256 == ""


# ----------------------------------------------------------------------------- up to the point that needs CUDA
@pytest.mark.skipif(HAS_TORCH_TENSORRT, reason="checks the error raised where Torch-TensorRT cannot run")
def test_build_torch_engine_exports_then_stops_at_torch_tensorrt_when_no_gpu(checkpoint, reference_onnx, tmp_path):
    gate = GateData(pixels=_pixels(2).numpy(), reference_onnx=reference_onnx)
    with pytest.raises(TorchTensorRTUnavailableError, match="CUDA GPU"):
        build_torch_engine(checkpoint, tmp_path / "model.plan", EngineCfg(max_batch=8), gate=gate)
    assert not list(tmp_path.iterdir())
    # The export runs before that point: a head it cannot export fails there, with its own error.
    big = tmp_path / "big.safetensors"
    wide = _model(sites_per_disease=600 // len(DEFAULT_CATALOG) + 1)
    save_checkpoint(big, wide, preprocess=PreprocessCfg(size=SIZE), catalog=DEFAULT_CATALOG)
    big_reference = tmp_path / "big.onnx"
    export_onnx(big, big_reference)
    with pytest.raises(ExportError):
        build_torch_engine(
            big, tmp_path / "model.plan", gate=GateData(pixels=gate.pixels, reference_onnx=big_reference)
        )


@pytest.mark.skipif(HAS_TORCH_TENSORRT, reason="checks the error raised where Torch-TensorRT cannot run")
def test_trt_engine_cli_torch_exits_unavailable_with_one_line_when_no_gpu(checkpoint, tmp_path, capsys) -> None:
    argv = ["--frontend", "torch", "--checkpoint", str(checkpoint), "--engine", str(tmp_path / "m.plan")]
    assert trt_engine_main([*argv, "--max-batch", "4", "--opt-batch", "2"]) == EXIT_UNAVAILABLE
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "torch frontend needs a CUDA GPU" in out[0]
    assert not (tmp_path / "m.plan").exists()


def test_trt_engine_cli_rejects_mismatched_options_when_given(checkpoint, reference_onnx, tmp_path, capsys) -> None:
    engine = ["--engine", str(tmp_path / "m.plan")]
    assert trt_engine_main(["--onnx", str(reference_onnx), "--precision", "fp16", *engine]) == EXIT_USAGE
    assert "--precision is for --frontend torch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: int8 is not a torch-frontend precision
        trt_engine_main(["--frontend", "torch", "--precision", "int8", *engine])
    assert exit_info.value.code == EXIT_USAGE
    capsys.readouterr()
    other = _checkpoint(tmp_path, seed=2)
    argv = ["--frontend", "torch", "--checkpoint", str(other), "--reference-onnx", str(reference_onnx), *engine]
    assert trt_engine_main(argv) == EXIT_USAGE
    assert "accuracy gate needs the FP32 ONNX export of this checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.plan").exists()


# ----------------------------------------------------------------------------- on a GPU with Torch-TensorRT
def _probabilities(plan: Path, pixels: np.ndarray) -> np.ndarray:
    from predilect.build.tensorrt.engine import engine_logits

    return 1.0 / (1.0 + np.exp(-engine_logits(plan, pixels).astype(np.float64)))


@pytest.mark.gpu
@NEEDS_TORCH_TENSORRT
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_engine_passes_gate_with_contract_io_when_built(checkpoint, reference_onnx, tmp_path, precision):
    pixels = _pixels(7, seed=3).numpy()
    gate = GateData(pixels=pixels, reference_onnx=reference_onnx)
    cfg = EngineCfg(opt_batch=4, max_batch=8)
    sidecar = build_torch_engine(checkpoint, tmp_path / "model.plan", cfg, TorchBuild(precision=precision), gate=gate)
    assert read_sidecar(tmp_path / "model.plan") == sidecar
    assert sidecar.frontend == "torch" and sidecar.gate["passed"] and sidecar.gate["lowering"] in TORCH_LOWERINGS
    assert sidecar.precision == precision and sidecar.max_batch == 8 and sidecar.checkpoint_sha256
    for batch in (1, 3, 7):  # odd batches inside the profile
        got = _probabilities(tmp_path / "model.plan", pixels[:batch])
        assert np.abs(got - onnx_probabilities(reference_onnx, pixels[:batch])).max() <= sidecar.gate["tolerance_dp"]


@pytest.mark.gpu
@NEEDS_TORCH_TENSORRT
def test_torch_and_onnx_engines_agree_within_gate_tolerance_when_built_from_one_checkpoint(
    checkpoint, reference_onnx, tmp_path
):
    from predilect.build.tensorrt.accuracy import check_accuracy
    from predilect.build.tensorrt.engine import build_engine

    pixels = _pixels(8, seed=4).numpy()
    gate = GateData(pixels=pixels, reference_onnx=reference_onnx)
    cfg = EngineCfg(opt_batch=4, max_batch=8)
    build_engine(reference_onnx, tmp_path / "onnx.plan", cfg, gate=gate)
    build_torch_engine(checkpoint, tmp_path / "torch.plan", cfg, gate=gate)
    onnx_route, torch_route = (
        _probabilities(tmp_path / "onnx.plan", pixels),
        _probabilities(tmp_path / "torch.plan", pixels),
    )
    report = check_accuracy(onnx_route, torch_route, precision="fp32")  # raises past the gate's tolerance
    assert report.passed


@pytest.mark.gpu
@NEEDS_TORCH_TENSORRT
def test_torch_engine_with_qdp_lowering_passes_gate_when_built(checkpoint, reference_onnx, tmp_path):
    # Converters are process-global in Torch-TensorRT: the other lowering builds in its own process.
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from predilect.build.tensorrt.engine import EngineCfg, GateData\n"
        "from predilect.build.tensorrt.torch_engine import TorchBuild, build_torch_engine\n"
        "gate = GateData(pixels=np.random.default_rng(5).standard_normal((4, 3, 64, 64)).astype(np.float32),\n"
        "                reference_onnx=Path(sys.argv[2]))\n"
        "s = build_torch_engine(Path(sys.argv[1]), Path(sys.argv[3]), EngineCfg(opt_batch=2, max_batch=4),\n"
        "                       TorchBuild(lowering='qdp'), gate=gate)\n"
        "print(s.gate['lowering'], s.gate['passed'])\n"
    )
    plan = tmp_path / "qdp.plan"
    done = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint), str(reference_onnx), str(plan)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["qdp", "True"]


@pytest.mark.gpu
@NEEDS_TORCH_TENSORRT
def test_ensure_torch_engine_builds_then_reuses_when_repository_assembled(checkpoint, reference_onnx, tmp_path):
    from predilect import contract
    from predilect.build.tensorrt.torch_engine import ensure_torch_engine
    from predilect.serving.gpu_profile import GpuServingOptions, assemble_gpu

    options = GpuServingOptions(max_batch_size=8, preferred_batch_sizes=(2, 4), precision="fp16")
    repository = assemble_gpu(reference_onnx, tmp_path / "repo", options)
    path, built = ensure_torch_engine(repository, tmp_path / "cache", checkpoint)
    assert built and path == repository / contract.CLASSIFIER_MODEL / contract.TRITON_VERSION / contract.PLAN_FILENAME
    sidecar = read_sidecar(path)
    assert (sidecar.frontend, sidecar.precision, sidecar.max_batch) == ("torch", "fp16", 8)
    assert sidecar.inputs[0].opt_shape[0] == 4 and sidecar.gate["passed"]
    assert ensure_torch_engine(repository, tmp_path / "cache", checkpoint) == (path, False)
