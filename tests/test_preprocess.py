"""The shared preprocessing: the one definition training and serving both run."""

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from predilect.errors import ConfigError, UserError
from predilect.preprocess import InvalidImageError, PreprocessCfg, Preprocessor


def _fundus_like(width=1024, height=768, seed=1, fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(im)
    r = int(height * 0.51)
    cx, cy = width // 2, height // 2
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(190, 90, 40))
    for _ in range(12):
        x, y = rng.integers(cx - r // 2, cx + r // 2), rng.integers(cy - r // 2, cy + r // 2)
        d.ellipse([x - 12, y - 12, x + 12, y + 12], fill=tuple(int(v) for v in rng.integers(60, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, fmt, quality=92) if fmt == "JPEG" else im.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def preprocessor():
    return Preprocessor(PreprocessCfg(), max_batch_size=4)


def test_preprocess_cfg_round_trips_when_serialised_to_json():
    cfg = PreprocessCfg(size=256, mean=(0.5, 0.5, 0.5), fov_threshold=12)
    assert PreprocessCfg.from_json(cfg.to_json()) == cfg


def test_preprocessor_refuses_gpu_decoder_when_no_device():
    with pytest.raises(ConfigError, match="GPU"):
        Preprocessor(PreprocessCfg(decoder="dali_mixed"), device_id=None).run([_fundus_like()])


def test_preprocessor_outputs_normalised_chw_when_image_valid(preprocessor):
    (out,) = preprocessor.run([_fundus_like()]).per_payload()
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    cfg = preprocessor.cfg
    black = (0 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(out[:, 0, 0], black, atol=1e-5)  # corner outside the field of view
    assert out[0, 112, 112] > black[0] + 2.0  # centre of the (red) disc is bright


def test_preprocessor_results_identical_when_batched_differently(preprocessor):
    images = [_fundus_like(seed=s) for s in range(6)]
    together = preprocessor.run(images).per_payload()
    alone = [preprocessor.run([im]).per_payload()[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a, b)


def test_preprocessor_crops_field_of_view_when_frame_size_differs(preprocessor):
    small, large = preprocessor.run([_fundus_like(1024, 768), _fundus_like(2048, 1536)]).pixels_or_raise()
    # Same drawing at two camera sizes: after the FOV crop and resize they nearly coincide.
    assert np.mean(np.abs(small - large)) < 0.1


def test_preprocessor_isolates_bad_payloads_when_mixed_with_good(preprocessor):
    good = _fundus_like()
    black = io.BytesIO()
    Image.new("RGB", (640, 480)).save(black, "PNG")
    done = preprocessor.run([good, b"GIF89a-not-supported", good[:4000], black.getvalue(), b"", good])
    assert done.accepted == [0, 5] and len(done.pixels) == 2
    assert done.boxes[1:5] == [None] * 4 and done.frames[0] == (1024.0, 768.0)
    out = done.per_payload()
    assert isinstance(out[0], np.ndarray) and np.array_equal(out[0], out[5])
    messages = [str(e) for e in out[1:5]]
    assert all(isinstance(e, InvalidImageError) for e in out[1:5])
    assert "not a JPEG or PNG" in messages[0]
    assert "truncated JPEG" in messages[1]
    assert "no fundus field of view" in messages[2]
    assert "empty payload" in messages[3]


def test_preprocessor_accepts_png_when_lossless(preprocessor):
    (out,) = preprocessor.run([_fundus_like(fmt="PNG")]).per_payload()
    assert out.shape == (3, 224, 224)


def test_preprocessor_rejects_tiny_images_when_below_min_side(preprocessor):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, "JPEG")
    (out,) = preprocessor.run([buf.getvalue()]).per_payload()
    assert isinstance(out, InvalidImageError) and "too small" in str(out)


def test_pixels_or_raise_raises_with_index_when_any_image_invalid(preprocessor):
    with pytest.raises(InvalidImageError, match="image 1"):
        preprocessor.run([_fundus_like(), b"nope"]).pixels_or_raise()


def test_invalid_image_error_is_user_error_when_raised():
    assert issubclass(InvalidImageError, UserError)


@pytest.fixture(scope="module")
def dali_preprocessor():
    return Preprocessor(PreprocessCfg(decoder="dali_cpu"), max_batch_size=4)


def test_preprocess_cfg_defaults_to_pil_draft_when_not_given():
    assert PreprocessCfg().decoder == "pil_draft"


def test_pil_draft_results_identical_when_batched_differently():
    threaded = Preprocessor(PreprocessCfg(decoder="pil_draft"), max_batch_size=3, num_threads=2)
    serial = Preprocessor(PreprocessCfg(decoder="pil_draft"), max_batch_size=16, num_threads=1)
    images = [_fundus_like(2048, 1536, seed=s) for s in range(5)]
    together, chunked = threaded.run(images).per_payload(), serial.run(images).per_payload()
    alone = [serial.run([im]).per_payload()[0] for im in images]
    for a, b, c in zip(together, chunked, alone, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_pil_draft_matches_dali_cpu_closely_when_same_image(preprocessor, dali_preprocessor):
    images = [_fundus_like(2048, 1536, seed=s) for s in range(3)]
    for fast, full in zip(preprocessor.run(images).pixels, dali_preprocessor.run(images).pixels, strict=True):
        assert fast.shape == full.shape and np.mean(np.abs(fast - full)) < 0.05


def test_pil_draft_decodes_finer_scale_when_disc_small_in_frame():
    small_disc = _fundus_like(2048, 1536, seed=4)
    im = Image.open(io.BytesIO(small_disc)).resize((1024, 768))
    framed = Image.new("RGB", (2048, 1536))
    framed.paste(im.resize((400, 300)), (824, 618))  # the disc now spans ~300 px of the frame
    buf = io.BytesIO()
    framed.save(buf, "JPEG", quality=92)
    done = Preprocessor(PreprocessCfg(), num_threads=1).run([buf.getvalue()])
    (box,) = done.boxes
    assert box is not None
    left, _, right, _ = box
    assert done.pixels.shape == (1, 3, 224, 224) and 250 < (right - left) * 2048 < 330  # the square's side in px


@pytest.mark.timeout(120)  # without the lock, concurrent DALI runs hang or swap results
def test_preprocessor_gives_serial_results_when_called_from_threads_at_once(dali_preprocessor):
    batches = [[_fundus_like(640, 480, seed=10 * k + s) for s in range(1 + k)] for k in range(3)]
    expected = [dali_preprocessor.run(batch).pixels_or_raise() for batch in batches]
    results: dict[int, list[np.ndarray]] = {k: [] for k in range(len(batches))}
    start = threading.Barrier(len(batches))

    def worker(k: int) -> None:
        start.wait()
        for _ in range(4):
            results[k].append(dali_preprocessor.run(batches[k]).pixels_or_raise())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, runs in results.items():  # each thread gets its own images' tensors, as if run alone
        assert len(runs) == 4 and all(r.shape == expected[k].shape and np.array_equal(r, expected[k]) for r in runs)


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_preprocess_loads_no_decoder_library_when_only_cfg_and_results_used():
    code = (
        "import predilect.preprocess, predilect.lesions, predilect.quality\n"
        "from predilect.preprocess import PreprocessCfg, Preprocessed, InvalidImageError, field_box_in_frame"
    )
    assert _loaded_after(code, ("PIL", "simplejpeg", "nvidia")) == []


def test_preprocessor_imports_only_its_own_backend_when_decoder_is_pil_draft():
    code = "from predilect.preprocess import Preprocessor, PreprocessCfg\nPreprocessor(PreprocessCfg()).run([b'x'])"
    backend = "predilect.preprocess.decoders.pil_draft"
    assert _loaded_after(code, (backend, "nvidia")) == [backend]


def test_decoder_table_names_a_backend_module_when_a_decoder_is_allowed() -> None:
    import importlib.util

    from predilect.preprocess.config import DECODERS
    from predilect.preprocess.decoders import BACKEND_MODULES

    assert set(BACKEND_MODULES) == set(DECODERS)
    assert all(importlib.util.find_spec(module) is not None for module in BACKEND_MODULES.values())


def test_pixel_budget_never_holds_more_than_its_capacity_when_threads_contend() -> None:
    import threading
    import time

    from predilect.preprocess.budget import PixelBudget

    budget = PixelBudget(100)
    held, lock, most = [0], threading.Lock(), [0]

    def decode(pixels: int) -> None:
        with budget.hold(pixels):  # a frame over the capacity holds all of it
            with lock:
                held[0] += min(pixels, 100)
                most[0] = max(most[0], held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= min(pixels, 100)

    threads = [threading.Thread(target=decode, args=(p,)) for p in [60, 30, 250, 40, 10, 90] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] <= 100, f"{most[0]} pixels held at once, over the capacity"
