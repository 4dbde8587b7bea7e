"""TensorRT quickly-deployable plugin ``predilect::PredilectionAttention`` (logits only).

The ahead-of-time implementation compiles the very Triton kernel the PyTorch op launches
(``predilect.training.kernels._triton_predilection``) to PTX, so the engine embeds the kernel
and runs without Python. Each tactic is one block configuration; TensorRT times them at
build time and serialises the winner.

``compile_kernel`` needs only Triton (it can target a GPU architecture from a CPU-only host);
``register_plugin`` needs ``tensorrt`` and is what engine building calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PLUGIN_NAMESPACE = "predilect"
PLUGIN_NAME = "PredilectionAttention"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
SITES_ATTR = "sites_per_disease"


class TensorRTUnavailableError(RuntimeError):
    """The ``tensorrt`` package (and so a CUDA host) is needed for this step."""


_TRITON_DTYPES = {"FP32": "fp32", "FP16": "fp16", "BF16": "bf16"}


@dataclass(frozen=True)
class AotKernel:
    """A compiled kernel and what its launch needs."""

    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    block_c: int


def _tactics() -> dict[int, Any]:
    from predilect.training.kernels._triton_predilection import TUNING_SPACE

    return {index + 1: cfg for index, cfg in enumerate(TUNING_SPACE)}


def compile_kernel(dtype: str, n_sites: int, tactic: int, *, target: Any = None) -> AotKernel:
    """Compile the logits-only kernel for contiguous tensors of ``dtype`` ("FP32", "FP16", "BF16").

    The compiled kernel's runtime arguments are, in order: tokens, sites, weight, bias,
    N, D, C, K, stride_tb, stride_tn, stride_sc, stride_sk, stride_wc, stride_lb, logits:
    TensorRT's AOT calling convention (inputs, int32 scalars, outputs). Unit strides and the
    unused attention-map arguments are compile-time constants.
    """
    import triton

    from predilect.training.kernels._triton_predilection import predilection_attention_kernel

    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(_TRITON_DTYPES)}")
    tactics = _tactics()
    if tactic not in tactics:
        raise ValueError(f"unknown tactic {tactic}; expected one of {sorted(tactics)}")
    if n_sites < 1:
        raise ValueError(f"sites_per_disease must be >= 1, got {n_sites}")
    cfg = tactics[tactic]
    ptr = f"*{_TRITON_DTYPES[dtype]}"
    constexprs: dict[str, Any] = {
        "stride_td": 1,
        "stride_sd": 1,
        "stride_wd": 1,
        "stride_bias": 1,
        "stride_lc": 1,
        "stride_ab": 0,
        "stride_ac": 0,
        "stride_an": 0,
        "attn_ptr": None,
        "RETURN_ATTN": False,
        "DOT_PRECISION": "ieee" if dtype == "FP32" else "tf32",
        "BLOCK_K": triton.next_power_of_2(n_sites),
        "BLOCK_C": cfg.block_c,
        "BLOCK_N": cfg.block_n,
        "BLOCK_D": cfg.block_d,
    }
    runtime = {
        "tokens_ptr": ptr,
        "sites_ptr": ptr,
        "weight_ptr": ptr,
        "bias_ptr": ptr,
        "N": "i32",
        "D": "i32",
        "C": "i32",
        "K": "i32",
        "stride_tb": "i32",
        "stride_tn": "i32",
        "stride_sc": "i32",
        "stride_sk": "i32",
        "stride_wc": "i32",
        "stride_lb": "i32",
        "logits_ptr": ptr,
    }
    signature = {name: runtime.get(name, "constexpr") for name in predilection_attention_kernel.arg_names}
    source = triton.compiler.ASTSource(fn=predilection_attention_kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    compiled = (
        triton.compile(source, target=target, options=options) if target else triton.compile(source, options=options)
    )
    if compiled.metadata.global_scratch_size or compiled.metadata.profile_scratch_size:
        # TensorRT passes only inputs, extra scalars and outputs; Triton's trailing scratch
        # pointers are then unset, which is harmless only while the kernel needs no scratch.
        raise RuntimeError(f"tactic {tactic} needs Triton global scratch memory, which the AOT plugin cannot provide")
    return AotKernel(
        name=compiled.metadata.name,
        ptx=compiled.asm["ptx"],
        num_warps=compiled.metadata.num_warps,
        shared_mem=compiled.metadata.shared,
        block_c=cfg.block_c,
    )


_REGISTERED = False
_STATIC_SHARED_LIMIT = 48 * 1024  # above this a launch needs an opt-in the AOT path does not make


def usable_tactics(n_sites: int, *, target: Any = None) -> list[int]:
    """Tactics whose FP32 build (the largest) fits in 48 KiB of shared memory; at least one."""
    sizes = {tactic: compile_kernel("FP32", n_sites, tactic, target=target).shared_mem for tactic in _tactics()}
    fitting = [tactic for tactic, size in sizes.items() if size <= _STATIC_SHARED_LIMIT]
    return fitting or [min(sizes, key=sizes.__getitem__)]


def register_plugin() -> None:
    """Register the plugin's description, autotune and AOT implementation (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed: the PredilectionAttention plugin needs the "
            "`tensorrt` package (10.8+, with tensorrt.plugin) on a CUDA host"
        ) from exc
    _define(trtp)
    _REGISTERED = True


def _define(trtp: Any) -> None:
    """The three QDP definitions; split out so that they read like the TensorRT samples."""

    @trtp.register(PLUGIN_ID)
    def _describe(
        tokens: trtp.TensorDesc,
        sites: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        sites_per_disease: int,
    ) -> trtp.TensorDesc:
        return trtp.from_shape_expr((tokens.shape_expr[0], sites.shape_expr[0]), dtype=tokens.dtype)

    @trtp.autotune(PLUGIN_ID)
    def _autotune(
        tokens: trtp.TensorDesc,
        sites: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        sites_per_disease: int,
        outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        # Four inputs and one output share one type; every tactic is one AOT-compiled config.
        combination = trtp.AutoTuneCombination(", ".join(["FP32|FP16|BF16"] * 5), "LINEAR")
        combination.tactics(usable_tactics(sites_per_disease))
        return [combination]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(
        tokens: trtp.TensorDesc,
        sites: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        sites_per_disease: int,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
        kernel = compile_kernel(tokens.dtype.name, sites_per_disease, tactic)
        batch, n_tokens, dim = tokens.shape_expr[0], tokens.shape_expr[1], tokens.shape_expr[2]
        n_diseases, n_sites = sites.shape_expr[0], sites.shape_expr[1]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = batch
        launch.grid_y = trtp.cdiv(n_diseases, kernel.block_c)
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared_mem
        # Contiguous (LINEAR) I/O: the strides are products of the shapes, resolved at run time.
        scalars = (n_tokens, dim, n_diseases, n_sites, n_tokens * dim, dim, n_sites * dim, dim, dim, n_diseases)
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])
        return kernel.name.encode(), kernel.ptx.encode(), launch, extra_args
