"""``python -m predilect.build.tensorrt.versions_cli``: the serving TensorRT series, and whether this host has it.

No option: print the story (``versions``). ``--libnvinfer``: check the ``libnvinfer`` this host loads
(what the Dockerfile runs before it installs the matching bindings); ``--bindings``: check the
installed ``tensorrt`` module (what ``make gpu-check`` runs). Exit 1 on another series or none.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from predilect.build.tensorrt.versions import (
    SERVING_CONTAINER,
    SERVING_CUDA_MAJOR,
    SERVING_TENSORRT,
    TensorRTVersionError,
    check_served_tensorrt,
    libnvinfer_version,
    served_requirement,
)


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m predilect.build.tensorrt.versions_cli"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--libnvinfer", action="store_true", help="check the libnvinfer this host loads")
    which.add_argument("--bindings", action="store_true", help="check the installed tensorrt module")
    args = p.parse_args(argv)
    want = ".".join(map(str, SERVING_TENSORRT))
    serving = f"tritonserver {SERVING_CONTAINER}-py3, CUDA {SERVING_CUDA_MAJOR}, TensorRT {want}"
    print(f"serving: {serving}: {served_requirement()}")
    if not (args.libnvinfer or args.bindings):
        return 0
    try:
        if args.libnvinfer:
            found = libnvinfer_version()
        else:
            import tensorrt

            found = str(tensorrt.__version__)
    except (OSError, ImportError) as e:
        print(f"no TensorRT found: {e}", file=sys.stderr)
        return 1
    try:
        check_served_tensorrt(found)
    except TensorRTVersionError as e:
        print(f"TensorRT {found}: {e}", file=sys.stderr)
        return 1
    print(f"TensorRT {found}: the serving series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
