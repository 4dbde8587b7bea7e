"""A no-op stand-in for a Python-backend step, to measure what the serving stack costs on its own.

It takes the step's ``config.pbtxt`` as ``predilect assemble`` generated it (same model name,
tensors, batcher and instances) and answers every request with constant zero arrays of the
configured outputs (names, dims, data types), but ``REFERRAL``, which says ``no_referral``: the one
decision consistent with zero probabilities, no finding and no quality reason, so the client takes the
answer as a screening result. The request still crosses gRPC, the ensemble
scheduler, the dynamic batcher and the Python backend's shared memory both ways, and each input
is read as the real step reads it, but nothing is decoded, graded or inferred.
``predilect.benchmarks.sweep.noop_repository`` puts it in place of a repository's Python steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from predilect import contract

FILL = {contract.REFERRAL: contract.DECISIONS.index("no_referral")}
"""Outputs answered with another constant than zero."""
SHIM = "from predilect.benchmarks.noop_backend import TritonPythonModel  # noqa: F401\n"
"""The ``model.py`` that loads this stand-in in a step's version folder."""


def constant_outputs(outputs: Sequence[Mapping[str, Any]], to_numpy: Callable[[str], Any]) -> dict[str, np.ndarray]:
    """One request's answer: ``{name: [1, *dims] array}`` for each output of a model config (its JSON form:
    ``name``, ``data_type`` such as ``TYPE_FP32``, ``dims``), zeros or the output's ``FILL``; ``to_numpy`` maps
    a data type to a NumPy type."""
    answer = {}
    for output in outputs:
        dims = [int(d) for d in output.get("dims", [])]
        if any(d < 0 for d in dims):
            raise ValueError(f"output {output['name']} has a variable dimension {dims}: no constant answers it")
        fill = FILL.get(output["name"], 0)
        answer[output["name"]] = np.full((1, *dims), fill, dtype=to_numpy(output["data_type"]))
    return answer


class TritonPythonModel:
    """Triton adapter: reads each request's inputs, answers the constant arrays."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self._inputs = [tensor["name"] for tensor in config["input"]]
        self._answer = constant_outputs(config["output"], pb_utils.triton_string_to_numpy)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        responses = []
        for request in requests:
            for name in self._inputs:  # the real steps read their inputs as NumPy views of shared memory
                pb.get_input_tensor_by_name(request, name).as_numpy()
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in self._answer.items()]))
        return responses
