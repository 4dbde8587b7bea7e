"""TensorRT quickly-deployable plugin ``predilect::PredilectionAttention`` (logits only).

The ahead-of-time implementation compiles the very Triton kernel the PyTorch op launches
(``predilect.kernels.triton_source``, which imports no torch) to PTX, so the engine
embeds the kernel and runs without Python. Each tactic is one block configuration; TensorRT
times them at build time and serialises the winner.

TensorRT's AOT calling convention: the kernel receives the input pointers, then the extra int32
scalars the ``aot_impl`` returns, then the output pointers, and nothing else. Triton appends two
scratch pointers (global and profile scratch) to every kernel it compiles; ``compile_kernel``
checks that the kernel uses neither and removes their declarations from the PTX, so that the
parameter list the driver reads is exactly the one TensorRT passes (``LAUNCH_PARAM_TYPES``).

This module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin``
validates the decorated functions with ``issubclass(annotation, TensorDesc)``, which needs the
annotations to be classes, not strings.

``compile_kernel`` needs only Triton (it can target a GPU architecture from a CPU-only host);
``register_plugin`` needs ``tensorrt`` >= 10.9 (``aot_impl``, ``KernelLaunchParams``,
``SymIntExprs``) and is what engine building calls.
"""

import ctypes
import inspect
import re
import subprocess
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union  # noqa: UP035 - the forms tensorrt.plugin's validator expects

import numpy as np

PLUGIN_NAMESPACE = "predilect"
PLUGIN_NAME = "PredilectionAttention"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
SITES_ATTR = "sites_per_disease"
MIN_TENSORRT = (10, 9)
"""``tensorrt.plugin.aot_impl``, ``KernelLaunchParams`` and ``SymIntExprs`` arrived in TensorRT 10.9."""


class TensorRTUnavailableError(RuntimeError):
    """The ``tensorrt`` package (>= 10.9, and so a CUDA host) is needed for this step."""


# TensorRT's DataType enum names (TensorDesc.dtype.name) and the spellings used on the command
# line, mapped to Triton's pointer element types.
TRITON_DTYPES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "FP32": "fp32", "FP16": "fp16"}
N_INPUTS, N_OUTPUTS = 4, 1
SCALAR_NAMES = ("N", "D", "C", "K", "stride_tb", "stride_tn", "stride_sc", "stride_sk", "stride_wc", "stride_lb")
LAUNCH_PARAM_TYPES = (".u64",) * N_INPUTS + (".u32",) * len(SCALAR_NAMES) + (".u64",) * N_OUTPUTS
"""PTX types of the parameters TensorRT passes: input pointers, int32 scalars, output pointers."""


def launch_param_types(*, map_output: bool = False) -> tuple[str, ...]:
    """``LAUNCH_PARAM_TYPES``, with the attention map's output pointer last for the two-output plugin."""
    return LAUNCH_PARAM_TYPES + ((".u64",) if map_output else ())


_STATIC_SHARED_LIMIT = 48 * 1024  # above this a launch needs an opt-in the AOT path does not make


def check_tensorrt_version(version: str) -> None:
    """Raise ``TensorRTUnavailableError`` unless ``version`` (e.g. "10.9.0.34") is >= 10.9."""
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers is None or (int(numbers[1]), int(numbers[2])) < MIN_TENSORRT:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: the PredilectionAttention AOT plugin needs TensorRT >= "
            f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} (tensorrt.plugin.aot_impl); use an NGC container or "
            "the `gpu` extra (the serving container's series, predilect.build.tensorrt.versions)"
        )


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, checked to be >= 10.9; ``TensorRTUnavailableError`` otherwise."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed: building or running an engine needs the `tensorrt` package "
            f"(>= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]}) on a CUDA host"
        ) from exc
    check_tensorrt_version(trt.__version__)
    return trt


@dataclass(frozen=True)
class AotKernel:
    """A compiled kernel and what its launch needs."""

    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    block_c: int


def _tactics() -> dict[int, Any]:
    from predilect.kernels.triton_source import TUNING_SPACE

    return {index + 1: cfg for index, cfg in enumerate(TUNING_SPACE)}


