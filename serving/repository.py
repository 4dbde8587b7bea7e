"""Assemble the Triton model repository from an exported ONNX model.

The exported model carries its catalog, preprocessing constants and identity in its ONNX
``metadata_props``; ``assemble`` reads them, generates every ``config.pbtxt`` from the typed
definitions in ``predilect.serving.configs``, copies ``model.onnx`` into ``classifier/1/``
and the ``model.py`` shims of the Python-backend models next to their configs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from predilect.catalog import Catalog
from predilect.preprocess import PreprocessCfg
from predilect.serving import configs

META_CATALOG = "predilect.catalog"
META_PREPROCESS = "predilect.preprocess"
META_MODEL_NAME = "predilect.model_name"
META_MODEL_VERSION = "predilect.model_version"
_REQUIRED_META = (META_CATALOG, META_PREPROCESS, META_MODEL_NAME, META_MODEL_VERSION)
_PYTHON_MODELS = (configs.PREPROCESS, configs.CLASSIFIER, configs.POSTPROCESS)
_DEFAULTS = configs.ServingOptions()


class ModelMetadataError(ValueError):
    """The ONNX file lacks the metadata or the tensors that the served pipeline needs."""


def shim_source_dir() -> Path:
    """The ``model_repository`` folder holding the ``model.py`` shims.

    In the wheel it is ``site-packages/predilect/model_repository``; in a checkout it is
    the top-level ``model_repository/`` next to ``serving/``.
    """
    import predilect.serving

    return Path(predilect.serving.__file__).resolve().parent.parent / "model_repository"


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def read_served_model(onnx_path: Path) -> configs.ServedModel:
    """Read the served identity from an exported model's metadata, checking its tensors."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in _REQUIRED_META if not meta.get(k)]
    if missing:
        raise ModelMetadataError(
            f"{onnx_path} lacks ONNX metadata {missing}; export it with `predilect export`, "
            f"which writes {list(_REQUIRED_META)}"
        )
    try:
        served = configs.ServedModel(
            catalog=Catalog.from_json(meta[META_CATALOG]),
            preprocess=PreprocessCfg.from_json(meta[META_PREPROCESS]),
            model_name=meta[META_MODEL_NAME],
            model_version=meta[META_MODEL_VERSION],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ModelMetadataError(f"{onnx_path}: unreadable catalog or preprocess metadata: {e}") from e
    _check_tensors(model, served, onnx_path)
    return served


def _check_tensors(model, served: configs.ServedModel, onnx_path: Path) -> None:
    inputs = {i.name: _dims(i) for i in model.graph.input}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    size, classes = served.preprocess.size, len(served.catalog)
    pixels, logits = inputs.get(configs.PIXELS), outputs.get(configs.LOGITS)
    if pixels is None or len(pixels) != 4 or pixels[1:] != [3, size, size]:
        raise ModelMetadataError(
            f"{onnx_path}: expected input {configs.PIXELS} [batch, 3, {size}, {size}], graph inputs are {inputs}"
        )
    if logits is None or len(logits) != 2 or logits[1] != classes:
        raise ModelMetadataError(
            f"{onnx_path}: expected output {configs.LOGITS} [batch, {classes}] (one per catalog disease), "
            f"graph outputs are {outputs}"
        )


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / configs.ENSEMBLE / "config.pbtxt").is_file():
            raise FileExistsError(
                f"{out_dir} is not empty and is not a model repository made by assemble; choose another --out"
            )
        shutil.rmtree(out_dir)


def assemble(
    onnx_path: Path,
    out_dir: Path,
    *,
    max_batch_size: int = _DEFAULTS.max_batch_size,
    max_queue_delay_us: int = _DEFAULTS.max_queue_delay_us,
    preprocess_instances: int = _DEFAULTS.preprocess_instances,
    classifier_instances: int = _DEFAULTS.classifier_instances,
    dali_threads: int = _DEFAULTS.dali_threads,
    ort_threads: int = _DEFAULTS.ort_threads,
    preferred_batch_sizes: tuple[int, ...] = _DEFAULTS.preferred_batch_sizes,
) -> Path:
    """Write the model repository for ``onnx_path`` into ``out_dir`` (replacing a previous one).

    The defaults are ``configs.ServingOptions``'s, tuned for the CPU profile by ``benchmarks/sweep.py``.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    served = read_served_model(onnx_path)
    options = configs.ServingOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        preprocess_instances=preprocess_instances,
        classifier_instances=classifier_instances,
        dali_threads=dali_threads,
        ort_threads=ort_threads,
        preferred_batch_sizes=tuple(preferred_batch_sizes),
    )
    shims = shim_source_dir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move it in at the end, so a failure leaves no half repository.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for definition in configs.fundus_screen_models(served, options):
            model_dir = staging / definition.name
            (model_dir / configs.TRITON_VERSION).mkdir(parents=True)
            text = configs.to_pbtxt(configs.to_model_config(definition))
            (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
            if definition.name in _PYTHON_MODELS:
                shim = shims / definition.name / configs.TRITON_VERSION / "model.py"
                if not shim.is_file():
                    raise FileNotFoundError(f"model.py shim missing: {shim}; is the predilect install complete?")
                shutil.copy2(shim, model_dir / configs.TRITON_VERSION / "model.py")
        shutil.copy2(onnx_path, staging / configs.CLASSIFIER / configs.TRITON_VERSION / configs.ONNX_FILENAME)
        _prepare_out_dir(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _parser() -> argparse.ArgumentParser:
    defaults = configs.ServingOptions()
    p = argparse.ArgumentParser(prog="predilect assemble", description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, required=True, help="exported model (ONNX with predilect metadata)")
    p.add_argument("--out", type=Path, default=Path("artifacts/model_repository"), help="model repository to write")
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=defaults.max_queue_delay_us,
        help="dynamic batcher wait for more requests, in microseconds",
    )
    p.add_argument("--preprocess-instances", type=int, default=defaults.preprocess_instances)
    p.add_argument("--classifier-instances", type=int, default=defaults.classifier_instances)
    p.add_argument(
        "--dali-threads",
        type=int,
        default=defaults.dali_threads,
        help="decode threads per preprocess instance (DALI, or the pil_draft pool)",
    )
    p.add_argument("--ort-threads", type=int, default=defaults.ort_threads, help="ONNX Runtime intra-op threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = assemble(
            args.onnx,
            args.out,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            preprocess_instances=args.preprocess_instances,
            classifier_instances=args.classifier_instances,
            dali_threads=args.dali_threads,
            ort_threads=args.ort_threads,
        )
    except (ValueError, OSError) as e:  # ModelMetadataError is a ValueError
        print(f"predilect assemble: {e}", file=sys.stderr)
        return 2
    print(f"model repository written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
