"""The reference distributions stored with a model at assemble time (``predilect assemble --reference-manifest``).

The validation images of a manifest go through what the repository serves -- preprocessing, the
gradability step (``Screening.quality``, with each frame's place on its square) and the exported model
under ONNX Runtime -- and ``predilect.drift.Reference.build`` keeps each quality measure's and each disease
probability's distribution and the ungradable share. The served shift metrics bucket by them, and
``predilect drift`` compares a site's journal with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from predilect import contract
from predilect.drift import Reference
from predilect.errors import UserError
from predilect.manifest import colour_screened, field_angle_of, read_manifest
from predilect.preprocess import Preprocessor
from predilect.serving.backends.classifier import OnnxClassifier
from predilect.serving.backends.postprocess import stable_sigmoid
from predilect.serving.backends.screening import Screening
from predilect.serving.configs import ServedModel


class ReferenceManifestError(UserError):
    """A reference manifest with no usable held-out image."""


def screen_in_process(
    onnx_path: Path,
    served: ServedModel,
    payloads: Sequence[bytes],
    *,
    batch_size: int = 16,
    field_angles_deg: Sequence[float | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the repository would answer for ``payloads`` (the ones preprocessing accepts), each sent with its
    camera's field angle: quality rows, quality measures and probabilities, each ``(N, ...)`` float32."""
    angles = list(field_angles_deg) if field_angles_deg is not None else [None] * len(payloads)
    preprocessor = Preprocessor(served.preprocess, max_batch_size=batch_size, num_threads=2)
    classifier = OnnxClassifier(Path(onnx_path), intra_op_threads=2)
    screening = Screening(served.rules, served.preprocess)
    quality, measures, probabilities = [], [], []
    for start in range(0, len(payloads), batch_size):
        chunk = slice(start, start + batch_size)
        done = preprocessor.run(list(payloads[chunk]), quality=True, field_angles_deg=angles[chunk])
        if not done.accepted:
            continue
        graded = screening.quality_of(done)
        quality.append(graded.quality)
        measures.append(graded.measures)
        probabilities.append(stable_sigmoid(classifier.run_all(done.pixels)[contract.LOGITS]))
    preprocessor.close()
    if not quality:
        return (
            np.zeros((0, 1 + len(contract.QUALITY_REASONS))),
            np.zeros((0, len(contract.QUALITY_MEASURES))),
            np.zeros((0, len(served.catalog))),
        )
    return np.concatenate(quality), np.concatenate(measures), np.concatenate(probabilities)


def reference_from_manifest(
    onnx_path: Path, served: ServedModel, manifest: Path, *, split: str = "val", limit: int = 400
) -> Reference:
    """The reference distributions of the model on up to ``limit`` colour photographs of ``split`` of ``manifest``:
    by default the validation split, the cameras and population the model was chosen on (a zoo phantom's
    held-out cameras photograph test eyes only, so that they show as drift)."""
    records = colour_screened(read_manifest(manifest, catalog=served.catalog, split=split))[:limit]
    if not records:
        raise ReferenceManifestError(f"{manifest} has no {split} images to take the reference distributions on")
    quality, measures, probabilities = screen_in_process(
        onnx_path, served, [r.path.read_bytes() for r in records], field_angles_deg=[field_angle_of(r) for r in records]
    )
    if not len(quality):
        raise ReferenceManifestError(f"preprocessing refused every {split} image of {manifest}")
    return Reference.build(
        measures={m: measures[:, i] for i, m in enumerate(contract.QUALITY_MEASURES)},
        probabilities={d.id: probabilities[:, i] for i, d in enumerate(served.catalog)},
        ungradable=(quality[:, 1:] > 0.5).any(axis=1),
        source=f"{len(quality)} {split} images of {manifest}, model {served.model_name} {served.model_version}",
    )