def ptx_entry_params(ptx: str, name: str) -> list[tuple[str, str]]:
    """``(ptx type, parameter name)`` of each parameter the entry ``name`` declares, in order."""
    header = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, flags=re.DOTALL)
    if header is None:
        raise ValueError(f"no .entry {name} in the PTX")
    params = []
    for line in header[1].split(","):
        words = line.split()
        if words:
            params.append((words[1], words[-1]))
    return params


def trim_ptx_params(ptx: str, name: str, keep: int) -> str:
    """The PTX with only the first ``keep`` parameters of ``name``; ValueError if the body reads a dropped one."""
    params = ptx_entry_params(ptx, name)
    dropped = [param for _, param in params[keep:]]
    body = ptx.split(".entry", 1)[1]
    for param in dropped:
        if len(re.findall(rf"\b{re.escape(param)}\b", body)) > 1:  # its declaration, and a use
            raise ValueError(f"the kernel reads {param}, which TensorRT does not pass")
    header = re.search(rf"(\.entry\s+{re.escape(name)}\s*\()(.*?)(\))", ptx, flags=re.DOTALL)
    assert header is not None  # ptx_entry_params found it
    lines = [line for line in header[2].split(",") if line.strip()][:keep]
    return ptx[: header.start(2)] + ",".join(lines) + "\n" + ptx[header.end(2) :]


