"""Generate a phantom data set: fundus photographs, unpaired OCT B-scans and both manifests.

Layout under ``out_dir``: ``fundus/<patient>_<eye>.jpg``, ``oct/<patient>_<eye>.png``,
``manifest.csv`` (fundus) and ``oct_manifest.csv``. Everything is a function of ``seed``:
image ``i`` draws from ``SeedSequence(seed, spawn_key=(stream, i))`` (stream 0 fundus, 1 OCT),
so the bytes written do not depend on the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predilect.catalog import DEFAULT_CATALOG, Catalog
from predilect.errors import ConfigError

from ..manifest import Record, write_manifest
from .fundus import check_frame
from .registry import DISEASES
from .render import render_fundus, render_oct

FUNDUS_MANIFEST = "manifest.csv"
OCT_MANIFEST = "oct_manifest.csv"
SPLITS = ("train", "heldout")
JPEG_QUALITY = 92
OCT_FRAME = (512, 256)
NORMAL_FRACTION = 0.28  # share of images without disease
PAIR_FRACTION = 0.4  # share of diseased images with two co-occurring diseases

_FUNDUS, _OCT, _FUNDUS_COHORT, _OCT_COHORT = range(4)  # seed streams


@dataclass(frozen=True)
class Planned:
    """One image to make: who, which eye, which split, which diseases."""

    patient_id: str
    eye: str
    split: str
    labels: frozenset[str]

    @property
    def name(self) -> str:
        return f"{self.patient_id}_{self.eye}"


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to render and write one image (picklable for spawn)."""

    kind: int  # _FUNDUS or _OCT
    index: int
    seed: int
    labels: frozenset[str]
    eye: str
    path: str
    width: int
    height: int


# ----------------------------------------------------------------------------- cohort


def allocate_labels(n: int, disease_ids: Sequence[str], rng: np.random.Generator) -> list[frozenset[str]]:
    """Label sets for ``n`` images: ~28% normal, the rest one disease or two, diseases balanced.

    Every disease gets a positive whenever ``n`` allows it, so small splits still hold each.
    """
    n_normal = round(NORMAL_FRACTION * n)
    n_sick = n - n_normal
    n_pairs = round(PAIR_FRACTION * n_sick)
    while n_sick + n_pairs < len(disease_ids) and n_normal + n_sick > 0:
        if n_pairs < n_sick:
            n_pairs += 1
        elif n_normal > 0:
            n_normal, n_sick = n_normal - 1, n_sick + 1
        else:
            break
    counts = np.zeros(len(disease_ids))
    labels: list[frozenset[str]] = [frozenset()] * n_normal
    for size in [2] * n_pairs + [1] * (n_sick - n_pairs):
        # the least-used diseases, ties broken at random, keep prevalence balanced
        picked = np.argsort(counts + rng.uniform(0, 0.5, len(counts)))[: min(size, len(disease_ids))]
        counts[picked] += 1
        labels.append(frozenset(disease_ids[i] for i in picked))
    return [labels[i] for i in rng.permutation(n)]


def _heldout_patients(n_patients: int, fraction: float, rng: np.random.Generator) -> set[int]:
    n_held = round(fraction * n_patients)
    if fraction > 0 and n_patients >= 2:
        n_held = min(max(n_held, 1), n_patients - 1)
    return set(rng.permutation(n_patients)[:n_held].tolist())


def plan_cohort(
    count: int, *, prefix: str, disease_ids: Sequence[str], heldout_fraction: float, rng: np.random.Generator
) -> list[Planned]:
    """``count`` images of ``ceil(count/2)`` patients (both eyes, same split), labels per split."""
    n_patients = math.ceil(count / 2)
    held = _heldout_patients(n_patients, heldout_fraction, rng)
    eyes: list[tuple[int, str]] = [(p, eye) for p in range(n_patients) for eye in ("R", "L")][:count]
    by_split = {split: [pe for pe in eyes if (pe[0] in held) == (split == "heldout")] for split in SPLITS}
    planned: dict[tuple[int, str], Planned] = {}
    for split, members in by_split.items():
        for (patient, eye), labels in zip(members, allocate_labels(len(members), disease_ids, rng), strict=True):
            planned[(patient, eye)] = Planned(f"{prefix}{patient + 1:04d}", eye, split, labels)
    return [planned[pe] for pe in eyes]


