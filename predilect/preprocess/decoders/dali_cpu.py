"""The ``dali_cpu`` decoder: the DALI graph (``predilect.preprocess.dali``) on the host, full-resolution decode.

libjpeg-turbo / libpng inside DALI; no GPU (``device_id`` may be None); the field of view measured
on the host first, as for every DALI graph (``predilect.preprocess.field``). The CPU twin of the GPU
profile's ``dali_mixed`` step: the same graph, the same pipeline factory.
"""

from __future__ import annotations

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.dali import DaliDecoder


def open_decoder(cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None) -> DaliDecoder:
    """The ``dali_cpu`` backend of ``cfg``: one pipeline of ``max_batch_size`` images, built on first use."""
    return DaliDecoder(cfg, max_batch_size=max_batch_size, num_threads=num_threads, device_id=device_id)