def driver_ptx_version() -> int | None:
    """The newest PTX ISA the installed CUDA driver JIT-compiles (e.g. 87 for a 12.8 driver); None without one.

    Triton otherwise stamps the PTX with its bundled ptxas's ISA (9.x for CUDA 13), which an
    older driver refuses to load.
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    from triton.backends.nvidia.compiler import ptx_get_version

    return int(ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}"))


def ptxas_ptx_version(arch: int) -> Optional[int]:
    """The newest PTX ISA that the ptxas Triton assembles with accepts for ``arch`` (87 for a 12.8 ptxas).

    Triton turns the PTX into a cubin with its own ptxas even when only the PTX is kept, so PTX
    stamped newer than that ptxas (a CUDA 13 driver with Triton's bundled 12.8 ptxas) fails to compile.
    """
    from triton.backends.nvidia import compiler as nvidia

    query = nvidia.get_ptxas_version  # (arch) in newer Triton, () in older
    try:
        text = query(arch) if inspect.signature(query).parameters else query()
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", str(text))
    return int(nvidia.ptx_get_version(f"{found[1]}.{found[2]}")) if found else None


def aot_ptx_version(arch: int) -> Optional[int]:
    """The PTX ISA to stamp: the newest that both this host's driver loads and Triton's ptxas assembles."""
    known = [v for v in (driver_ptx_version(), ptxas_ptx_version(arch)) if v is not None]
    return min(known) if known else None


def compile_kernel(
    dtype: str,
    n_sites: int,
    tactic: int,
    *,
    target: Any = None,
    ptx_version: int | None = None,
    map_output: bool = False,
) -> AotKernel:
    """Compile the logits-only kernel for contiguous tensors of ``dtype`` (TensorRT's FLOAT, HALF or BF16).

    The compiled kernel's parameters are, in order: tokens, sites, weight, bias (inputs), the
    int32 scalars ``SCALAR_NAMES`` and logits (output): TensorRT's AOT calling convention. Unit
    strides and the unused attention-map arguments are compile-time constants. ``ptx_version``
    (e.g. 87 = PTX ISA 8.7) defaults to ``aot_ptx_version``: what both this host's driver and Triton's ptxas accept.
    ``map_output``: a plugin with the custom op's two outputs (logits, and the attention map,
    empty when not requested; Torch-TensorRT's generated descriptor) gets one more pointer,
    ``attn_ptr``, which the kernel never dereferences (``RETURN_ATTN`` is False).
    """
    import triton

    from predilect.kernels.triton_source import predilection_attention_kernel

    if dtype not in TRITON_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(TRITON_DTYPES)}")
    tactics = _tactics()
    if tactic not in tactics:
        raise ValueError(f"unknown tactic {tactic}; expected one of {sorted(tactics)}")
    if n_sites < 1:
        raise ValueError(f"sites_per_disease must be >= 1, got {n_sites}")
    cfg = tactics[tactic]
    element = TRITON_DTYPES[dtype]
    constexprs: dict[str, Any] = {
        "stride_td": 1,
        "stride_sd": 1,
        "stride_wd": 1,
        "stride_bias": 1,
        "stride_lc": 1,
        "stride_ab": 0,
        "stride_ac": 0,
        "stride_an": 0,
        "RETURN_ATTN": False,
        "DOT_PRECISION": "ieee" if element == "fp32" else "tf32",
        "BLOCK_K": triton.next_power_of_2(n_sites),
        "BLOCK_C": cfg.block_c,
        "BLOCK_N": cfg.block_n,
        "BLOCK_D": cfg.block_d,
    }
    outputs = ("logits_ptr", "attn_ptr") if map_output else ("logits_ptr",)
    pointers = ("tokens_ptr", "sites_ptr", "weight_ptr", "bias_ptr", *outputs)
    runtime = {name: f"*{element}" for name in pointers}
    runtime.update({name: "i32" for name in SCALAR_NAMES})
    if not map_output:
        constexprs["attn_ptr"] = None
    signature = {name: runtime.get(name, "constexpr") for name in predilection_attention_kernel.arg_names}
    source = triton.compiler.ASTSource(fn=predilection_attention_kernel, signature=signature, constexprs=constexprs)
    options: dict[str, Any] = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_fp_fusion": True}
    if ptx_version is None:
        arch = target.arch if target else triton.runtime.driver.active.get_current_target().arch
        ptx_version = aot_ptx_version(int(arch))
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = (
        triton.compile(source, target=target, options=options) if target else triton.compile(source, options=options)
    )
    if compiled.metadata.global_scratch_size or compiled.metadata.profile_scratch_size:
        raise RuntimeError(f"tactic {tactic} needs Triton scratch memory, which TensorRT's AOT launch cannot provide")
    name = compiled.metadata.name
    ptx = trim_ptx_params(compiled.asm["ptx"], name, len(launch_param_types(map_output=map_output)))
    return AotKernel(
        name=name,
        ptx=ptx,
        num_warps=compiled.metadata.num_warps,
        shared_mem=compiled.metadata.shared,
        block_c=cfg.block_c,
    )


def launch_scalars(n_tokens: Any, dim: Any, n_diseases: Any, n_sites: Any) -> tuple[Any, ...]:
    """The int32 scalars in ``SCALAR_NAMES`` order for contiguous (LINEAR) tensors.

    Works on ints and on TensorRT's symbolic shape expressions alike: the strides are products
    of the shapes, resolved at run time.
    """
    return (n_tokens, dim, n_diseases, n_sites, n_tokens * dim, dim, n_sites * dim, dim, dim, n_diseases)


def usable_tactics(n_sites: int, *, target: Any = None, map_output: bool = False) -> list[int]:
    """Tactics whose FP32 build (the largest) fits in 48 KiB of shared memory; at least one."""
    sizes = {
        tactic: compile_kernel("FLOAT", n_sites, tactic, target=target, map_output=map_output).shared_mem
        for tactic in _tactics()
    }
    fitting = [tactic for tactic, size in sizes.items() if size <= _STATIC_SHARED_LIMIT]
    return fitting or [min(sizes, key=sizes.__getitem__)]


_REGISTERED = False


def register_plugin() -> None:
    """Register the plugin's description, autotune and AOT implementation (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import_tensorrt()
    import tensorrt.plugin as trtp

    _define(trtp)
    _REGISTERED = True


def _define(trtp: Any) -> None:
    """The three QDP definitions; split out so that they read like the TensorRT samples.

    The annotations are evaluated here (no postponed evaluation in this module), so
    ``tensorrt.plugin`` sees the classes ``TensorDesc``, ``AutoTuneCombination``, ...
    """

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
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
    ) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
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
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006
        kernel = compile_kernel(tokens.dtype.name, sites_per_disease, tactic)
        return (kernel.name, kernel.ptx, *_launch(trtp, kernel, tokens, sites))


def _launch(trtp: Any, kernel: AotKernel, tokens: Any, sites: Any) -> tuple[Any, Any]:
    """Grid, block, shared memory and the int32 scalars of one launch, from the inputs' shape expressions."""
    batch, n_tokens, dim = tokens.shape_expr[0], tokens.shape_expr[1], tokens.shape_expr[2]
    n_diseases, n_sites = sites.shape_expr[0], sites.shape_expr[1]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = batch
    launch.grid_y = trtp.cdiv(n_diseases, kernel.block_c)
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared_mem
    scalars = launch_scalars(n_tokens, dim, n_diseases, n_sites)
    return launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])


