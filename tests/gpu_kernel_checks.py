"""CUDA checks of the fused kernel, run by test_kernel_gpu.py in a fresh interpreter (no TRITON_INTERPRET).

    python tests/gpu_kernel_checks.py kernel   # Triton kernel (split and unsplit) vs the reference, fp32/fp16/bf16
    python tests/gpu_kernel_checks.py aot      # the plugin's PTX through the CUDA driver with TensorRT's 15 params
Prints one line per check and exits 1 on the first failure.
"""

from __future__ import annotations

import ctypes
import sys

import torch

from predilect.kernels.attention import predilection_attention_reference as reference


def _inputs(b: int, n: int, d: int, c: int, k: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((b, n, d), (c, k, d), (c, d), (c,))
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).cuda() for s in shapes]


def _err(x: torch.Tensor, exact: torch.Tensor) -> float:
    return (x.double().cpu() - exact.cpu()).abs().max().item()


def check_kernel() -> None:
    from predilect.kernels import _triton_predilection as kernel

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for b, n, d, c, k in ((1, 196, 128, 28, 4), (16, 577, 40, 7, 3), (3, 197, 384, 28, 8)):
            args = _inputs(b, n, d, c, k, dtype)
            exact, _ = reference(*(a.double() for a in args))
            ref_err = _err(reference(*args)[0], exact)
            floor = 1e-5 if dtype == torch.float32 else 0.0
            for splits in (None, 1, 3):
                logits = torch.full((b, c), float("nan"), dtype=dtype, device="cuda")
                tokens, sites, weight, bias = args
                kernel.launch(tokens, sites, weight, bias, logits, splits=splits)
                err = _err(logits, exact)
                ok = not logits.isnan().any() and err <= 2 * ref_err + floor
                print(f"kernel {dtype} B{b} N{n} D{d} C{c} K{k} splits={splits}: {err:.2e} vs ref {ref_err:.2e}")
                if not ok:
                    sys.exit(1)


def check_aot() -> None:
    from cuda.bindings import driver as cu

    from predilect.build.tensorrt.plugin import LAUNCH_PARAM_TYPES, compile_kernel, launch_scalars, ptx_entry_params

    torch.zeros(1, device="cuda")  # makes torch's primary context current for the driver calls below
    b, n, d, c, k = 5, 196, 128, 28, 4
    for dtype, name in ((torch.float32, "FLOAT"), (torch.float16, "HALF"), (torch.bfloat16, "BF16")):
        kernel = compile_kernel(name, k, 1)  # this GPU, this driver's PTX ISA
        assert tuple(t for t, _ in ptx_entry_params(kernel.ptx, kernel.name)) == LAUNCH_PARAM_TYPES
        err, module = cu.cuModuleLoadData(kernel.ptx.encode() + b"\0")
        assert int(err) == 0, f"cuModuleLoadData: {err}"
        err, function = cu.cuModuleGetFunction(module, kernel.name.encode())
        assert int(err) == 0, err
        tokens, sites, weight, bias = _inputs(b, n, d, c, k, dtype)
        logits = torch.full((b, c), float("nan"), dtype=dtype, device="cuda")
        pointers = [ctypes.c_uint64(t.data_ptr()) for t in (tokens, sites, weight, bias)]
        scalars = [ctypes.c_int32(v) for v in launch_scalars(n, d, c, k)]
        params = [*pointers, *scalars, ctypes.c_uint64(logits.data_ptr())]  # exactly TensorRT's 15
        array = (ctypes.c_void_p * len(params))(*[ctypes.addressof(p) for p in params])
        grid_y = (c + kernel.block_c - 1) // kernel.block_c
        (err,) = cu.cuLaunchKernel(
            function,
            b,
            grid_y,
            1,
            kernel.num_warps * 32,
            1,
            1,
            kernel.shared_mem,
            torch.cuda.current_stream().cuda_stream,
            ctypes.addressof(array),
            0,
        )
        assert int(err) == 0, err
        torch.cuda.synchronize()
        exact, _ = reference(*(a.double() for a in (tokens, sites, weight, bias)))
        ref_err = _err(reference(tokens, sites, weight, bias)[0], exact)
        got = _err(logits, exact)
        print(f"aot {name}: {got:.2e} vs ref {ref_err:.2e}")
        if logits.isnan().any() or got > 2 * ref_err + (1e-5 if dtype == torch.float32 else 0.0):
            sys.exit(1)


if __name__ == "__main__":
    {"kernel": check_kernel, "aot": check_aot}[sys.argv[1]]()
