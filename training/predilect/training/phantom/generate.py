"""Generate a phantom data set: fundus photographs, unpaired OCT B-scans, manifests and ground truth.

Layout under ``out_dir``:

* ``fundus/<patient>_<eye>.jpg`` and ``manifest.csv`` (manifest v2, splits train/val/test by
  patient; extra columns ``true_labels``, ``camera``, ``severity``, ``confounders``); a zoo preset
  names each photograph ``<patient>_<eye>_<camera>.jpg`` (a test eye has one per test camera) and
  adds the column ``capture``;
* ``oct/<patient>_<eye>.png`` and ``oct_manifest.csv``: B-scans of *other* patients (unpaired);
* ``lesions.jsonl``: per image, where each lesion was drawn (normalised image coordinates);
* ``phantom_catalog.json``: the catalog of the drawn categories (default-catalog descriptions);
* ``phantom.json``: the preset, seed, zero-shot and OCT-visible ids, camera profiles, counts.

Everything is a function of ``seed``: image ``i`` draws from ``SeedSequence(seed, spawn_key=
(stream, i))`` (stream 0 fundus, 1 OCT) and the cohort from streams 2 (fundus) and 3 (OCT),
so the bytes written do not depend on the number of workers. A zoo preset draws the training
eyes' cameras from stream 5; a test eye re-photographed by several cameras keeps its image's
stream (the same eye, lesions and colour), each camera adding its own draws. The paired B-scans
(``add_paired_oct``) draw from stream 6, one per training fundus image.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from predilect.catalog import DEFAULT_CATALOG, Catalog
from predilect.errors import ConfigError
from predilect.manifest import CAPTURE_COLUMN, FIELD_ANGLE_COLUMN, Record, write_manifest
from predilect.training.phantom.cameras import HELD_OUT, PROFILES, SEEN, Acquisition, encode, profile_stream
from predilect.training.phantom.fundus import check_frame
from predilect.training.phantom.presets import CAMERAS, CONFOUNDER_KINDS, EASY, Preset, get_preset
from predilect.training.phantom.registry import DISEASES
from predilect.training.phantom.render import FundusDrawing, FundusStyle, OctStyle, draw_fundus, draw_oct

FUNDUS_MANIFEST = "manifest.csv"
OCT_MANIFEST = "oct_manifest.csv"
PAIRED_OCT_MANIFEST = "oct_paired_manifest.csv"
LESIONS = "lesions.jsonl"
PHANTOM_CATALOG = "phantom_catalog.json"
PHANTOM_INFO = "phantom.json"
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 92
OCT_FRAME = (512, 256)

_FUNDUS, _OCT, _FUNDUS_COHORT, _OCT_COHORT, _VAL, _ZOO_CAMERAS, _PAIRED = range(7)  # seed streams


@dataclass(frozen=True)
class Planned:
    """One image to make: who, which eye, which split, which diseases (and how, in the hard preset).

    ``labels`` is what the manifest says (noisy in the hard preset's training split),
    ``true_labels`` what is drawn.
    """

    patient_id: str
    eye: str
    split: str
    labels: frozenset[str]
    true_labels: frozenset[str] | None = None
    camera: str = "reference"
    severity: Mapping[str, float] = field(default_factory=dict)
    confounders: tuple[str, ...] = ()
    cup_ratio: float | None = None
    scene: int | None = None  # the image stream it is drawn from (None: its own place in the plan)
    zoo: bool = False  # photographed through a zoo camera: the file name carries the camera

    @property
    def name(self) -> str:
        return f"{self.patient_id}_{self.eye}" + (f"_{self.camera}" if self.zoo else "")

    @property
    def drawn(self) -> frozenset[str]:
        return self.labels if self.true_labels is None else self.true_labels


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
    hard: bool = False
    severity: tuple[tuple[str, float], ...] = ()
    camera: str = "reference"
    confounders: tuple[str, ...] = ()
    cup_ratio: float | None = None
    scene: int = -1  # the image stream (-1: ``index``)
    frame: tuple[int, int] | None = None  # a zoo camera's frame (its own, or scaled down for a quick run)


# ----------------------------------------------------------------------------- cohort: easy


def allocate_labels(n: int, disease_ids: Sequence[str], rng: np.random.Generator) -> list[frozenset[str]]:
    """Label sets for ``n`` images: ~28% normal, the rest one disease or two, diseases balanced.

    Every disease gets a positive whenever ``n`` allows it, so small splits still hold each.
    """
    n_normal = round(EASY.normal_fraction * n)
    n_sick = n - n_normal
    n_pairs = round(EASY.pair_fraction * n_sick)
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


def _pick_patients(n_patients: int, fraction: float, rng: np.random.Generator, *, keep: int = 1) -> set[int]:
    """``fraction`` of ``n_patients`` (at least one when the fraction is positive, leaving ``keep``)."""
    n = round(fraction * n_patients)
    if fraction > 0 and n_patients > keep:
        n = min(max(n, 1), n_patients - keep)
    return set(rng.permutation(n_patients)[:n].tolist())


def plan_cohort(
    count: int,
    *,
    prefix: str,
    disease_ids: Sequence[str],
    test_fraction: float,
    rng: np.random.Generator,
    val_fraction: float = 0.0,
    val_rng: np.random.Generator | None = None,
) -> list[Planned]:
    """The easy cohort: ``count`` images of ``ceil(count/2)`` patients (both eyes share a split).

    Labels are balanced within train and test; then ``val_fraction`` of all patients move from
    train to val (drawn from ``val_rng``, so the images stay those the seed always drew).
    """
    n_patients = math.ceil(count / 2)
    held = _pick_patients(n_patients, test_fraction, rng)
    eyes: list[tuple[int, str]] = [(p, eye) for p in range(n_patients) for eye in ("R", "L")][:count]
    planned: dict[tuple[int, str], Planned] = {}
    for split in ("train", "test"):
        members = [pe for pe in eyes if (pe[0] in held) == (split == "test")]
        for (patient, eye), labels in zip(members, allocate_labels(len(members), disease_ids, rng), strict=True):
            planned[(patient, eye)] = Planned(f"{prefix}{patient + 1:04d}", eye, split, labels)
    train_patients = sorted({p for p in range(n_patients) if p not in held})
    if val_fraction > 0 and len(train_patients) > 1:
        share = min(1.0, val_fraction * n_patients / len(train_patients))
        picked = _pick_patients(len(train_patients), share, val_rng or rng)
        for i in picked:
            for eye in ("R", "L"):
                key = (train_patients[i], eye)
                if key in planned:
                    p = planned[key]
                    planned[key] = Planned(p.patient_id, p.eye, "val", p.labels)
    return [planned[pe] for pe in eyes]


# ----------------------------------------------------------------------------- cohort: hard


def allocate_long_tail(
    n: int,
    weights: Mapping[str, float],
    rng: np.random.Generator,
    *,
    normal_fraction: float,
    pair_fraction: float,
    minimum: int,
) -> list[frozenset[str]]:
    """Label sets for ``n`` images with prevalence proportional to ``weights`` (long-tailed).

    Each disease gets at least ``minimum`` positives when ``n`` allows; two-disease images
    make up ``pair_fraction`` of the diseased ones.
    """
    ids = list(weights)
    n_normal = round(normal_fraction * n)
    n_sick = n - n_normal
    n_pairs = min(n_sick, round(pair_fraction * n_sick)) if len(ids) > 1 else 0
    slots = n_sick + n_pairs
    floor = min(minimum, slots // max(1, len(ids)))
    p = np.array([weights[d] for d in ids], dtype=np.float64)
    p /= p.sum()
    counts = np.full(len(ids), floor) + rng.multinomial(slots - floor * len(ids), p)
    pool = [ids[i] for i in rng.permutation(np.repeat(np.arange(len(ids)), counts))]
    labels: list[frozenset[str]] = [frozenset()] * n_normal
    singles: list[str] = []
    pairs: list[set[str]] = []
    for disease in pool:
        open_pair = next((s for s in pairs if len(s) == 1 and disease not in s), None)
        if open_pair is not None:
            open_pair.add(disease)
        elif len(pairs) < n_pairs:
            pairs.append({disease})
        else:
            singles.append(disease)
    labels += [frozenset(s) for s in pairs] + [frozenset({d}) for d in singles]
    labels = labels[:n] + [frozenset()] * max(0, n - len(labels))
    return [labels[i] for i in rng.permutation(n)]


def _noisy(labels: frozenset[str], candidates: Sequence[str], rng: np.random.Generator) -> frozenset[str]:
    """A plausible grading error: a finding missed (60%) or a finding that is not there."""
    if labels and rng.random() < 0.6:
        return labels - {sorted(labels)[int(rng.integers(len(labels)))]}
    spare = [d for d in candidates if d not in labels]
    return labels | {spare[int(rng.integers(len(spare)))]} if spare else labels


def _camera(preset: Preset, split: str, rng: np.random.Generator) -> str:
    if split == "test" and preset.test_only_camera and rng.random() < preset.test_only_share:
        return preset.test_only_camera
    names = list(preset.cameras)
    weights = np.array([preset.cameras[c] for c in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def plan_hard_cohort(
    count: int, *, prefix: str, preset: Preset, rng: np.random.Generator, oct: bool = False
) -> list[Planned]:
    """The hard cohort: patient-level splits, long-tailed labels per split, zero-shot ids only in
    val/test, label noise only in train; for fundus also camera, confounders and healthy cup."""
    n_patients = math.ceil(count / 2)
    order = rng.permutation(n_patients)
    n_test, n_val = round(preset.test_fraction * n_patients), round(preset.val_fraction * n_patients)
    split_of = {int(p): "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, p in enumerate(order)}
    camera = {p: "reference" if oct else _camera(preset, split_of[p], rng) for p in range(n_patients)}
    eyes = [(p, eye) for p in range(n_patients) for eye in ("R", "L")][:count]
    planned: dict[tuple[int, str], Planned] = {}
    for split in SPLITS:
        members = [pe for pe in eyes if split_of[pe[0]] == split]
        allowed = preset.trained if split == "train" else preset.diseases
        weights = {d: preset.prevalence.get(d, 1.0) for d in allowed}
        minimum = {"train": 8, "val": 3, "test": 5}[split]
        allocated = allocate_long_tail(
            len(members),
            weights,
            rng,
            normal_fraction=preset.normal_fraction,
            pair_fraction=preset.pair_fraction,
            minimum=minimum,
        )
        for (patient, eye), truth in zip(members, allocated, strict=True):
            severity = {d: round(float(rng.beta(*preset.severity_beta)), 3) for d in sorted(truth)}
            labels = truth
            if split == "train" and rng.random() < preset.label_noise:
                labels = _noisy(truth, preset.trained, rng)
            confounders: tuple[str, ...] = ()
            cup = None
            if not oct:
                if rng.random() < preset.confounder_rate:
                    k = 1 + int(rng.random() < 0.3)
                    confounders = tuple(sorted(rng.choice(CONFOUNDER_KINDS, size=k, replace=False).tolist()))
                cup = round(float(np.clip(rng.normal(*preset.healthy_cup), 0.15, 0.65)), 3)
            planned[(patient, eye)] = Planned(
                f"{prefix}{patient + 1:04d}", eye, split, labels, truth, camera[patient], severity, confounders, cup
            )
    return [planned[pe] for pe in eyes]


# ----------------------------------------------------------------------------- rendering


def plan_zoo_cameras(planned: list[Planned], preset: Preset, rng: np.random.Generator) -> list[Planned]:
    """Zoo cameras for a planned cohort: a training or validation patient is photographed by one seen
    camera (both eyes; drawn with ``preset.cameras``' weights; the hard planner's choice is kept), and
    every test eye by each of ``preset.test_cameras`` in turn, all from the eye's own image stream."""
    names = list(preset.cameras)
    weights = np.array([preset.cameras[c] for c in names], dtype=np.float64)
    chosen: dict[str, str] = {}
    out: list[Planned] = []
    for index, p in enumerate(planned):
        if p.split == "test" and preset.test_cameras:
            out += [replace(p, camera=c, scene=index, zoo=True) for c in preset.test_cameras]
            continue
        if not preset.hard and p.patient_id not in chosen:
            chosen[p.patient_id] = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        out.append(replace(p, camera=p.camera if preset.hard else chosen[p.patient_id], scene=index, zoo=True))
    leaked = sorted({p.camera for p in out if p.split != "test"} - set(SEEN))
    if leaked:  # the preset's own check makes this unreachable; the split is the rule, so check it here too
        raise ConfigError(f"held-out cameras {leaked} planned into training or validation")
    return out


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream`` (0 fundus, 1 OCT) for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def _render(job: _Job) -> dict[str, Any]:
    """Render and write one image; returns its ground truth for ``lesions.jsonl``."""
    rng = image_rng(job.seed, job.kind, job.index if job.scene < 0 else job.scene)
    severity = dict(job.severity)
    if job.kind == _FUNDUS:
        camera = PROFILES.get(job.camera)
        if camera is not None:
            drawing = _photograph(job, replace(camera, frame=job.frame or camera.frame), rng)
        else:
            style = FundusStyle(severity, CAMERAS[job.camera], job.confounders, job.cup_ratio) if job.hard else None
            drawing = draw_fundus(job.labels, rng=rng, width=job.width, height=job.height, eye=job.eye, style=style)
            drawing.image.save(job.path, "JPEG", quality=JPEG_QUALITY)
        a = drawing.anatomy
        w, h = a.width, a.height  # lesion coordinates are the painted canvas's, normalised
        return {
            "modality": "fundus",
            "width": drawing.image.width,
            "height": drawing.image.height,
            "fov": {"x": a.centre[0] / w, "y": a.centre[1] / h, "r": a.radius / w},
            "disc": {"x": a.disc[0] / w, "y": a.disc[1] / h, "r": a.disc_radius / w},
            "fovea": {"x": a.fovea[0] / w, "y": a.fovea[1] / h},
            "lesions": [_normalised(le.disease, le.x / w, le.y / h, le.r / w) for le in drawing.lesions],
            "confounders": [
                {"kind": c.disease, **_normalised("", c.x / w, c.y / h, c.r / w, key=None)} for c in drawing.confounders
            ],
        }
    oct_style = OctStyle(severity) if job.hard else None  # _OCT and _PAIRED
    scan = draw_oct(job.labels, rng=rng, width=job.width, height=job.height, eye=job.eye, style=oct_style)
    scan.image.save(job.path, "PNG")
    return {
        "modality": "oct",
        "width": job.width,
        "height": job.height,
        "fovea": {"x": scan.fovea},
        "dd": scan.dd,
        "lesions": [_normalised(d, x, y, r) for d, x, y, r in scan.lesions],
    }


def _photograph(job: _Job, camera: Acquisition, rng: np.random.Generator) -> FundusDrawing:
    """A zoo camera's photograph of the job's eye, written as that camera's JPEG."""
    severity = dict(job.severity) if job.hard else None
    style = FundusStyle(severity, confounders=job.confounders, cup_ratio=job.cup_ratio, acquisition=camera)
    drawing = draw_fundus(job.labels, rng=rng, width=job.width, height=job.height, eye=job.eye, style=style)
    scene = job.index if job.scene < 0 else job.scene
    encoder = np.random.default_rng([job.seed, job.kind, scene, profile_stream(camera), 1])
    Path(job.path).write_bytes(encode(drawing.image, camera, encoder))
    return drawing


def _normalised(disease: str, x: float, y: float, r: float, *, key: str | None = "disease") -> dict[str, Any]:
    values: dict[str, Any] = {"x": round(x, 5), "y": round(y, 5), "r": round(r, 5)}
    return {key: disease, **values} if key else values


def _render_batch(jobs: list[_Job]) -> list[tuple[int, int, dict[str, Any]]]:
    return [(job.kind, job.index, _render(job)) for job in jobs]


def _run_jobs(
    jobs: list[_Job], workers: int, progress: Callable[[int, int], None] | None
) -> dict[tuple[int, int], dict[str, Any]]:
    total, truth = len(jobs), {}
    if workers == 1:
        for job in jobs:
            truth[(job.kind, job.index)] = _render(job)
            if progress:
                progress(len(truth), total)
        return truth
    size = max(1, min(16, total // (workers * 8)))
    batches = [jobs[i : i + size] for i in range(0, total, size)]
    # spawn: safe whatever the parent holds (torch threads, DALI pipelines)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_render_batch, b) for b in batches]):
            for kind, index, result in future.result():
                truth[(kind, index)] = result
            if progress:
                progress(len(truth), total)
    return truth


def _jobs(
    planned: list[Planned],
    kind: int,
    folder: Path,
    suffix: str,
    seed: int,
    size: tuple[int, int],
    hard: bool,
    *,
    render_height: int = 768,
    max_side: int | None = None,
) -> tuple[list[_Job], list[Record]]:
    jobs, records = [], []
    for i, p in enumerate(planned):
        path = folder / f"{p.name}{suffix}"
        camera = PROFILES.get(p.camera) if kind == _FUNDUS else None
        frame = camera.scaled(max_side).frame if camera else None
        work = replace(camera, frame=camera.scaled(max_side).frame).work_size(render_height) if camera else size
        jobs.append(
            _Job(
                kind,
                i,
                seed,
                p.drawn,
                p.eye,
                str(path),
                work[0],
                work[1],
                hard,
                tuple(sorted(p.severity.items())),
                p.camera,
                p.confounders,
                p.cup_ratio,
                -1 if p.scene is None else p.scene,
                frame,
            )
        )
        extra = {
            "true_labels": ";".join(sorted(p.drawn)) or "normal",
            "severity": ";".join(f"{d}:{v:.3f}" for d, v in sorted(p.severity.items())),
            "modality": "fundus" if kind == _FUNDUS else "oct",
        }
        if kind == _FUNDUS:
            extra |= {"camera": p.camera, "confounders": ";".join(p.confounders)}
            if camera is not None:
                extra[CAPTURE_COLUMN] = camera.capture
                extra[FIELD_ANGLE_COLUMN] = f"{camera.field_angle_deg:g}"
        records.append(
            Record(path=path, labels=p.labels, patient_id=p.patient_id, eye=p.eye, split=p.split, extra=extra)
        )
    return jobs, records


# ----------------------------------------------------------------------------- data set


def _phantom_catalog(preset: Preset, catalog: Catalog | None) -> Catalog:
    if catalog is None:
        return DEFAULT_CATALOG.subset(list(preset.diseases))
    unknown = sorted(set(catalog.ids) - set(DISEASES))
    if unknown:
        raise ConfigError(f"the phantom cannot draw catalog diseases {unknown}; it knows {list(DISEASES)}")
    return catalog


def _check_generate_args(count: int, oct_count: int, fractions: tuple[float, float], workers: int) -> None:
    if count < 1 or oct_count < 0:
        raise ConfigError(f"need count >= 1 and oct_count >= 0, got {count} and {oct_count}")
    test, val = fractions
    if not (0.0 <= test < 1.0 and 0.0 <= val < 1.0 and test + val < 1.0):
        raise ConfigError(f"test and val fractions must lie in [0, 1) and leave a training split, got {test} and {val}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")


def _plan(
    preset: Preset, count: int, prefix: str, catalog: Catalog, seed: int, stream: int, oct: bool
) -> list[Planned]:
    planned = _cohort(preset, count, prefix, catalog, seed, stream, oct)
    if oct or not preset.zoo:
        return planned
    return plan_zoo_cameras(planned, preset, image_rng(seed, _ZOO_CAMERAS, 0))


def _cohort(
    preset: Preset, count: int, prefix: str, catalog: Catalog, seed: int, stream: int, oct: bool
) -> list[Planned]:
    rng = image_rng(seed, stream, 0)
    if preset.hard:
        return plan_hard_cohort(count, prefix=prefix, preset=preset, rng=rng, oct=oct)
    return plan_cohort(
        count,
        prefix=prefix,
        disease_ids=catalog.ids,
        test_fraction=preset.test_fraction,
        val_fraction=preset.val_fraction,
        rng=rng,
        val_rng=image_rng(seed, _VAL, int(oct)),
    )


def generate(
    out_dir: str | Path,
    *,
    preset: str | Preset = "easy",
    count: int | None = None,
    oct_count: int | None = None,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    test_fraction: float | None = None,
    val_fraction: float | None = None,
    workers: int = 2,
    catalog: Catalog | None = None,
    progress: Callable[[int, int], None] | None = None,
    render_height: int | None = None,
    max_side: int | None = None,
) -> Path:
    """Write a phantom data set under ``out_dir``; returns the fundus manifest's path.

    Options left ``None`` take the preset's values. ``catalog`` restricts the easy preset to
    some of its diseases (default: the preset's diseases from ``DEFAULT_CATALOG``).
    ``progress(done, total)`` is called as images (fundus and OCT together) are written.
    A zoo preset's frames are its cameras' own: ``width`` / ``height`` do not apply to it;
    ``render_height`` caps the painted scene and ``max_side`` scales every camera's frame down
    to at most that many pixels a side (quick runs and tests; the zoo's measurements use neither).
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    p = replace(
        p,
        count=p.count if count is None else count,
        oct_count=p.oct_count if oct_count is None else oct_count,
        test_fraction=p.test_fraction if test_fraction is None else test_fraction,
        val_fraction=p.val_fraction if val_fraction is None else val_fraction,
    )
    if p.zoo and (width or height):
        raise ConfigError(f"preset {p.name!r} photographs with the camera zoo: each camera has its own frame size")
    if not p.zoo and (render_height or max_side):
        raise ConfigError(f"render_height and max_side apply to zoo presets only, not {p.name!r}")
    p = replace(p, render_height=render_height or p.render_height)
    if max_side is not None and max_side < 64:
        raise ConfigError(f"max_side must be >= 64, got {max_side}")
    size = (width or p.size[0], height or p.size[1])
    _check_generate_args(p.count, p.oct_count, (p.test_fraction, p.val_fraction), workers)
    check_frame(*size)
    phantom_catalog = _phantom_catalog(p, catalog)
    out = Path(out_dir).resolve()
    (out / "fundus").mkdir(parents=True, exist_ok=True)
    fundus_plan = _plan(p, p.count, "P", phantom_catalog, seed, _FUNDUS_COHORT, oct=False)
    jobs, fundus_records = _jobs(
        fundus_plan,
        _FUNDUS,
        out / "fundus",
        ".jpg",
        seed,
        size,
        p.hard,
        render_height=p.render_height,
        max_side=max_side,
    )
    oct_records: list[Record] = []
    if p.oct_count:
        (out / "oct").mkdir(exist_ok=True)
        oct_plan = _plan(p, p.oct_count, "O", phantom_catalog, seed, _OCT_COHORT, oct=True)
        oct_jobs, oct_records = _jobs(oct_plan, _OCT, out / "oct", ".png", seed, OCT_FRAME, p.hard)
        jobs += oct_jobs
    truth = _run_jobs(jobs, workers, progress)
    _write_lesions(out, jobs, truth)
    (out / PHANTOM_CATALOG).write_text(json.dumps(phantom_catalog.to_dict(), indent=1) + "\n", encoding="utf-8")
    _write_info(out, p, seed, size, fundus_records, oct_records, max_side=max_side)
    if oct_records:
        write_manifest(out / OCT_MANIFEST, oct_records, catalog=phantom_catalog)
    return write_manifest(out / FUNDUS_MANIFEST, fundus_records, catalog=phantom_catalog)


def _write_lesions(out: Path, jobs: list[_Job], truth: dict[tuple[int, int], dict[str, Any]]) -> None:
    lines = []
    for job in jobs:
        entry = {"path": Path(job.path).relative_to(out).as_posix(), **truth[(job.kind, job.index)]}
        lines.append(json.dumps(entry, separators=(",", ":")))
    partial = out / (LESIONS + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(out / LESIONS)


def _write_info(
    out: Path,
    p: Preset,
    seed: int,
    size: tuple[int, int],
    fundus: list[Record],
    oct_records: list[Record],
    *,
    max_side: int | None = None,
) -> None:
    cameras = p.all_cameras
    profiles = {
        name: {**(PROFILES[name].to_dict() if name in PROFILES else asdict(CAMERAS[name])), "split": _split(name)}
        for name in cameras
    }
    info: dict[str, Any] = {
        "preset": p.name,
        "seed": seed,
        "size": list(size),
        "oct_size": list(OCT_FRAME),
        "diseases": list(p.diseases),
        "zero_shot": list(p.zero_shot),
        "oct_visible": list(p.oct_visible),
        "label_noise": p.label_noise,
        "test_only_camera": p.test_only_camera,
        "cameras": profiles if p.zoo else {name: asdict(CAMERAS[name]) for name in cameras},
        "images": {
            "fundus": {s: sum(r.split == s for r in fundus) for s in SPLITS},
            "oct": {s: sum(r.split == s for r in oct_records) for s in SPLITS},
        },
    }
    if p.zoo:
        info["camera_split"] = {s: [c for c in cameras if _split(c) == s] for s in ("seen", "held_out")}
        info["test_cameras"] = list(p.test_cameras)
        info["render_height"] = p.render_height
        info["max_side"] = max_side
    (out / PHANTOM_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def add_paired_oct(
    out_dir: str | Path,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Add to a generated phantom the B-scan of every TRAINING fundus image's own eye (drawn from
    its true findings and severities, from its own seed stream, so nothing already written
    changes): ``oct_paired/<patient>_<eye>.png`` and ``oct_paired_manifest.csv`` (labels as the
    fundus image is graded, the patient and eye of the photograph, ``fundus_path``). Paired data
    the unpaired method never sees: it trains the paired upper bound. Returns the manifest."""
    from predilect.manifest import read_manifest

    out = Path(out_dir).resolve()
    info_path = out / PHANTOM_INFO
    if not info_path.is_file():
        raise ConfigError(f"{out}: no {PHANTOM_INFO}; generate the phantom first (predilect phantom --out {out})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    catalog = Catalog.from_json((out / PHANTOM_CATALOG).read_text(encoding="utf-8"))
    fundus = read_manifest(out / FUNDUS_MANIFEST, catalog=catalog)
    hard = bool(info.get("oct_visible")) or info.get("preset") == "hard"
    (out / "oct_paired").mkdir(exist_ok=True)
    jobs, records = [], []
    for i, record in enumerate(fundus):
        if record.split != "train":
            continue
        truth = record.extra.get("true_labels", "")
        drawn = frozenset() if truth in ("", "normal") else frozenset(truth.split(";"))
        severity = tuple(
            sorted(
                (d, float(v))
                for d, v in (pair.split(":") for pair in record.extra.get("severity", "").split(";") if pair)
            )
        )
        path = out / "oct_paired" / f"{record.path.stem}.png"
        jobs.append(
            _Job(_PAIRED, i, int(info["seed"]), drawn, record.eye or "R", str(path), *OCT_FRAME, hard, severity)
        )
        extra = {
            "true_labels": truth or "normal",
            "severity": record.extra.get("severity", ""),
            "modality": "oct",
            "fundus_path": record.path.relative_to(out).as_posix(),
        }
        records.append(
            Record(
                path=path,
                labels=record.labels,
                patient_id=record.patient_id,
                eye=record.eye,
                split="train",
                extra=extra,
            )
        )
    _run_jobs(jobs, workers, progress)
    return write_manifest(out / PAIRED_OCT_MANIFEST, records, catalog=catalog)


def _split(camera: str) -> str:
    return "seen" if camera in SEEN else "held_out" if camera in HELD_OUT else "unknown"
