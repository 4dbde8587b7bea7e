"""The decoder gate: a repository that serves another decoder than its model was trained with passes it first.

A checkpoint keeps the decoder it was trained with (``PreprocessCfg.decoder``, ``pil_draft`` by
default: libjpeg-turbo's DCT-scaled decode and Pillow's resize). The GPU profile serves
``dali_mixed`` (nvJPEG, full-resolution decode, DALI's resize) instead: not the same pixels, so
not the same probabilities. Like the TensorRT engine's accuracy gate, ``gate_decoder`` runs both
decoders on the same gate images (held-out photographs from a manifest, or synthetic ones),
the exported FP32 model under ONNX Runtime on both tensors, and refuses past a tolerance on
max |dp| and, with labels, on the macro-AUROC change (``accuracy.measure_agreement``); an image
that one decoder accepts and the other refuses fails it too.

Where it runs: ``predilect assemble --profile gpu`` gates with ``dali_cpu``, the served graph on
the host (``check_with``: it differs from nvJPEG by IDCT rounding only), records the report
(``contract.KEY_DECODER_GATE``) and stores the gate images in the repository
(``contract.DECODER_GATE_SET_FILENAME``); on the serving GPU, ``gate_repository`` runs the
gate again with ``dali_mixed`` itself before the engine is built (``predilect trt-engine
--model-repository``, the container entrypoint), with the tolerances the report recorded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predilect import contract
from predilect.build.tensorrt.accuracy import measure_agreement, reference_probabilities
from predilect.errors import UserError
from predilect.preprocess import PreprocessCfg, Preprocessor

DEFAULT_TOLERANCE_DP = 0.1
"""Largest |dp| accepted between the served and the training decoder's probabilities. A decoder
substitution resamples the photograph differently (another decode scale and resize filter), which
moves probabilities more than an FP16 engine's arithmetic does; the int8 engine gate allows 5e-2."""
DEFAULT_TOLERANCE_AUROC = 0.01
"""Largest |macro-AUROC change| accepted (with labelled gate images)."""


class DecoderGateError(UserError):
    """The served decoder's outputs differ from the training decoder's past the gate's tolerance."""


@dataclass(frozen=True)
class GateImages:
    """Encoded gate images (JPEG/PNG bytes), their labels ``(N, C)`` (or None), and where they came from."""

    payloads: tuple[bytes, ...]
    labels: np.ndarray | None
    source: str

    def save(self, path: Path) -> None:
        """As one ``.npz`` of plain arrays (the bytes concatenated, with offsets): no pickles."""
        offsets = np.cumsum([0, *(len(p) for p in self.payloads)]).astype(np.int64)
        labels = self.labels if self.labels is not None else np.zeros((0, 0), np.float32)
        data = np.frombuffer(b"".join(self.payloads), np.uint8)
        np.savez_compressed(path, data=data, offsets=offsets, labels=labels, source=np.array(self.source))

    @classmethod
    def load(cls, path: Path) -> GateImages:
        with np.load(path, allow_pickle=False) as stored:
            data, offsets = stored["data"], stored["offsets"]
            payloads = tuple(data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True))
            labels = stored["labels"] if stored["labels"].size else None
            return cls(payloads, labels, str(stored["source"]))


def manifest_gate_images(manifest: Path, onnx_path: Path, *, split: str = "test", limit: int = 64) -> GateImages:
    """The engine gate's seeded sample of ``split`` (``gate_set.manifest_gate_records``), as encoded bytes."""
    from predilect.build.tensorrt.gate_set import manifest_gate_records
    from predilect.manifest import label_matrix

    records, catalog, _ = manifest_gate_records(manifest, onnx_path, split=split, limit=limit)
    payloads = tuple(r.path.read_bytes() for r in records)
    return GateImages(payloads, label_matrix(records, catalog), f"{manifest} ({split}, {len(payloads)} images)")


@dataclass(frozen=True)
class DecoderGateReport:
    """What the decoder gate measured; recorded in the repository (``contract.KEY_DECODER_GATE``).

    ``trained_with``: the checkpoint's decoder; ``served``: the repository's; ``checked_with``: the
    decoder that ran (``dali_cpu`` stands in for ``dali_mixed`` off the GPU); ``images``: gate images
    both decoders accepted; ``rejected_by_one``: images only one of them refused; ``max_abs_dpixel``:
    the largest difference of the normalised model inputs; then the probability agreement
    (``accuracy.GateReport`` fields, ``auroc_engine`` named ``auroc_served``).
    """

    trained_with: str
    served: str
    checked_with: str
    source: str
    images: int
    rejected_by_one: int
    max_abs_dpixel: float
    max_abs_dp: float
    tolerance_dp: float
    auroc_reference: float | None
    auroc_served: float | None
    auroc_change: float | None
    tolerance_auroc: float
    passed: bool

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DecoderGateReport:
        return cls(**json.loads(text))

    def describe(self) -> str:
        change = "n/a" if self.auroc_change is None else f"{self.auroc_change:+.4f}"
        return (
            f"{self.served} (checked with {self.checked_with}) in place of {self.trained_with} on {self.images} "
            f"images from {self.source}: max |dp| = {self.max_abs_dp:.3g} (tolerance {self.tolerance_dp:g}), "
            f"macro AUROC change {change} (tolerance {self.tolerance_auroc:g}), "
            f"{self.rejected_by_one} image(s) refused by one decoder only"
        )