# ----------------------------------------------------------------------------- rendering


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream`` (0 fundus, 1 OCT) for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def _render(job: _Job) -> None:
    rng = image_rng(job.seed, job.kind, job.index)
    if job.kind == _FUNDUS:
        image = render_fundus(job.labels, rng=rng, width=job.width, height=job.height, eye=job.eye)
        image.save(job.path, "JPEG", quality=JPEG_QUALITY)
    else:
        render_oct(job.labels, rng=rng, width=job.width, height=job.height, eye=job.eye).save(job.path, "PNG")


def _render_batch(jobs: list[_Job]) -> int:
    for job in jobs:
        _render(job)
    return len(jobs)


def _run_jobs(jobs: list[_Job], workers: int, progress: Callable[[int, int], None] | None) -> None:
    total, done = len(jobs), 0
    if workers == 1:
        for job in jobs:
            _render(job)
            done += 1
            if progress:
                progress(done, total)
        return
    size = max(1, min(16, total // (workers * 8)))
    batches = [jobs[i : i + size] for i in range(0, total, size)]
    # spawn: safe whatever the parent holds (torch threads, DALI pipelines)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_render_batch, b) for b in batches]):
            done += future.result()
            if progress:
                progress(done, total)


def _jobs(
    planned: list[Planned], kind: int, folder: Path, suffix: str, seed: int, size: tuple[int, int]
) -> tuple[list[_Job], list[Record]]:
    jobs, records = [], []
    for i, p in enumerate(planned):
        path = folder / f"{p.name}{suffix}"
        jobs.append(_Job(kind, i, seed, p.labels, p.eye, str(path), size[0], size[1]))
        records.append(Record(path=path, patient_id=p.patient_id, eye=p.eye, split=p.split, labels=p.labels))
    return jobs, records


def _check_generate_args(count: int, oct_count: int, heldout_fraction: float, workers: int, catalog: Catalog) -> None:
    if count < 1 or oct_count < 0:
        raise ConfigError(f"need count >= 1 and oct_count >= 0, got {count} and {oct_count}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must lie in [0, 1), got {heldout_fraction}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    unknown = sorted(set(catalog.ids) - set(DISEASES))
    if unknown:
        raise ConfigError(f"the phantom cannot draw catalog diseases {unknown}; it knows {list(DISEASES)}")


def generate(
    out_dir: str | Path,
    *,
    count: int = 720,
    oct_count: int = 480,
    seed: int = 0,
    width: int = 2048,
    height: int = 1536,
    heldout_fraction: float = 0.25,
    workers: int = 2,
    catalog: Catalog = DEFAULT_CATALOG,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a phantom data set under ``out_dir``; returns the fundus manifest's path.

    ``progress(done, total)`` is called as images (fundus and OCT together) are written.
    """
    _check_generate_args(count, oct_count, heldout_fraction, workers, catalog)
    check_frame(width, height)
    out = Path(out_dir).resolve()
    (out / "fundus").mkdir(parents=True, exist_ok=True)
    fundus_plan = plan_cohort(
        count,
        prefix="P",
        disease_ids=catalog.ids,
        heldout_fraction=heldout_fraction,
        rng=image_rng(seed, _FUNDUS_COHORT, 0),
    )
    jobs, fundus_records = _jobs(fundus_plan, _FUNDUS, out / "fundus", ".jpg", seed, (width, height))
    oct_records: list[Record] = []
    if oct_count:
        (out / "oct").mkdir(exist_ok=True)
        oct_plan = plan_cohort(
            oct_count,
            prefix="O",
            disease_ids=catalog.ids,
            heldout_fraction=heldout_fraction,
            rng=image_rng(seed, _OCT_COHORT, 0),
        )
        oct_jobs, oct_records = _jobs(oct_plan, _OCT, out / "oct", ".png", seed, OCT_FRAME)
        jobs += oct_jobs
    _run_jobs(jobs, workers, progress)
    if oct_records:
        write_manifest(out / OCT_MANIFEST, oct_records, catalog=catalog)
    return write_manifest(out / FUNDUS_MANIFEST, fundus_records, catalog=catalog)
