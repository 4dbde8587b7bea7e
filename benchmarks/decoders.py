"""Decode strategies for the CPU profile: time per image and held-out AUROC per decoder.

    python -m predilect.benchmarks.decoders --manifest artifacts/phantom/manifest.csv \
        --checkpoint artifacts/checkpoint/model.safetensors --out benchmarks/results/decoders.json

Timings are single-threaded, per image, on the first ``--images`` held-out JPEGs; AUROC runs
the checkpoint on every held-out image preprocessed with each ``PreprocessCfg.decoder``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from predilect.preprocess import PreprocessCfg, Preprocessor

CPU_DECODERS = ("pil_draft", "dali_cpu")


def _per_image_ms(fn: Callable[[], object], images: int, *, repeats: int = 2) -> float:
    fn()  # warm-up: builds pipelines, fills caches
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / images * 1000.0


def _pil_decode(data: Sequence[bytes], *, draft_px: int | None, resize_px: int | None = None) -> None:
    from PIL import Image

    for raw in data:
        with Image.open(io.BytesIO(raw)) as im:
            if draft_px is not None:
                im.draft("RGB", (draft_px, draft_px))
            rgb = im.convert("RGB")
            if resize_px is not None:
                rgb.resize((resize_px, resize_px), Image.Resampling.BILINEAR, reducing_gap=None)


def decode_timings(data: Sequence[bytes], cfg: PreprocessCfg) -> dict[str, float]:
    """Milliseconds per image, one thread, for decode-only and full-preprocess strategies."""
    n = len(data)
    timings = {
        "PIL full decode": _per_image_ms(lambda: _pil_decode(data, draft_px=None), n),
        "PIL full decode + resize": _per_image_ms(lambda: _pil_decode(data, draft_px=None, resize_px=cfg.size), n),
        "PIL draft decode (DCT scale for >= size)": _per_image_ms(lambda: _pil_decode(data, draft_px=cfg.size), n),
    }
    for decoder in CPU_DECODERS:
        pre = Preprocessor(dataclasses.replace(cfg, decoder=decoder), max_batch_size=16, num_threads=1)
        timings[f"full preprocess, decoder={decoder}"] = _per_image_ms(lambda pre=pre: pre.run_strict(list(data)), n)
    return timings


def heldout_auroc(checkpoint: Path, manifest: Path, decoders: Sequence[str]) -> dict[str, float]:
    """Macro AUROC of ``checkpoint`` on the held-out split, preprocessed with each decoder."""
    from predilect.training.checkpoint import load_checkpoint
    from predilect.training.data import load_fundus_pixels
    from predilect.training.evaluate import predict_proba
    from predilect.training.manifest import label_matrix, read_manifest
    from predilect.training.metrics import macro_auroc

    model, meta = load_checkpoint(checkpoint)
    records = read_manifest(manifest, catalog=meta.catalog, split="test")
    labels = label_matrix(records, meta.catalog)
    result = {}
    for decoder in decoders:
        pixels = load_fundus_pixels(records, dataclasses.replace(meta.preprocess, decoder=decoder))
        result[decoder] = macro_auroc(labels, predict_proba(model, pixels), meta.catalog.ids)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predilect.benchmarks.decoders", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", type=int, default=32, help="held-out images timed")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from predilect.training.checkpoint import read_meta
    from predilect.training.manifest import read_manifest

    args = _parser().parse_args(argv)
    torch.set_num_threads(2)
    meta = read_meta(args.checkpoint)
    records = read_manifest(args.manifest, catalog=meta.catalog, split="test")[: args.images]
    data = [r.path.read_bytes() for r in records]
    timings = decode_timings(data, meta.preprocess)
    for name, ms in timings.items():
        print(f"{name:<45} {ms:7.1f} ms/image")
    aurocs = heldout_auroc(args.checkpoint, args.manifest, CPU_DECODERS)
    for decoder, value in aurocs.items():
        print(f"held-out macro AUROC, decoder={decoder:<10} {value:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "trained_with": meta.preprocess.decoder,
                    "images_timed": len(data),
                    "ms_per_image": timings,
                    "heldout_macro_auroc": aurocs,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
