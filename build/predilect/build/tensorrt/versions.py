"""One TensorRT version story: the serving container, its CUDA and TensorRT, and the wheel that matches.

A TensorRT plan deserializes only in the TensorRT version that built it, so the engine must be
built by the Python bindings of the very ``libnvinfer`` that Triton's ``tensorrt_plan`` backend
loads. The serving image is NGC ``tritonserver:25.08-py3`` (``docker/Dockerfile``), built on CUDA
13.0.0 (NVIDIA's 25.08 release notes); its TensorRT is the 10.13 series (the first TensorRT whose
CUDA-13 wheel, ``tensorrt-cu13``, exists is 10.13.2). Everything that installs TensorRT takes it
from here: the ``gpu`` extra (``served_requirement``), ``make gpu-check`` and the Dockerfile (both
run this module, which refuses another series), and ``repository_engine.ensure_engine``, which
refuses to put a plan of another series into a repository the container will serve.

The Torch-TensorRT route is not a serving route: ``torch-tensorrt`` 2.13 (the series that goes
with the project's torch 2.13) requires TensorRT 11.0, whose plans the 25.08 server cannot
deserialize, so ``--frontend torch --model-repository`` is refused (``check_served_tensorrt``).

``python -m predilect.build.tensorrt.versions_cli`` prints the story and checks what is installed
(``versions_cli``). Nothing here imports TensorRT.
"""

from __future__ import annotations

import ctypes
import re

from predilect.errors import UserError

SERVING_CONTAINER = "25.08"
"""The NGC ``nvcr.io/nvidia/tritonserver:<tag>-py3`` release the GPU profile is served by."""
SERVING_CUDA_MAJOR = 13
"""Its CUDA major version (25.08: CUDA 13.0.0), which picks the wheel: ``tensorrt-cu13``."""
SERVING_TENSORRT = (10, 13)
"""Its TensorRT series (major, minor)."""
TENSORRT_WHEEL = f"tensorrt-cu{SERVING_CUDA_MAJOR}"


class TensorRTVersionError(UserError):
    """A TensorRT of another series than the serving container's, where a served plan is made."""


def series(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a TensorRT version string ("10.13.2.6" -> (10, 13))."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(found[1]), int(found[2])


def served_requirement() -> str:
    """The pip requirement of the bindings that build plans the serving container loads."""
    major, minor = SERVING_TENSORRT
    return f"{TENSORRT_WHEEL}>={major}.{minor},<{major}.{minor + 1}"


def bindings_requirement(libnvinfer: str) -> str:
    """The pip requirement of exactly the bindings of ``libnvinfer`` ("10.13.2" -> ``tensorrt-cu13==10.13.2.*``)."""
    check_served_tensorrt(libnvinfer)
    return f"{TENSORRT_WHEEL}=={libnvinfer}.*"


def check_served_tensorrt(version: str) -> None:
    """Raise ``TensorRTVersionError`` unless ``version`` is of the serving container's series."""
    if series(version) != SERVING_TENSORRT:
        want = ".".join(map(str, SERVING_TENSORRT))
        raise TensorRTVersionError(
            f"TensorRT {version} builds plans that tritonserver {SERVING_CONTAINER} (TensorRT {want}, CUDA "
            f"{SERVING_CUDA_MAJOR}) cannot deserialize; build the repository's engine with the onnx frontend and "
            f"`{served_requirement()}` (the `gpu` extra, or the container's entrypoint). The torch frontend "
            "(torch-tensorrt 2.13, TensorRT 11.0) is not a serving route"
        )


def libnvinfer_version(major: int = SERVING_TENSORRT[0]) -> str:
    """The version of ``libnvinfer.so.<major>`` as loaded here (what Triton's TensorRT backend links)."""
    library = ctypes.CDLL(f"libnvinfer.so.{major}")
    value = int(library.getInferLibVersion())
    return f"{value // 10000}.{value // 100 % 100}.{value % 100}"
