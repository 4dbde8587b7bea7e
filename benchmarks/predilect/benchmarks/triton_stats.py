"""Triton's own per-model timings (statistics extension), as deltas over a benchmark point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelTimes:
    """Per-request averages over an interval for one model, in milliseconds."""

    model: str
    requests: int
    executions: int
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    # Mean time in the server from arrival to response (the statistics' ``success`` duration).
    request_ms: float = float("nan")

    @property
    def mean_batch(self) -> float:
        return self.requests / self.executions if self.executions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_batch": self.mean_batch}


Snapshot = dict[str, dict[str, int]]


def snapshot(grpc_url: str) -> Snapshot:
    """Cumulative counters of every model: ``{model: {"requests", "executions", "<phase>_ns"}}``."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    result: Snapshot = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        counters = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "success_ns": int(inference.get("success", {}).get("ns", 0)),
            "executions": int(model.get("execution_count", 0)),
        }
        for phase in PHASES:
            counters[f"{phase}_ns"] = int(inference.get(phase, {}).get("ns", 0))
        result[model["name"]] = counters
    return result


def interval_times(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]) -> list[ModelTimes]:
    """Per-request mean time in each phase for every model that served requests in between."""
    times = []
    for name, end in sorted(after.items()):
        start = before.get(name, {})
        requests = end["requests"] - start.get("requests", 0)
        if requests <= 0:
            continue
        per_request = {phase: (end[f"{phase}_ns"] - start.get(f"{phase}_ns", 0)) / requests / 1e6 for phase in PHASES}
        times.append(
            ModelTimes(
                model=name,
                requests=requests,
                executions=end["executions"] - start.get("executions", 0),
                queue_ms=per_request["queue"],
                compute_input_ms=per_request["compute_input"],
                compute_infer_ms=per_request["compute_infer"],
                compute_output_ms=per_request["compute_output"],
                request_ms=(end.get("success_ns", 0) - start.get("success_ns", 0)) / requests / 1e6,
            )
        )
    return times
