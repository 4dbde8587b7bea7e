"""The engine cache on a volume shared by replicas: whole files only, one build per plan."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from predilect import contract
from predilect.build.tensorrt.engine import write_engine
from predilect.build.tensorrt.engine_cache import LOCK_FILENAME, cached_plan
from predilect.build.tensorrt.sidecar import EngineSidecar, TensorShapes, read_sidecar, sidecar_path

PLAN_BYTES = 8 << 20  # large enough that two writers overlap
CONTAINER_PID = 7  # replicas of one image: the same PID in each container's namespace


def _sidecar(builder: str) -> EngineSidecar:
    shapes = TensorShapes(contract.PIXELS, "fp32", (1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))
    return EngineSidecar(
        tensorrt_version="10.13.2.6",
        gpu_name=builder,
        compute_capability="9.0",
        precision="fp16",
        frontend="onnx",
        onnx_sha256="ab" * 32,
        catalog_digest="",
        model_name="m",
        model_version="1",
        plugin=True,
        inputs=(shapes,),
        outputs=(TensorShapes(contract.LOGITS, "fp32", (1, 22), (8, 22), (16, 22)),),
    )


def _plan(builder: str) -> bytes:
    return (builder.encode() * (PLAN_BYTES // len(builder) + 1))[:PLAN_BYTES]


def _race(target, plan: Path, builders: tuple[str, ...], results: Path) -> dict[str, str]:
    """Run ``target(plan, builder, barrier, results)`` in one process per builder, released together;
    each writes what it did to ``results / builder``."""
    results.mkdir(parents=True)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(builders))
    processes = [context.Process(target=target, args=(plan, b, barrier, results)) for b in builders]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * len(builders), "a writer failed (see its traceback above)"
    return {b: (results / b).read_text() for b in builders}


def _as_in_a_container() -> None:
    os.getpid = lambda: CONTAINER_PID


def _write(plan: Path, builder: str, barrier, results: Path) -> None:
    barrier.wait()
    _as_in_a_container()
    write_engine(plan, _plan(builder), _sidecar(builder))
    (results / builder).write_text("wrote")


def _build_once(plan: Path, builder: str, barrier, results: Path) -> None:
    def build(path: Path) -> None:
        time.sleep(0.5)  # a TensorRT build takes minutes: the other replica arrives meanwhile
        write_engine(path, _plan(builder), _sidecar(builder))

    barrier.wait()
    _as_in_a_container()
    built = cached_plan(plan, reusable=lambda p: sidecar_path(p).is_file(), build=build)
    (results / builder).write_text("built" if built else "reused")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("model.plan", "model.plan.json", LOCK_FILENAME))


def test_write_engine_leaves_one_whole_plan_when_two_same_pid_writers_race(tmp_path: Path) -> None:
    plan = tmp_path / "sm90-trt10.13.2.6" / "abcd" / "model.plan"
    _race(_write, plan, ("replica-a", "replica-b"), tmp_path / "results")
    data = plan.read_bytes()
    assert data in (_plan("replica-a"), _plan("replica-b"))  # one writer's whole plan, not a mix
    assert _leftovers(plan.parent) == []  # no temporary file left behind


def test_cached_plan_builds_once_and_pairs_plan_with_sidecar_when_two_builders_race(tmp_path: Path) -> None:
    plan = tmp_path / "sm90-trt10.13.2.6" / "abcd" / "model.plan"
    outcomes = _race(_build_once, plan, ("replica-a", "replica-b"), tmp_path / "results")
    assert sorted(outcomes.values()) == ["built", "reused"]  # one built, the other waited and reused it
    (builder,) = [name for name, done in outcomes.items() if done == "built"]
    assert plan.read_bytes() == _plan(builder) and read_sidecar(plan).gpu_name == builder
    assert _leftovers(plan.parent) == []
