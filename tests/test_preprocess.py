"""The shared preprocessing: the one definition training and serving both run."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

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


def test_preprocess_cfg_rejects_gpu_decoder_when_no_device():
    from predilect.preprocess import build_pipeline

    with pytest.raises(ValueError, match="GPU"):
        build_pipeline(PreprocessCfg(decoder="dali_mixed"), batch_size=1, num_threads=1, device_id=None)


def test_preprocessor_outputs_normalised_chw_when_image_valid(preprocessor):
    (out,) = preprocessor.run([_fundus_like()])
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    cfg = preprocessor.cfg
    black = (0 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(out[:, 0, 0], black, atol=1e-5)  # corner outside the field of view
    assert out[0, 112, 112] > black[0] + 2.0  # centre of the (red) disc is bright


def test_preprocessor_results_identical_when_batched_differently(preprocessor):
    images = [_fundus_like(seed=s) for s in range(6)]
    together = preprocessor.run(images)
    alone = [preprocessor.run([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a, b)


def test_preprocessor_crops_field_of_view_when_frame_size_differs(preprocessor):
    small, large = preprocessor.run([_fundus_like(1024, 768), _fundus_like(2048, 1536)])
    # Same drawing at two camera sizes: after the FOV crop and resize they nearly coincide.
    assert np.mean(np.abs(small - large)) < 0.1


def test_preprocessor_isolates_bad_payloads_when_mixed_with_good(preprocessor):
    good = _fundus_like()
    black = io.BytesIO()
    Image.new("RGB", (640, 480)).save(black, "PNG")
    out = preprocessor.run([good, b"GIF89a-not-supported", good[:4000], black.getvalue(), b"", good])
    assert isinstance(out[0], np.ndarray) and np.array_equal(out[0], out[5])
    messages = [str(e) for e in out[1:5]]
    assert all(isinstance(e, InvalidImageError) for e in out[1:5])
    assert "not a JPEG or PNG" in messages[0]
    assert "truncated JPEG" in messages[1]
    assert "no fundus field of view" in messages[2]
    assert "empty payload" in messages[3]


def test_preprocessor_accepts_png_when_lossless(preprocessor):
    (out,) = preprocessor.run([_fundus_like(fmt="PNG")])
    assert out.shape == (3, 224, 224)


def test_preprocessor_rejects_tiny_images_when_below_min_side(preprocessor):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, "JPEG")
    (out,) = preprocessor.run([buf.getvalue()])
    assert isinstance(out, InvalidImageError) and "too small" in str(out)


def test_run_strict_raises_with_index_when_any_image_invalid(preprocessor):
    with pytest.raises(InvalidImageError, match="image 1"):
        preprocessor.run_strict([_fundus_like(), b"nope"])


@pytest.fixture(scope="module")
def dali_preprocessor():
    return Preprocessor(PreprocessCfg(decoder="dali_cpu"), max_batch_size=4)


def test_preprocess_cfg_defaults_to_pil_draft_when_not_given():
    assert PreprocessCfg().decoder == "pil_draft"


def test_pil_draft_results_identical_when_batched_differently():
    threaded = Preprocessor(PreprocessCfg(decoder="pil_draft"), max_batch_size=3, num_threads=2)
    serial = Preprocessor(PreprocessCfg(decoder="pil_draft"), max_batch_size=16, num_threads=1)
    images = [_fundus_like(2048, 1536, seed=s) for s in range(5)]
    together, chunked = threaded.run(images), serial.run(images)
    alone = [serial.run([im])[0] for im in images]
    for a, b, c in zip(together, chunked, alone, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_pil_draft_matches_dali_cpu_closely_when_same_image(preprocessor, dali_preprocessor):
    images = [_fundus_like(2048, 1536, seed=s) for s in range(3)]
    for fast, full in zip(preprocessor.run(images), dali_preprocessor.run(images), strict=True):
        assert fast.shape == full.shape and np.mean(np.abs(fast - full)) < 0.05


def test_pil_draft_decodes_finer_scale_when_disc_small_in_frame():
    from predilect.preprocess import pil_draft_preprocess

    small_disc = _fundus_like(2048, 1536, seed=4)
    im = Image.open(io.BytesIO(small_disc)).resize((1024, 768))
    framed = Image.new("RGB", (2048, 1536))
    framed.paste(im.resize((400, 300)), (824, 618))  # the disc now spans ~300 px of the frame
    buf = io.BytesIO()
    framed.save(buf, "JPEG", quality=92)
    tensor, fov_w, fov_h = pil_draft_preprocess(np.frombuffer(buf.getvalue(), np.uint8), PreprocessCfg())
    assert tensor.shape == (3, 224, 224) and 250 < max(fov_w, fov_h) < 330
