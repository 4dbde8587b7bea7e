"""The ``dali_mixed`` decoder: the DALI graph (``predilect.preprocess.dali``) with nvJPEG decode on a GPU.

What the GPU profile's ``preprocess`` step serves (``dali.py``, the same pipeline factory); in a
``Preprocessor`` it needs a ``device_id``, the field of view is measured on the host before each
run (``predilect.preprocess.field``), and its outputs are copied back to the host.
"""

from __future__ import annotations

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.dali import DaliDecoder


def open_decoder(cfg: PreprocessCfg, *, max_batch_size: int, num_threads: int, device_id: int | None) -> DaliDecoder:
    """The ``dali_mixed`` backend of ``cfg`` on GPU ``device_id`` (refused without one)."""
    return DaliDecoder(cfg, max_batch_size=max_batch_size, num_threads=num_threads, device_id=device_id)