def gate_decoder(
    cfg: PreprocessCfg,
    *,
    served: str,
    images: GateImages,
    reference_onnx: Path,
    check_with: str | None = None,
    device_id: int | None = None,
    tolerance_dp: float = DEFAULT_TOLERANCE_DP,
    tolerance_auroc: float = DEFAULT_TOLERANCE_AUROC,
    batch_size: int = 16,
) -> DecoderGateReport:
    """Serve ``served`` in place of ``cfg.decoder``? Runs both (``check_with`` in place of ``served``, on
    ``device_id``) on ``images`` and the model ``reference_onnx`` on both; returns the report, or raises
    ``DecoderGateError`` past tolerance (or when the decoders disagree on which images they screen)."""
    checked = check_with or served
    payloads: Sequence[bytes] = images.payloads
    runs = []
    for decoder, device in ((cfg.decoder, None), (checked, device_id)):
        preprocessor = Preprocessor(
            dataclasses.replace(cfg, decoder=decoder), max_batch_size=batch_size, num_threads=2, device_id=device
        )
        runs.append(preprocessor.run(payloads))
        preprocessor.close()
    trained, candidate = runs
    both = sorted(set(trained.accepted) & set(candidate.accepted))
    if not both:
        raise DecoderGateError(
            f"decoder gate: {images.source} holds no image that both {cfg.decoder} and {checked} accept"
        )
    rows_a = {i: r for r, i in enumerate(trained.accepted)}
    rows_b = {i: r for r, i in enumerate(candidate.accepted)}
    pixels_a = trained.pixels[[rows_a[i] for i in both]]
    pixels_b = candidate.pixels[[rows_b[i] for i in both]]
    labels = images.labels[both] if images.labels is not None else None
    agreement = measure_agreement(
        reference_probabilities(reference_onnx, pixels_a),
        reference_probabilities(reference_onnx, pixels_b),
        labels=labels,
        tolerance_dp=tolerance_dp,
        tolerance_auroc=tolerance_auroc,
    )
    one_only = len(set(trained.accepted) ^ set(candidate.accepted))
    report = DecoderGateReport(
        trained_with=cfg.decoder,
        served=served,
        checked_with=checked,
        source=images.source,
        images=len(both),
        rejected_by_one=one_only,
        max_abs_dpixel=float(np.abs(pixels_a - pixels_b).max()),
        max_abs_dp=agreement.max_abs_dp,
        tolerance_dp=tolerance_dp,
        auroc_reference=agreement.auroc_reference,
        auroc_served=agreement.auroc_engine,
        auroc_change=agreement.auroc_change,
        tolerance_auroc=tolerance_auroc,
        passed=agreement.passed and one_only == 0,
    )
    if not report.passed:
        raise DecoderGateError(
            f"decoder gate fails: {report.describe()}. Serve a model trained with the served decoder "
            f"(data.preprocess.decoder), or accept a larger difference (--decoder-tolerance-dp/-auroc)"
        )
    return report


def _dali_params(repository: Path) -> dict[str, Any]:
    path = Path(repository) / contract.PREPROCESS_MODEL / contract.TRITON_VERSION / contract.DALI_PARAMS_FILENAME
    params: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return params


def gate_repository(
    repository: Path, *, check_with: str | None = None, device_id: int | None = 0
) -> DecoderGateReport | None:
    """Run a GPU repository's decoder gate again, here: the served decoder (or ``check_with``) on
    ``device_id`` against the training decoder, on the stored gate images, with the recorded tolerances.
    None when the repository serves the decoder its model was trained with (nothing to gate)."""
    params = _dali_params(repository)
    recorded = params.get(contract.KEY_DECODER_GATE)
    if recorded is None:
        return None
    assembled = DecoderGateReport.from_json(json.dumps(recorded))
    cfg = PreprocessCfg.from_json(json.dumps(params[contract.KEY_PREPROCESS]))
    repository = Path(repository)
    return gate_decoder(
        cfg,
        served=params[contract.KEY_SERVED_DECODER],
        images=GateImages.load(repository / contract.PREPROCESS_MODEL / contract.DECODER_GATE_SET_FILENAME),
        reference_onnx=repository / contract.CLASSIFIER_MODEL / contract.REFERENCE_ONNX_FILENAME,
        check_with=check_with,
        device_id=device_id,
        tolerance_dp=assembled.tolerance_dp,
        tolerance_auroc=assembled.tolerance_auroc,
    )