# ----------------------------------------------------------------------------- the custom op's plugin
# Torch-TensorRT's ``generate_plugin(op)`` registers a descriptor for the torch custom op under the
# op's own name, computed from its fake implementation: inputs (tokens, sites, weight, bias), the
# attribute ``return_attention`` and the op's two outputs (logits, and the attention map, which is
# (B, C, 0) when not requested). It gives the descriptor a JIT implementation only (Python at run
# time, which Triton's tensorrt_plan backend does not have); ``define_op_plugin`` adds the AOT
# implementation (the same PTX as above, with the map's pointer, never written) and the tactics.
BoolAttr = np.ndarray[Any, np.dtype[np.bool_]]
"""The annotation ``generate_plugin`` gives a ``bool`` argument of the op; ours must be the same."""
_OP_SITES: dict[str, int] = {}
"""Sites per disease (K) of the model being built, per op plugin id: the kernel is compiled for it."""


def _op_sites(plugin_id: str, sites: Any = None) -> int:
    dim = None if sites is None else sites.shape_expr[1]
    if dim is not None and not dim.is_fake and dim.is_constant:  # sites is a weight: its shape is static
        return int(dim.constant_value())
    if plugin_id not in _OP_SITES:
        raise RuntimeError(f"no sites_per_disease set for {plugin_id}: call define_op_plugin first")
    return _OP_SITES[plugin_id]


def _attr_flag(value: Any) -> bool:
    return bool(np.asarray(value).reshape(()).item())


def define_op_plugin(trtp: Any, plugin_id: str, *, sites_per_disease: int) -> None:
    """Autotune + AOT implementation for the descriptor Torch-TensorRT generated for the custom op.

    Call after ``generate_plugin(plugin_id)`` and before ``generate_plugin_converter``; a later
    call (another model in the same process) only updates ``sites_per_disease``.
    """
    if sites_per_disease < 1:
        raise ValueError(f"sites_per_disease must be >= 1, got {sites_per_disease}")
    known = plugin_id in _OP_SITES
    _OP_SITES[plugin_id] = sites_per_disease
    if not known:
        _define_op(trtp, plugin_id)


def _define_op(trtp: Any, plugin_id: str) -> None:
    @trtp.autotune(plugin_id)
    def _autotune(
        tokens: trtp.TensorDesc,
        sites: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        return_attention: BoolAttr,
        outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],  # noqa: UP006
    ) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        # Four inputs and two outputs (logits, empty map) share one type.
        combination = trtp.AutoTuneCombination(", ".join(["FP32|FP16|BF16"] * 6), "LINEAR")
        combination.tactics(usable_tactics(_op_sites(plugin_id), map_output=True))
        return [combination]

    @trtp.aot_impl(plugin_id)
    def _aot(
        tokens: trtp.TensorDesc,
        sites: trtp.TensorDesc,
        weight: trtp.TensorDesc,
        bias: trtp.TensorDesc,
        return_attention: BoolAttr,
        outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],  # noqa: UP006
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006
        if _attr_flag(return_attention):
            raise ValueError(f"{plugin_id}: the AOT plugin computes logits only; export with return_attention=False")
        kernel = compile_kernel(tokens.dtype.name, _op_sites(plugin_id, sites), tactic, map_output=True)
        return (kernel.name, kernel.ptx, *_launch(trtp, kernel, tokens, sites))
