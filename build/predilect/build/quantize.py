"""INT8 for the CPU profile: ONNX Runtime static quantisation (QDQ) behind an accuracy gate.

Calibration runs the served ``Preprocessor`` on images of a manifest's training split; the
gate compares the INT8 model with its FP32 source on the held-out split (max |delta p| and
the change of macro AUROC) and refuses to write a model past either tolerance. The INT8
model keeps the FP32 model's served metadata, with ``.int8`` appended to its version and the
gate's report under ``contract.KEY_QUANTIZATION``; ``predilect assemble --precision int8``
serves it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from predilect import contract
from predilect.errors import ConfigError, UserError


class QuantizationRefused(UserError):
    """The INT8 model moved probabilities or AUROC past the gate's tolerance; nothing was written."""

    def __init__(self, message: str, report: GateReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantizeCfg:
    """How to calibrate and how much the INT8 model may differ from FP32."""

    calibration_images: int = field(default=96, metadata={"help": "training-split images used to calibrate"})
    max_abs_dp: float = field(default=0.05, metadata={"help": "gate: largest |INT8 - FP32| probability allowed"})
    max_auroc_drop: float = field(default=0.005, metadata={"help": "gate: largest drop of held-out macro AUROC"})
    per_channel: bool = field(default=True, metadata={"help": "per-channel weight scales"})
    # AVX2 without VNNI multiplies u8 x s8 pairs into saturating 16-bit sums; 7-bit weights avoid that.
    reduce_range: bool = field(default=True, metadata={"help": "7-bit weights (no saturation on AVX2 without VNNI)"})
    # Measured on the phantom model (`predilect bench serving` records the gate): quantizing the
    # attention head, LayerNorm and the 3-channel stem moved probabilities most for least time.
    op_types: tuple[str, ...] = field(default=("Conv",), metadata={"help": "ONNX op types quantized"})
    keep_stem_fp32: bool = field(default=True, metadata={"help": "leave the first convolution in FP32"})

    def __post_init__(self) -> None:
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be >= 1, got {self.calibration_images}")
        if self.max_abs_dp <= 0 or self.max_auroc_drop < 0:
            raise ConfigError("max_abs_dp must be > 0 and max_auroc_drop >= 0")


@dataclass(frozen=True)
class GateReport:
    """FP32 vs INT8 on held-out images."""

    images: int
    max_abs_dp: float
    auroc_fp32: float
    auroc_int8: float
    tolerance_abs_dp: float
    tolerance_auroc_drop: float
    calibration_images: int

    @property
    def auroc_change(self) -> float:
        return self.auroc_int8 - self.auroc_fp32

    @property
    def passed(self) -> bool:
        return self.max_abs_dp <= self.tolerance_abs_dp and -self.auroc_change <= self.tolerance_auroc_drop

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "auroc_change": self.auroc_change, "passed": self.passed}, sort_keys=True)

    def describe(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        return (
            f"INT8 vs FP32 on {self.images} held-out images: max |delta p| {self.max_abs_dp:.4f} "
            f"(tolerance {self.tolerance_abs_dp}), macro AUROC {self.auroc_fp32:.4f} -> {self.auroc_int8:.4f} "
            f"(change {self.auroc_change:+.4f}, tolerance -{self.tolerance_auroc_drop}): {verdict}"
        )


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader`` over preprocessed images, a few at a time."""

    def __init__(self, pixels: np.ndarray, batch_size: int = 8) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {contract.PIXELS: batch}

    def rewind(self) -> None:  # the MinMax calibrator reads once
        pass


def int8_path(onnx_path: Path) -> Path:
    """Where ``predilect quantize`` writes the INT8 model of ``onnx_path`` (``model.onnx`` -> ``model.int8.onnx``)."""
    return Path(onnx_path).with_suffix(".int8.onnx")


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def quantize_onnx(onnx_path: Path, out: Path, calibration: np.ndarray, cfg: QuantizeCfg) -> None:
    """QDQ static quantisation of ``onnx_path`` into ``out`` (no gate; ``quantize`` gates)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="predilect-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        quantize_static(
            str(prepared),
            str(out),
            Reader(calibration),
            op_types_to_quantize=list(cfg.op_types),
            nodes_to_exclude=convs[:1] if cfg.keep_stem_fp32 else [],
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
        )


def gate(
    fp32: Path, int8: Path, pixels: np.ndarray, labels: np.ndarray, ids: list[str], cfg: QuantizeCfg
) -> GateReport:
    """Compare the two models on held-out ``pixels`` with their ``labels``."""
    from predilect.build.export import onnx_probabilities
    from predilect.metrics import macro_auroc

    p32, p8 = onnx_probabilities(fp32, pixels), onnx_probabilities(int8, pixels)
    return GateReport(
        images=len(pixels),
        max_abs_dp=float(np.max(np.abs(p8 - p32))),
        auroc_fp32=macro_auroc(labels, p32, ids),
        auroc_int8=macro_auroc(labels, p8, ids),
        tolerance_abs_dp=cfg.max_abs_dp,
        tolerance_auroc_drop=cfg.max_auroc_drop,
        calibration_images=cfg.calibration_images,
    )


def _stamp(path: Path, meta: dict[str, str], report: GateReport) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    meta = {**meta, contract.KEY_MODEL_VERSION: f"{meta[contract.KEY_MODEL_VERSION]}.int8"}
    meta[contract.KEY_QUANTIZATION] = report.to_json()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def quantize(onnx_path: Path, manifest: Path, out: Path, cfg: QuantizeCfg = QuantizeCfg()) -> GateReport:
    """Calibrate on the training split, gate on the held-out split, write ``out`` only if it passes.

    Raises ``QuantizationRefused`` (with the report) when the gate fails.
    """
    from predilect.catalog import Catalog
    from predilect.manifest import colour_screened, label_matrix, read_manifest
    from predilect.preprocess import PreprocessCfg
    from predilect.preprocess.pixels import load_fundus_pixels

    meta = _metadata(onnx_path)
    if not meta.get(contract.KEY_CATALOG) or not meta.get(contract.KEY_PREPROCESS):
        raise ConfigError(f"{onnx_path} lacks predilect metadata; export it with `predilect export`")
    catalog, preprocess = (
        Catalog.from_json(meta[contract.KEY_CATALOG]),
        PreprocessCfg.from_json(meta[contract.KEY_PREPROCESS]),
    )
    train = colour_screened(read_manifest(manifest, catalog=catalog, split="train"))[: cfg.calibration_images]
    heldout = colour_screened(read_manifest(manifest, catalog=catalog, split="test"))
    if not train or not heldout:
        raise ConfigError(f"{manifest} needs train and test rows to calibrate and gate INT8")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp")
    try:
        quantize_onnx(onnx_path, staging, load_fundus_pixels(train, preprocess), cfg)
        pixels = load_fundus_pixels(heldout, preprocess)
        report = gate(onnx_path, staging, pixels, label_matrix(heldout, catalog), catalog.ids, cfg)
        if not report.passed:
            raise QuantizationRefused(f"{report.describe()}; {out} not written", report)
        _stamp(staging, meta, report)
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return report
