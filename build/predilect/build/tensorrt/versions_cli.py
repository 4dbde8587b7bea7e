"""``python -m predilect.build.tensorrt.versions_cli``: the serving TensorRT series, and whether this host has it.

No option: print the story (``versions``). ``--libnvinfer``: check the ``libnvinfer`` this host loads;
with ``--requirement``, print only the pip requirement of exactly its bindings (what the Dockerfile
installs). ``--bindings``: check the installed ``tensorrt`` module (what ``make gpu-check`` and the
Dockerfile run after installing it). Exit 1 on another series or none.
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
    bindings_requirement,
    libnvinfer_version,
    served_requirement,
)


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m predilect.build.tensorrt.versions_cli"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--libnvinfer", action="store_true", help="check the libnvinfer this host loads")
    which.add_argument("--bindings", action="store_true", help="check the installed tensorrt module")
    p.add_argument("--requirement", action="store_true", help="with --libnvinfer: print its bindings' requirement")
    args = p.parse_args(argv)
    if args.requirement and not args.libnvinfer:
        p.error("--requirement goes with --libnvinfer")
    want = ".".join(map(str, SERVING_TENSORRT))
    serving = f"tritonserver {SERVING_CONTAINER}-py3, CUDA {SERVING_CUDA_MAJOR}, TensorRT {want}"
    if not args.requirement:
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
        requirement = bindings_requirement(found)
    except TensorRTVersionError as e:
        print(f"TensorRT {found}: {e}", file=sys.stderr)
        return 1
    print(requirement if args.requirement else f"TensorRT {found}: the serving series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
