"""Assemble the Triton model repository from an exported ONNX model.

The exported model carries its catalog, preprocessing constants and identity in its ONNX
``metadata_props``; ``assemble`` reads them, lays the models out (``predilect.serving.topology``),
renders every ``config.pbtxt`` from their typed definitions (``predilect.serving.triton_config``),
copies ``model.onnx`` into ``classifier/1/`` and the ``model.py`` shims of the Python-backend
models next to their configs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from predilect import contract
from predilect.catalog import Catalog
from predilect.contract import KEY_CATALOG, KEY_MODEL_NAME, KEY_MODEL_VERSION, KEY_PREPROCESS
from predilect.drift import Reference
from predilect.errors import UserError
from predilect.preprocess import PreprocessCfg
from predilect.quality import QualityCfg, default_quality_cfg
from predilect.serving import configs, topology
from predilect.serving.triton_config import ModelDef, to_model_config, to_pbtxt

_REQUIRED_META = (KEY_CATALOG, KEY_PREPROCESS, KEY_MODEL_NAME, KEY_MODEL_VERSION)
_PYTHON_MODELS = (
    contract.PREPROCESS_MODEL,
    contract.CLASSIFIER_MODEL,
    contract.POSTPROCESS_MODEL,
    contract.FUSED_MODEL,
)
_ONNX_MODELS = (contract.CLASSIFIER_MODEL, contract.FUSED_MODEL)
"""The models that load ``model.onnx`` from their version folder (one per layout)."""


class ModelMetadataError(UserError, ValueError):
    """The ONNX file lacks the metadata or the tensors that the served pipeline needs."""


def shim_source_dir() -> Path:
    """The ``model_repository`` folder holding the ``model.py`` shims: ``predilect/model_repository`` in an
    installed wheel (where pyproject's force-include puts it), the top-level folder in a checkout."""
    package = Path(__file__).resolve().parent.parent  # .../predilect
    for candidate in (package / "model_repository", package.parents[1] / "model_repository"):
        if (candidate / contract.FUSED_MODEL).is_dir():
            return candidate
    raise FileNotFoundError(f"no model_repository templates beside {package}")


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def read_served_model(
    onnx_path: Path, *, quality: QualityCfg | None = None, reference: Reference | None = None
) -> configs.ServedModel:
    """Read the served identity from an exported model's metadata, checking its tensors.

    ``quality``: the gradability thresholds to serve (default: the packaged calibration);
    ``reference``: the model's reference distributions for shift monitoring (``predilect.drift``).
    """
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
        catalog = Catalog.from_json(meta[KEY_CATALOG])
        preprocess = PreprocessCfg.from_json(meta[KEY_PREPROCESS])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelMetadataError(f"{onnx_path}: unreadable catalog or preprocess metadata: {e}") from e
    # ConfigError (a UserError) when the quality calibration's size is not preprocess.quality_size.
    served = configs.ServedModel(
        catalog=catalog,
        preprocess=preprocess,
        model_name=meta[KEY_MODEL_NAME],
        model_version=meta[KEY_MODEL_VERSION],
        quality=quality or default_quality_cfg(),
        reference=reference,
    )
    _check_tensors(model, served, onnx_path)
    return dataclasses.replace(
        served, attention_grid=_attention_grid(model, served, onnx_path), heatmap_kind=_heatmap_kind(meta, onnx_path)
    )


def _heatmap_kind(meta: dict[str, str], onnx_path: Path) -> str | None:
    """Which map the model's ``ATTENTION`` output holds (``contract.HEATMAP_KINDS``), from its exported model
    config; None when the export does not say (a model exported without ``predilect.model``)."""
    if not meta.get(contract.KEY_MODEL_CFG):
        return None
    try:
        kind = json.loads(meta[contract.KEY_MODEL_CFG]).get("heatmap", contract.HEATMAP_KINDS[0])
    except (ValueError, AttributeError) as e:
        raise ModelMetadataError(f"{onnx_path}: unreadable {contract.KEY_MODEL_CFG} metadata: {e}") from e
    if kind not in contract.HEATMAP_KINDS:
        raise ModelMetadataError(f"{onnx_path}: heatmap kind {kind!r} is not one of {contract.HEATMAP_KINDS}")
    return str(kind)


def _attention_grid(model, served: configs.ServedModel, onnx_path: Path) -> int | None:
    """The side g of the optional ``ATTENTION`` output ``[batch, C, g, g]``; None when the model has none."""
    outputs = {o.name: _dims(o) for o in model.graph.output}
    attention = outputs.get(contract.ATTENTION)
    if attention is None:
        return None
    classes = len(served.catalog)
    if (
        len(attention) != 4
        or attention[1] != classes
        or attention[2] != attention[3]
        or not isinstance(attention[2], int)
    ):
        raise ModelMetadataError(
            f"{onnx_path}: output {contract.ATTENTION} must be [batch, {classes}, g, g] (each disease's attention "
            f"over a square token grid), got {attention}"
        )
    return int(attention[2])


def _check_tensors(model, served: configs.ServedModel, onnx_path: Path) -> None:
    inputs = {i.name: _dims(i) for i in model.graph.input}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    size, classes = served.preprocess.size, len(served.catalog)
    pixels, logits = inputs.get(contract.PIXELS), outputs.get(contract.LOGITS)
    if pixels is None or len(pixels) != 4 or pixels[1:] != [3, size, size]:
        raise ModelMetadataError(
            f"{onnx_path}: expected input {contract.PIXELS} [batch, 3, {size}, {size}], graph inputs are {inputs}"
        )
    if logits is None or len(logits) != 2 or logits[1] != classes:
        raise ModelMetadataError(
            f"{onnx_path}: expected output {contract.LOGITS} [batch, {classes}] (one per catalog disease), "
            f"graph outputs are {outputs}"
        )


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / contract.ENSEMBLE / contract.CONFIG_FILENAME).is_file():
            raise FileExistsError(
                f"{out_dir} is not empty and is not a model repository made by assemble; choose another --out"
            )
        shutil.rmtree(out_dir)


