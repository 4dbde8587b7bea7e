"""Where the served throughput falls short of the in-process bound, part by part (``predilect bench gap``).

One run measures, at one concurrency, side by side: the bound; the default repository straight to
tritonserver's gRPC port (the reference, as ``make bench`` serves it) and through the nginx front
``predilect serve`` runs; the same with every Python-backend step a no-op of the same tensors
(``noop_backend``: what the serving stack costs alone); the dynamic batcher's delay and the instance
count swept around their defaults; the reference again at the end (how far two runs of one config
differ on this machine).

The gap is accounted for in wall milliseconds per image, ``1000 / images_per_s``, which add up where
images/s do not. Its parts (``breakdown``), from the CPU each process used per image spread over the
machine's cores, sum to the gap by construction:

* load generator: Locust's CPU at the reference point (it shares the server's cores);
* serving stack: the no-op server's CPU per image (gRPC, the ensemble and the batcher, the Python
  backend's shared-memory copies both ways, with no work in the step);
* model step, over the bound: the served server's CPU per image beyond the stack and beyond what
  the same computation costs in process;
* cores not kept busy: the rest, the wall time per image no process of the run spent CPU in, beyond
  what the bound itself left unused (batcher waits, instances waiting on each other, other tenants).

Beside them, not in the sum: the front's cost on top of the gap, and what the best batcher delay and
the best instance count swept would recover (each the best of a few noisy points, so read it beside
the repeat's difference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE, FRONT, NOOP, NOOP_FRONT, DELAY, INSTANCES, REPEAT = (
    "reference",
    "front",
    "noop",
    "noop_front",
    "delay",
    "instances",
    "repeat",
)


@dataclass(frozen=True)
class GapPoint:
    """One served configuration of the run: ``ServingOptions`` overrides, the front, the no-op steps."""

    name: str
    role: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    front: bool = False
    noop: bool = False


def gap_points(*, queue_delay_us: int, instances: int) -> list[GapPoint]:
    """The run's configurations around the defaults ``queue_delay_us`` and ``instances`` (of the fused step):
    no delay, half, double; one instance fewer (at least 1) and one more; the reference first and last."""
    delays = sorted({0, queue_delay_us // 2, 2 * queue_delay_us} - {queue_delay_us})
    counts = sorted({max(1, instances - 1), instances + 1} - {instances})
    return [
        GapPoint(f"defaults, direct (delay {queue_delay_us} us, {instances} instances)", REFERENCE),
        GapPoint("defaults, through the nginx front", FRONT, front=True),
        GapPoint("no-op step, direct", NOOP, noop=True),
        GapPoint("no-op step, through the nginx front", NOOP_FRONT, front=True, noop=True),
        *(GapPoint(f"queue delay {d} us, direct", DELAY, {"max_queue_delay_us": d}) for d in delays),
        *(GapPoint(f"{n} instances, direct", INSTANCES, {"fused_instances": n}) for n in counts),
        GapPoint("defaults, direct, again (the run's noise)", REPEAT),
    ]


@dataclass(frozen=True)
class Measured:
    """What the breakdown reads of one served point: throughput, and CPU per image of server and load generator."""

    images_per_s: float
    server_cpu_ms_per_image: float
    loadgen_cpu_ms_per_image: float

    @property
    def ms_per_image(self) -> float:
        return wall_ms_per_image(self.images_per_s)

    @classmethod
    def of_point(cls, point: Mapping[str, Any]) -> Measured:
        """From a ``sweep.run_point`` result: CPU over every request the server answered in the Locust run."""
        served = point.get("served_requests") or 0
        per = 1000.0 / served if served else math.nan
        return cls(
            images_per_s=point["requests_per_s"],
            server_cpu_ms_per_image=point["server_cpu_s"] * per,
            loadgen_cpu_ms_per_image=point.get("loadgen_cpu_s", math.nan) * per,
        )


def wall_ms_per_image(images_per_s: float) -> float:
    return 1000.0 / images_per_s if images_per_s > 0 else math.nan


@dataclass(frozen=True)
class Part:
    """A part of the gap: wall ms per image, its share of the gap (NaN where served is not below the bound), the
    images/s without it, and the CPU ms per image it stands for (NaN for a part not read from CPU time)."""

    name: str
    ms_per_image: float
    share: float
    images_per_s_without: float
    says: str
    cpu_ms_per_image: float = math.nan


@dataclass(frozen=True)
class Breakdown:
    bound_images_per_s: float
    served_images_per_s: float
    gap_ms_per_image: float
    parts: tuple[Part, ...]
    beside: tuple[Part, ...]

    @property
    def gap_images_per_s(self) -> float:
        return self.bound_images_per_s - self.served_images_per_s

    @property
    def served_over_bound(self) -> float:
        return self.served_images_per_s / self.bound_images_per_s if self.bound_images_per_s else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "gap_images_per_s": self.gap_images_per_s,
            "served_over_bound": self.served_over_bound,
        }


def _best(reference: Measured, others: Mapping[str, Measured]) -> tuple[str, float]:
    """The fastest of ``others`` and the wall ms per image it saves on the reference (0 when none is faster)."""
    best_name, best_ms = "the default", reference.ms_per_image
    for name, m in others.items():
        if m.ms_per_image < best_ms:
            best_name, best_ms = name, m.ms_per_image
    return best_name, reference.ms_per_image - best_ms


def breakdown(
    *,
    cores: int,
    bound_images_per_s: float,
    bound_cpu_ms_per_image: float,
    reference: Measured,
    noop: Measured,
    front: Measured | None = None,
    noop_front: Measured | None = None,
    delays: Mapping[str, Measured] | None = None,
    instances: Mapping[str, Measured] | None = None,
    repeat: Measured | None = None,
) -> Breakdown:
    """The gap ``1000/served - 1000/bound`` (wall ms per image) in parts that sum to it, and what lies beside
    (the module docstring says what each part is)."""
    t_ref, t_bound = reference.ms_per_image, wall_ms_per_image(bound_images_per_s)
    gap = t_ref - t_bound

    def part(name: str, ms: float, says: str, *, cpu: bool = True) -> Part:
        without = t_ref - ms
        share = ms / gap if gap > 0 else math.nan
        return Part(
            name, ms, share, 1000.0 / without if without > 0 else math.inf, says, ms * cores if cpu else math.nan
        )

    loadgen = reference.loadgen_cpu_ms_per_image / cores
    stack = noop.server_cpu_ms_per_image / cores
    step = (reference.server_cpu_ms_per_image - noop.server_cpu_ms_per_image - bound_cpu_ms_per_image) / cores
    idle = gap - loadgen - stack - step
    parts = (
        part("load generator (Locust on the same cores)", loadgen, "its CPU per image at the reference point"),
        part(
            "serving stack (no-op step)",
            stack,
            "gRPC, ensemble, batcher, Python-backend copies: the no-op server's CPU per image",
        ),
        part(
            "model step in the server, over the bound",
            step,
            "served server CPU per image minus the stack's minus the bound's",
        ),
        part(
            "cores not kept busy",
            idle,
            "wall time per image no process of the run used, beyond what the bound left unused",
            cpu=False,
        ),
    )
    beside: list[Part] = []
    if front is not None:
        # The front's CPU per image: on the no-op pair where measured (the model's CPU does not blur it there).
        pair = (noop_front, noop) if noop_front is not None else (front, reference)
        nginx_cpu = pair[0].server_cpu_ms_per_image - pair[1].server_cpu_ms_per_image
        beside.append(
            dataclasses.replace(
                part(
                    "nginx front, on top of the gap",
                    -(t_ref - front.ms_per_image),
                    "wall: through the front minus direct; CPU: the no-op server through it minus direct",
                    cpu=False,
                ),
                cpu_ms_per_image=nginx_cpu,
            )
        )
    for label, options in (("batcher delay", delays), ("instance count", instances)):
        if options:
            name, saved = _best(reference, options)
            beside.append(part(f"{label}, best swept", saved, f"recovered by {name}", cpu=False))
    if repeat is not None:
        beside.append(
            part(
                "the run's noise",
                abs(repeat.ms_per_image - t_ref),
                "the reference measured again at the end",
                cpu=False,
            )
        )
    return Breakdown(bound_images_per_s, reference.images_per_s, gap, parts, tuple(beside))


def breakdown_of_run(
    *, cores: int, bound: Mapping[str, Any], points: Sequence[tuple[GapPoint, Mapping[str, Any]]]
) -> Breakdown:
    """``breakdown`` from a run's bound (``InProcessResult`` as a dict) and its measured points."""
    by_role: dict[str, list[tuple[str, Measured]]] = {}
    for point, result in points:
        if "failed" not in result:
            by_role.setdefault(point.role, []).append((point.name, Measured.of_point(result)))

    def one(role: str) -> Measured | None:
        found = by_role.get(role)
        return found[0][1] if found else None

    reference, noop = one(REFERENCE), one(NOOP)
    if reference is None or noop is None:
        raise ValueError("the run measured no reference or no no-op point: no breakdown")
    return breakdown(
        cores=cores,
        bound_images_per_s=bound["images_per_s"],
        bound_cpu_ms_per_image=bound["cpu_s"] / bound["images"] * 1000.0,
        reference=reference,
        noop=noop,
        front=one(FRONT),
        noop_front=one(NOOP_FRONT),
        delays=dict(by_role.get(DELAY, [])),
        instances=dict(by_role.get(INSTANCES, [])),
        repeat=one(REPEAT),
    )


def breakdown_table(result: Breakdown) -> list[str]:
    """The parts as markdown: ms per image, share of the gap, images/s without the part."""
    lines = [
        "| part | wall ms per image | share of the gap | images/s without it | CPU ms per image | how it is measured |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for section, parts in (("", result.parts), ("beside: ", result.beside)):
        for p in parts:
            share = "n/a" if math.isnan(p.share) else f"{p.share:.0%}"
            cpu = "" if math.isnan(p.cpu_ms_per_image) else f"{p.cpu_ms_per_image:.2f}"
            lines.append(
                f"| {section}{p.name} | {p.ms_per_image:.2f} | {share} | {p.images_per_s_without:.1f} | {cpu} | "
                f"{p.says} |"
            )
    lines.append(
        f"| **gap** (bound {result.bound_images_per_s:.1f} - served {result.served_images_per_s:.1f} = "
        f"{result.gap_images_per_s:.1f} images/s; served {result.served_over_bound:.0%} of the bound) | "
        f"{result.gap_ms_per_image:.2f} | {'100%' if result.gap_ms_per_image > 0 else 'n/a'} | "
        f"{result.bound_images_per_s:.1f} | | the sum of the four parts above 'beside' |"
    )
    return lines
