"""The GPU profile's DALI pipeline: the one ``PreprocessCfg`` as a DALI-backend model.

``preprocess/1/dali.py`` in a GPU model repository is a few lines that read
``dali_params.json`` beside it (written by ``predilect assemble --profile gpu``) and mark
``served_pipeline(PARAMS)`` with ``@autoserialize``; Triton's DALI backend serialises it at
load. The pipeline comes from ``predilect.preprocess.dali.pipeline_definition``, the one factory
(and the one graph, ``fundus_graph``) that the CPU profile's ``dali_cpu`` decoder, the tests and
the benchmarks build too: fed from two external sources, ``IMAGE`` (the ensemble's ragged input)
and ``FOV_EXTENT`` (the field of view ``validate_image`` measured on the host:
``predilect.preprocess.dali_inputs``), returning ``predilect.preprocess.dali_outputs(cfg)`` (PIXELS,
and QUALITY_SQUARE when the model input's side is not the quality calibration's), in the order of
the model config's outputs; ``postprocess`` places ``FIELD_BOX`` from the two extents
``validate_image`` measured and grades the quality square. The graph is defined for DALI's legacy
executor, the one Triton's DALI backend runs (``gpu_profile.check_legacy_executor``).

The served decoder is ``DaliParams.decoder`` (``dali_mixed``, nvJPEG), not necessarily the one
the checkpoint was trained with (``DaliParams.preprocess.decoder``): the params file records both
(``contract.KEY_SERVED_DECODER``) and the decoder gate's report (``contract.KEY_DECODER_GATE``,
``predilect.build.decoder_gate``). ``served_pipeline(params, device_id=None, decoder="dali_cpu")``
is the same pipeline on the host, no GPU: how CI checks it against the reference preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predilect import contract
from predilect.preprocess import DECODERS, PreprocessCfg

SERVED_DECODER = "dali_mixed"
"""What the GPU profile's ``preprocess`` step decodes with: nvJPEG (and the hardware JPEG decoder)."""


@dataclass(frozen=True)
class DaliParams:
    """What ``dali.py`` is derived from: the checkpoint's PreprocessCfg, the served decoder, the pipeline's
    knobs, and the decoder gate's report (JSON) when the served decoder is not the training one."""

    preprocess: PreprocessCfg
    max_batch_size: int
    num_threads: int = 4
    hw_decoder_load: float = 0.65
    decoder: str = SERVED_DECODER
    decoder_gate: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load is a share of the images, 0..1; got {self.hw_decoder_load}")
        if self.max_batch_size < 1 or self.num_threads < 1:
            raise ValueError("max_batch_size and num_threads must be >= 1")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    @property
    def served(self) -> PreprocessCfg:
        """The PreprocessCfg the step runs: the checkpoint's, with the served decoder."""
        return dataclasses.replace(self.preprocess, decoder=self.decoder)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "num_threads": self.num_threads,
            "hw_decoder_load": self.hw_decoder_load,
            contract.KEY_PREPROCESS: json.loads(self.preprocess.to_json()),  # the key checkpoints use
            contract.KEY_SERVED_DECODER: self.decoder,
        }
        if self.decoder_gate is not None:
            data[contract.KEY_DECODER_GATE] = json.loads(self.decoder_gate)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DaliParams:
        data = json.loads(text)
        cfg = PreprocessCfg.from_json(json.dumps(data.pop(contract.KEY_PREPROCESS)))
        decoder = data.pop(contract.KEY_SERVED_DECODER, SERVED_DECODER)  # older files: nvJPEG, unrecorded
        gate = data.pop(contract.KEY_DECODER_GATE, None)
        return cls(cfg, **data, decoder=decoder, decoder_gate=None if gate is None else json.dumps(gate))

    @classmethod
    def beside(cls, module_file: str | Path) -> DaliParams:
        """The params file next to ``dali.py`` (``__file__`` of the autoserialized module)."""
        return cls.from_json((Path(module_file).parent / contract.DALI_PARAMS_FILENAME).read_text(encoding="utf-8"))


def served_pipeline(params: DaliParams, *, device_id: int | None = 0, decoder: str | None = None) -> Any:
    """The served pipeline definition (a ``pipeline_def``, from the one factory): ``params.served``, or its
    ``decoder`` variant; ``device_id=0`` is the placeholder Triton's DALI backend replaces per instance."""
    from predilect.preprocess.dali import pipeline_definition  # DALI loads where a pipeline is made, not for params

    cfg = params.served if decoder is None else dataclasses.replace(params.preprocess, decoder=decoder)
    return pipeline_definition(
        cfg,
        batch_size=params.max_batch_size,
        num_threads=params.num_threads,
        device_id=device_id,
        hw_decoder_load=params.hw_decoder_load,
    )
