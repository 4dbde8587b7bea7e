"""Benchmark payloads: phantom fundus JPEGs at camera sizes, written once to a folder.

Two sets: ``camera`` (every image at one camera frame, 2048x1536 by default) and ``mix``
(frames of 1.5 to 6 MP, as a screening programme with several camera models sends).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# 1.6, 3.1, 5.0 and 5.9 MP frames, all 4:3 as fundus cameras deliver them.
MIX_SIZES: tuple[tuple[int, int], ...] = ((1440, 1080), (2048, 1536), (2592, 1944), (2816, 2112))
CAMERA_SIZE = (2048, 1536)
JPEG_QUALITY = 92


def render_set(out_dir: Path, *, count: int, sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Render ``count`` phantom fundus JPEGs cycling through ``sizes``; reuses files already there."""
    import numpy as np

    from predilect.training.phantom import image_rng, render_fundus
    from predilect.training.phantom.presets import EASY

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        path = out_dir / f"fundus_{i:03d}_{width}x{height}.jpg"
        if not path.is_file():
            rng = image_rng(seed, 0, i)
            labels = frozenset(d for d in EASY.diseases if rng.random() < 0.2)
            image = render_fundus(
                labels, rng=np.random.default_rng(rng.integers(1 << 32)), width=width, height=height, eye="RL"[i % 2]
            )
            tmp = path.with_suffix(".tmp")
            image.save(tmp, "JPEG", quality=JPEG_QUALITY)
            tmp.replace(path)
        paths.append(path)
    return paths


def heldout_images(manifest: Path, *, limit: int) -> list[Path]:
    """The first ``limit`` held-out images of a phantom manifest (the demo's camera frames)."""
    from predilect.manifest import read_manifest

    return [r.path for r in read_manifest(manifest, split="test")[:limit]]


def write_list(paths: Sequence[Path], out: Path) -> Path:
    """A text file of image paths, one per line: what the Locust users read."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{Path(p).resolve()}\n" for p in paths), encoding="utf-8")
    return out
