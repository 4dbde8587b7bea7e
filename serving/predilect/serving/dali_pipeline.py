"""The GPU profile's DALI pipeline: the one ``PreprocessCfg`` as a DALI-backend model.

``preprocess/1/dali.py`` in a GPU model repository is a few lines that read
``dali_params.json`` beside it (written by ``predilect assemble --profile gpu``) and decorate
``serving_graph`` with ``@autoserialize`` / ``@pipeline_def``; Triton's DALI backend
serialises it at load. The graph is ``predilect.preprocess.fundus_graph``, the very operators
training and the CPU profile run, fed from an external source named ``IMAGE`` (the ensemble's
ragged input) and returning ``PIXELS``, ``FOV_EXTENT`` (the field of view's width, height)
and ``FRAME_EXTENT`` (the decoded photograph's width, height), and, when the model input's side
is not the quality calibration's (``PreprocessCfg.separate_quality_square``), ``QUALITY_SQUARE``
(the same crop at ``quality_size``, uint8 planes), in the order of the model config's outputs;
``postprocess`` places ``FIELD_BOX`` from the two extents and grades the quality square.

``cpu_twin`` builds the same graph with the ``dali_cpu`` decoder and no GPU, which is how CI
checks it against the reference preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.preprocess import PreprocessCfg, fundus_graph


@dataclass(frozen=True)
class DaliParams:
    """What ``dali.py`` is derived from: the served PreprocessCfg and the pipeline's knobs."""

    preprocess: PreprocessCfg
    max_batch_size: int
    num_threads: int = 4
    hw_decoder_load: float = 0.65

    def __post_init__(self) -> None:
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load is a share of the images, 0..1; got {self.hw_decoder_load}")
        if self.max_batch_size < 1 or self.num_threads < 1:
            raise ValueError("max_batch_size and num_threads must be >= 1")

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "num_threads": self.num_threads,
            "hw_decoder_load": self.hw_decoder_load,
            contract.KEY_PREPROCESS: json.loads(self.preprocess.to_json()),  # the key checkpoints use
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DaliParams:
        data = json.loads(text)
        cfg = PreprocessCfg.from_json(json.dumps(data.pop(contract.KEY_PREPROCESS)))
        return cls(cfg, **data)

    @classmethod
    def beside(cls, module_file: str | Path) -> DaliParams:
        """The params file next to ``dali.py`` (``__file__`` of the autoserialized module)."""
        return cls.from_json((Path(module_file).parent / contract.DALI_PARAMS_FILENAME).read_text(encoding="utf-8"))


def serving_graph(params: DaliParams, *, decoder: str = "dali_mixed") -> tuple[Any, ...]:
    """Inside a pipeline definition: IMAGE -> (PIXELS, FOV_EXTENT, FRAME_EXTENT[, QUALITY_SQUARE]), the DALI
    model's outputs in order (``output_names``)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    cfg = dataclasses.replace(params.preprocess, decoder=decoder)
    encoded = fn.external_source(name=contract.IMAGE, device="cpu", dtype=types.UINT8, ndim=1)
    tensor, fov_w, fov_h, frame, *square = fundus_graph(
        cfg, encoded, hw_decoder_load=params.hw_decoder_load, frame_extent=True, quality_square=True
    )
    return (tensor, fn.stack(fov_w, fov_h), frame, *square)


def output_names(cfg: PreprocessCfg) -> tuple[str, ...]:
    """The DALI model's output tensors, in ``serving_graph``'s order."""
    names = (contract.PIXELS, contract.FOV_EXTENT, contract.FRAME_EXTENT)
    return (*names, contract.QUALITY_SQUARE) if cfg.separate_quality_square else names


def gpu_pipeline(params: DaliParams, *, device_id: int = 0) -> Any:
    """The served pipeline (nvJPEG ``mixed`` decode) as an unbuilt DALI Pipeline."""
    from nvidia.dali import pipeline_def

    @pipeline_def(
        batch_size=params.max_batch_size,
        num_threads=params.num_threads,
        device_id=device_id,
        exec_dynamic=True,
        prefetch_queue_depth=1,
    )
    def fundus_preprocess() -> tuple[Any, ...]:
        return serving_graph(params)

    return fundus_preprocess()


def cpu_twin(params: DaliParams) -> Any:
    """The same graph on the CPU (``dali_cpu`` decode, ``device_id=None``), built."""
    from nvidia.dali import pipeline_def

    @pipeline_def(
        batch_size=params.max_batch_size,
        num_threads=params.num_threads,
        device_id=None,
        exec_dynamic=True,
        prefetch_queue_depth=1,  # one feed_input per run, as the CPU profile's Preprocessor
    )
    def fundus_preprocess_cpu() -> tuple[Any, ...]:
        return serving_graph(params, decoder="dali_cpu")

    pipe = fundus_preprocess_cpu()
    pipe.build()
    return pipe
