"""Fused kernels. ``predilection_attention`` is the public entry point; importing this
package registers the ``predilect::predilection_attention`` custom op but not Triton."""

from __future__ import annotations

from ..attention import predilection_attention_reference
from ._spec import MAX_DIM, MAX_QUERIES, MAX_TOKENS, byte_count, check_inputs, flop_count, is_supported
from .predilection_attention import OP_NAME, predilection_attention

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
