"""Fused kernels. ``predilection_attention`` is the public entry point.

Importing this package imports neither torch nor Triton: the names below load on first use
(PEP 562), so the TensorRT plugin can compile ``triton_source`` in a container without torch.
Using ``predilection_attention`` registers the ``predilect::predilection_attention`` custom op.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers
    from predilect.kernels._spec import (
        MAX_DIM,
        MAX_QUERIES,
        MAX_TOKENS,
        byte_count,
        check_inputs,
        flop_count,
        is_supported,
    )
    from predilect.kernels.attention import predilection_attention_reference
    from predilect.kernels.predilection_attention import OP_NAME, predilection_attention

_EXPORTS = {
    "MAX_DIM": "._spec",
    "MAX_QUERIES": "._spec",
    "MAX_TOKENS": "._spec",
    "byte_count": "._spec",
    "check_inputs": "._spec",
    "flop_count": "._spec",
    "is_supported": "._spec",
    "OP_NAME": ".predilection_attention",
    "predilection_attention": ".predilection_attention",
    "predilection_attention_reference": ".attention",
}

__all__ = [
    "MAX_DIM",
    "MAX_QUERIES",
    "MAX_TOKENS",
    "OP_NAME",
    "byte_count",
    "check_inputs",
    "flop_count",
    "is_supported",
    "predilection_attention",
    "predilection_attention_reference",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name], __name__)
    # Importing the submodule ``predilection_attention`` binds the module under that name here;
    # the function of the same name must win, as with an eager ``from ... import``: bind every
    # export of the module just imported.
    for export, source in _EXPORTS.items():
        if source == _EXPORTS[name]:
            globals()[export] = getattr(module, export)
    return globals()[name]
