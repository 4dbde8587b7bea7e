"""Fold the exported attention head into one node.

The served ONNX (``predilect export``) spells predilection attention as ~30 reference ops.
This rewrite finds that subgraph with onnx-graphsurgeon and replaces it with a single node,
``predilect.PredilectionAttention(tokens, sites, weight, bias) -> logits``:

* ``--target ort`` (default) attaches an ONNX local function of the same domain and name whose
  body is the reference ops, so ONNX Runtime (which inlines it) can verify the rewrite;
* ``--target tensorrt`` strips the function and marks the node for TensorRT's ONNX parser
  (``plugin_namespace``, ``aot``), which maps it to the AOT plugin in ``plugin.py``.

The subgraph is found structurally, not by node names: the tokens are the value operand of
the MatMul that follows the only Softmax; the region is everything downstream of the tokens
that reaches a graph output; its initializers must be exactly sites (C, K, D), weight (C, D)
and bias (C,). Anything else raises ValueError rather than rewriting a graph it does not know.

The plugin computes logits only (the attention map stays in on-chip memory), so an exported
``ATTENTION`` output is dropped first: the GPU profile serves no heatmaps (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from predilect.build.tensorrt.plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, SITES_ATTR
from predilect.contract import ATTENTION

DOMAIN = PLUGIN_NAMESPACE
OP_TYPE = PLUGIN_NAME
NODE_NAME = "predilection_attention"


@dataclass(frozen=True)
class AttentionMatch:
    """The attention subgraph found in a graph."""

    nodes: tuple[gs.Node, ...]
    tokens: gs.Variable
    sites: gs.Constant
    weight: gs.Constant
    bias: gs.Constant
    output: gs.Variable

    @property
    def sites_per_disease(self) -> int:
        return int(self.sites.shape[1])


def _descendants(tensor: gs.Tensor) -> list[gs.Node]:
    seen: dict[int, gs.Node] = {}
    stack = list(tensor.outputs)
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(consumer for out in node.outputs for consumer in out.outputs)
    return list(seen.values())


def _reaches_output(node: gs.Node, graph_outputs: set[int], region: dict[int, gs.Node]) -> bool:
    return any(id(out) in graph_outputs or any(id(c) in region for c in out.outputs) for out in node.outputs)


def _prune_dead_ends(nodes: list[gs.Node], graph: gs.Graph) -> dict[int, gs.Node]:
    """Keep the nodes that lead to a graph output (drop side branches of the tokens)."""
    region = {id(n): n for n in nodes}
    outputs = {id(t) for t in graph.outputs}
    changed = True
    while changed:
        dead = [key for key, node in region.items() if not _reaches_output(node, outputs, region)]
        changed = bool(dead)
        for key in dead:
            del region[key]
    return region


def _tokens_of(graph: gs.Graph) -> gs.Variable:
    softmaxes = [n for n in graph.nodes if n.op == "Softmax"]
    if len(softmaxes) != 1:
        raise ValueError(f"expected exactly one Softmax (the attention), found {len(softmaxes)}")
    probs = softmaxes[0].outputs[0]
    value_matmuls = [n for n in probs.outputs if n.op == "MatMul" and n.inputs[0] is probs]
    if len(value_matmuls) != 1:
        raise ValueError("the Softmax does not feed a MatMul with the tokens as values")
    return value_matmuls[0].inputs[1]


def _parameters(region: dict[int, gs.Node], tokens: gs.Variable) -> tuple[gs.Constant, gs.Constant, gs.Constant]:
    floats: dict[int, list[gs.Constant]] = {1: [], 2: [], 3: []}
    for node in region.values():
        for tensor in node.inputs:
            if (
                isinstance(tensor, gs.Constant)
                and np.issubdtype(tensor.values.dtype, np.floating)
                and tensor.values.ndim in floats
                and tensor not in floats[tensor.values.ndim]
            ):
                floats[tensor.values.ndim].append(tensor)
    if any(len(found) != 1 for found in floats.values()):
        raise ValueError(
            "expected exactly one float initializer each for sites (C, K, D), weight (C, D) "
            f"and bias (C,); found ranks {{{', '.join(f'{r}: {len(v)}' for r, v in floats.items())}}}"
        )
    sites, weight, bias = floats[3][0], floats[2][0], floats[1][0]
    c, _, d = sites.shape
    if tuple(weight.shape) != (c, d) or tuple(bias.shape) != (c,):
        raise ValueError(f"inconsistent head parameters: sites {sites.shape}, weight {weight.shape}, bias {bias.shape}")
    return sites, weight, bias


def drop_attention_output(graph: gs.Graph) -> bool:
    """Remove an ``ATTENTION`` graph output and the nodes only it needed; True if there was one."""
    kept = [t for t in graph.outputs if t.name != ATTENTION]
    if len(kept) == len(graph.outputs):
        return False
    graph.outputs = kept
    graph.cleanup()
    return True


def find_attention(graph: gs.Graph) -> AttentionMatch:
    """Locate the predilection-attention subgraph; ValueError if the graph does not have one.

    An ``ATTENTION`` output is dropped from ``graph`` first (the plugin emits logits only)."""
    drop_attention_output(graph)
    tokens = _tokens_of(graph)
    region = _prune_dead_ends(_descendants(tokens), graph)
    produced = {id(out) for node in region.values() for out in node.outputs}
    leaving = [
        out
        for node in region.values()
        for out in node.outputs
        if out in graph.outputs or any(id(c) not in region for c in out.outputs)
    ]
    if len(leaving) != 1:
        raise ValueError(f"the attention subgraph should have one output, found {[t.name for t in leaving]}")
    for node in region.values():
        for tensor in node.inputs:
            external = id(tensor) not in produced and tensor is not tokens and not isinstance(tensor, gs.Constant)
            if external and not (tensor.inputs and tensor.inputs[0].op == "Constant"):
                raise ValueError(f"the attention subgraph depends on {tensor.name!r} besides the tokens")
    sites, weight, bias = _parameters(region, tokens)
    return AttentionMatch(
        nodes=tuple(region.values()), tokens=tokens, sites=sites, weight=weight, bias=bias, output=leaving[0]
    )


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def reference_function(opset: int) -> onnx.FunctionProto:
    """``predilect.PredilectionAttention`` as reference ONNX ops (what ONNX Runtime inlines)."""
    mean_k = (
        helper.make_node("ReduceMean", ["context4"], ["pooled"], axes=[2], keepdims=0)
        if opset < 18
        else helper.make_node("ReduceMean", ["context4", "axis_k"], ["pooled"], keepdims=0)
    )
    nodes = [
        helper.make_node("Flatten", ["sites"], ["queries"], axis=2),  # (C*K, D)
        helper.make_node("Transpose", ["queries"], ["queries_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["tokens", "queries_t"], ["raw_scores"]),  # (B, N, C*K)
        helper.make_node("Shape", ["tokens"], ["dim"], start=-1),
        helper.make_node("CastLike", ["dim", "tokens"], ["dim_f"]),
        helper.make_node("Sqrt", ["dim_f"], ["sqrt_dim"]),
        helper.make_node("Div", ["raw_scores", "sqrt_dim"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=1),  # over the N tokens
        helper.make_node("Transpose", ["probs"], ["probs_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["probs_t", "tokens"], ["context"]),  # (B, C*K, D)
        helper.make_node("Shape", ["tokens"], ["batch"], end=1),
        helper.make_node("Shape", ["sites"], ["ckd"]),
        helper.make_node("Concat", ["batch", "ckd"], ["shape4"], axis=0),
        helper.make_node("Reshape", ["context", "shape4"], ["context4"]),  # (B, C, K, D)
        helper.make_node("Constant", [], ["axis_k"], value=helper.make_tensor("k", onnx.TensorProto.INT64, [1], [2])),
        mean_k,  # (B, C, D)
        helper.make_node("Mul", ["pooled", "weight"], ["weighted"]),
        helper.make_node("Constant", [], ["axis_d"], value=helper.make_tensor("d", onnx.TensorProto.INT64, [1], [-1])),
        helper.make_node("ReduceSum", ["weighted", "axis_d"], ["summed"], keepdims=0),
        helper.make_node("Add", ["summed", "bias"], ["logits"]),
    ]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        ["tokens", "sites", "weight", "bias"],
        ["logits"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=[SITES_ATTR],
    )


def rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its attention subgraph replaced by one function-backed node (ORT form)."""
    graph = gs.import_onnx(model)
    match = find_attention(graph)
    for node in match.nodes:
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes.append(
        gs.Node(
            op=OP_TYPE,
            name=NODE_NAME,
            domain=DOMAIN,
            attrs={SITES_ATTR: match.sites_per_disease},
            inputs=[match.tokens, match.sites, match.weight, match.bias],
            outputs=[match.output],
        )
    )
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    del out.functions[:]
    out.functions.append(reference_function(_opset(model)))
    out.ir_version = model.ir_version
    out.producer_name = model.producer_name
    for prop in model.metadata_props:
        out.metadata_props.add(key=prop.key, value=prop.value)
    onnx.checker.check_model(out)
    return out


def has_plugin_node(model: onnx.ModelProto) -> bool:
    """Whether ``rewrite`` has run on ``model``: it holds the ``predilect.PredilectionAttention`` node."""
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


def inline_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A rewritten model with its plugin node replaced by the node's reference ops again (the local
    function ``rewrite`` attached, inlined): the reference graph, in the model's own types."""
    if not any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions):
        raise ValueError(f"the {DOMAIN}.{OP_TYPE} node has no reference function to inline (a TensorRT-form model?)")
    from onnx import inliner

    out = inliner.inline_local_functions(model)
    del out.functions[:]
    kept = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    onnx.checker.check_model(out)
    return out


def for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT form: no local function (the parser would inline it), node marked as an AOT plugin."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.functions[:]
    nodes = [n for n in out.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        raise ValueError(f"no {DOMAIN}.{OP_TYPE} node: run rewrite() first")
    for node in nodes:
        node.attribute.extend(
            [helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE), helper.make_attribute("aot", 1)]
        )
    return out
