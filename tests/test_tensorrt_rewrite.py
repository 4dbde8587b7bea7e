"""ONNX rewrite of the attention head into one plugin node, and the TensorRT plugin/engine code."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from predilect import contract
from predilect.build.export import export_onnx, onnx_probabilities
from predilect.build.tensorrt.onnx_rewrite import DOMAIN, OP_TYPE, find_attention, for_tensorrt, rewrite
from predilect.build.tensorrt.rewrite_cli import main
from predilect.catalog import DEFAULT_CATALOG
from predilect.models.checkpoint import save_checkpoint
from predilect.models.classifier import FundusClassifier, ModelCfg
from predilect.preprocess import PreprocessCfg

REPO = Path(__file__).resolve().parent.parent
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None
NEEDS_TENSORRT = pytest.mark.skipif(
    not (HAS_TENSORRT and HAS_CUDA_PYTHON and Path("/dev/nvidiactl").exists()),
    reason="needs TensorRT >= 10.9, cuda-python and an NVIDIA GPU (make gpu-check on a CUDA host)",
)
SITES = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = FundusClassifier(
        ModelCfg(num_diseases=len(DEFAULT_CATALOG), image_size=64, widths=(8, 16, 32), sites_per_disease=SITES)
    )
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64) * 2 + 0.5)  # non-trivial BatchNorm statistics
    model.eval()
    folder = tmp_path_factory.mktemp("rewrite")
    save_checkpoint(folder / "model.safetensors", model, preprocess=PreprocessCfg(size=64), catalog=DEFAULT_CATALOG)
    export_onnx(folder / "model.safetensors", folder / "model.onnx")
    return folder / "model.onnx"


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_rewrite_leaves_one_plugin_node_when_given_exported_model(exported):
    original = onnx.load(str(exported))
    rewritten = rewrite(original)
    ops = _ops(rewritten)
    assert ops.count(OP_TYPE) == 1 and "Softmax" not in ops and "MatMul" not in ops
    assert len(ops) < len(_ops(original)) - 20
    (node,) = [n for n in rewritten.graph.node if n.op_type == OP_TYPE]
    assert node.domain == DOMAIN and list(node.output) == [contract.LOGITS]
    assert onnx.helper.get_attribute_value(node.attribute[0]) == SITES
    shapes = {init.name: tuple(init.dims) for init in rewritten.graph.initializer}
    c = len(DEFAULT_CATALOG)
    d = ModelCfg(num_diseases=c, widths=(8, 16, 32)).dim  # content 32 + the anatomical code
    assert [shapes[name] for name in node.input[1:]] == [(c, SITES, d), (c, d), (c,)]
    assert [(f.domain, f.name) for f in rewritten.functions] == [(DOMAIN, OP_TYPE)]


@pytest.mark.parametrize("batch", [1, 5])
def test_rewrite_matches_original_probabilities_within_1e5_when_run_under_onnxruntime(exported, tmp_path, batch):
    onnx.save(rewrite(onnx.load(str(exported))), str(tmp_path / "rewritten.onnx"))
    pixels = (np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)) * 1.5).astype(np.float32)
    diff = np.abs(onnx_probabilities(exported, pixels) - onnx_probabilities(tmp_path / "rewritten.onnx", pixels))
    assert diff.max() <= 1e-5


def test_rewrite_keeps_serving_contract_when_rewritten(exported):
    original = onnx.load(str(exported))
    rewritten = rewrite(original)
    assert [i.name for i in rewritten.graph.input] == [contract.PIXELS]
    assert [o.name for o in rewritten.graph.output] == [contract.LOGITS]
    assert rewritten.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key: p.value for p in rewritten.metadata_props} == {p.key: p.value for p in original.metadata_props}


def test_for_tensorrt_strips_function_and_marks_aot_plugin_when_targeting_tensorrt(exported):
    trt_model = for_tensorrt(rewrite(onnx.load(str(exported))))
    (node,) = [n for n in trt_model.graph.node if n.op_type == OP_TYPE]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"predilect" and attrs["aot"] == 1 and attrs["sites_per_disease"] == SITES
    assert len(trt_model.functions) == 0


def test_find_attention_raises_value_error_when_graph_has_no_attention():
    import onnx_graphsurgeon as gs

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ValueError, match="Softmax"):
        find_attention(gs.import_onnx(onnx.helper.make_model(graph)))


def test_onnx_rewrite_cli_writes_tensorrt_model_when_run(exported, tmp_path, capsys):
    out = tmp_path / "trt" / exported.name
    assert main(["--onnx", str(exported), "--out", str(out.parent), "--target", "tensorrt"]) == 0
    assert _ops(onnx.load(str(out))).count(OP_TYPE) == 1
    assert OP_TYPE in capsys.readouterr().out


def test_plugin_kernel_compiles_to_ptx_with_aot_calling_convention_when_targeting_sm90():
    # A fresh interpreter: other tests in this session may have set TRITON_INTERPRET=1.
    script = (
        "from triton.backends.compiler import GPUTarget\n"
        "from predilect.build.tensorrt.plugin import compile_kernel\n"
        "k = compile_kernel('FP16', 3, 1, target=GPUTarget('cuda', 90, 32))\n"
        "params = [l.split()[1] for l in k.ptx.splitlines() if l.strip().startswith('.param')]\n"
        "print(k.name, k.num_warps, k.shared_mem, ' '.join(params))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, warps, shared, *params = result.stdout.split()
    assert name == "predilection_attention_kernel" and int(warps) == 4 and int(shared) <= 48 * 1024
    # tokens, sites, weight, bias | N, D, C, K + 6 strides (int32) | logits, then Triton's scratch pointers
    # exactly TensorRT's AOT convention: Triton's two scratch pointers are gone
    assert params == [".u64"] * 4 + [".u32"] * 10 + [".u64"]


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the error raised when TensorRT is absent")
def test_build_engine_raises_clear_error_when_tensorrt_missing(exported, tmp_path):
    from predilect.build.tensorrt.engine import GateData, build_engine
    from predilect.build.tensorrt.plugin import TensorRTUnavailableError, register_plugin

    gate = GateData(pixels=np.zeros((1, 3, 64, 64), np.float32), reference_onnx=exported)
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        build_engine(exported, tmp_path / "model.plan", gate=gate)
    assert not (tmp_path / "model.plan").exists()
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed"):
        register_plugin()


@pytest.mark.gpu
@NEEDS_TENSORRT
@pytest.mark.parametrize("use_plugin", [True, False])
def test_engine_matches_onnxruntime_when_built(exported, tmp_path, use_plugin):
    from predilect.build.tensorrt.engine import EngineCfg, GateData, build_engine, engine_logits
    from predilect.build.tensorrt.sidecar import read_sidecar

    pixels = np.random.default_rng(3).standard_normal((5, 3, 64, 64)).astype(np.float32)
    gate = GateData(pixels=pixels, reference_onnx=exported)
    sidecar = build_engine(exported, tmp_path / "model.plan", EngineCfg(max_batch=8, use_plugin=use_plugin), gate=gate)
    assert read_sidecar(tmp_path / "model.plan") == sidecar and sidecar.gate["passed"]
    expected = onnx_probabilities(exported, pixels)
    got = 1.0 / (1.0 + np.exp(-engine_logits(tmp_path / "model.plan", pixels).astype(np.float64)))
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT >= 10.9 (make gpu-check on a CUDA host)")
def test_register_plugin_adds_predilection_attention_when_tensorrt_present():
    import tensorrt as trt

    from predilect.build.tensorrt.plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, register_plugin

    register_plugin()
    creators = trt.get_plugin_registry().all_creators
    assert any(c.name == PLUGIN_NAME and c.plugin_namespace == PLUGIN_NAMESPACE for c in creators)