@contextmanager
def staged_repository(out_dir: Path) -> Iterator[Path]:
    """A staging folder beside ``out_dir`` that replaces it on success, so a failure leaves no half repository."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield staging
        _prepare_out_dir(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_model(staging: Path, definition: ModelDef, *, files: dict[str, Path] | None = None) -> Path:
    """``<name>/config.pbtxt`` and ``<name>/1/``, with ``files`` (name in ``1/`` -> source) copied in."""
    model_dir = staging / definition.name
    (model_dir / contract.TRITON_VERSION).mkdir(parents=True)
    text = to_pbtxt(to_model_config(definition))
    (model_dir / contract.CONFIG_FILENAME).write_text(text, encoding="utf-8")
    for name, source in (files or {}).items():
        if not source.is_file():
            raise FileNotFoundError(f"{source} missing; is the predilect install complete?")
        shutil.copy2(source, model_dir / contract.TRITON_VERSION / name)
    return model_dir


def served_onnx(onnx_path: Path, precision: str) -> Path:
    """The ONNX file served at ``precision``: ``onnx_path`` itself, or its gated INT8 model."""
    if precision == "fp32":
        return Path(onnx_path)
    import onnx

    from predilect.build.quantize import int8_path

    path = int8_path(onnx_path)
    if not path.is_file():
        raise ModelMetadataError(
            f"no INT8 model at {path}: run `predilect quantize --onnx {onnx_path}` first (it writes the model only "
            "when it passes its accuracy gate)"
        )
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if not meta.get(contract.KEY_QUANTIZATION):
        raise ModelMetadataError(
            f"{path} carries no accuracy-gate report ({contract.KEY_QUANTIZATION}); re-quantize it"
        )
    return path


def assemble(
    onnx_path: Path,
    out_dir: Path,
    options: configs.ServingOptions = configs.ServingOptions(),
    *,
    quality: QualityCfg | None = None,
    reference: Reference | None = None,
) -> Path:
    """Write the model repository for ``onnx_path`` into ``out_dir`` (replacing a previous one).

    ``options.precision == "int8"`` serves the gated INT8 model ``predilect quantize`` wrote beside it.
    ``quality``: the gradability thresholds to serve (default: the packaged calibration); ``reference``:
    the model's reference distributions (``predilect.serving.reference``), served for shift monitoring.
    """
    onnx_path, out_dir = served_onnx(Path(onnx_path), options.precision), Path(out_dir)
    served = read_served_model(onnx_path, quality=quality, reference=reference)
    shims = shim_source_dir()
    with staged_repository(out_dir) as staging:
        for definition in topology.cpu_layout(served, options).models():
            shim = shims / definition.name / contract.TRITON_VERSION / "model.py"
            write_model(staging, definition, files={"model.py": shim} if definition.name in _PYTHON_MODELS else None)
        for name in _ONNX_MODELS:
            if (staging / name).is_dir():
                shutil.copy2(onnx_path, staging / name / contract.TRITON_VERSION / contract.ONNX_FILENAME)
    return out_dir
