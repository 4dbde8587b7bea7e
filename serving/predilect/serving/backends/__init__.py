"""Python-backend models of the served pipeline.

Each module holds pure, testable logic plus a ``TritonPythonModel`` adapter that runs in
Triton's Python-backend stub; ``triton_python_backend_utils`` exists only inside the stub,
so the adapters import it in ``initialize``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def model_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model config (as Triton passes it, JSON-decoded) as plain strings."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def parse_model_config(args: Mapping[str, str]) -> dict[str, Any]:
    """The model config from the ``args`` that Triton passes to ``initialize``."""
    return json.loads(args["model_config"])
