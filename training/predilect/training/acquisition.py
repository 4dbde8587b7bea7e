"""The physics of taking a fundus photograph: what the phantom's camera zoo and the training augmentation share.

Levels are 8-bit values taken as linear in light, as the phantom's gains treat them. The steps,
in the order a camera applies them:

* optics: defocus / aberration blur (``defocus``), off-axis illumination fall-off (``vignette_shade``);
* illumination and white balance: the flash or LED is a near-black-body source, so a mismatch
  between its colour temperature and the one the camera balances for scales each colour channel by
  the ratio of Planck's law at that channel's wavelength (``planck_gains``);
* the sensor: photo-electrons with shot noise, read noise, the black level clipped, then the tone
  curve and 8-bit quantisation (``expose``);
* JPEG at a quality and chroma subsampling, possibly re-encoded later (``jpeg_bytes``, ``jpeg_roundtrip``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

SECOND_RADIATION_CONSTANT_MK = 1.438777e-2
"""c2 = h c / k of Planck's law, metre-kelvin."""
CHANNEL_WAVELENGTHS_NM = (600.0, 540.0, 460.0)
"""Where a Bayer sensor's red, green and blue filters pass most light: one wavelength per channel."""
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")


def planck_gains(illuminant_k: float, white_balance_k: float) -> np.ndarray:
    """Per-channel gains (R, G, B; green = 1) of light at ``illuminant_k`` seen by a camera balanced for
    ``white_balance_k``: Planck's spectral radiance at each channel's wavelength, relative to the balance.

    A warmer source than the balance (3000 K halogen on a 5500 K balance) gives red > 1 > blue.
    """
    if illuminant_k <= 0 or white_balance_k <= 0:
        raise ValueError(f"colour temperatures must be positive, got {illuminant_k} and {white_balance_k}")

    def radiance(wavelength_nm: float, kelvin: float) -> float:
        metres = wavelength_nm * 1e-9
        return 1.0 / (metres**5 * math.expm1(SECOND_RADIATION_CONSTANT_MK / (metres * kelvin)))

    ratios = np.array(
        [radiance(nm, illuminant_k) / radiance(nm, white_balance_k) for nm in CHANNEL_WAVELENGTHS_NM], np.float64
    )
    return (ratios / ratios[1]).astype(np.float32)


def defocus(image: Image.Image, sigma_px: float) -> Image.Image:
    """``image`` through a Gaussian point-spread function of ``sigma_px`` (defocus, aberrations)."""
    return image.filter(ImageFilter.GaussianBlur(sigma_px)) if sigma_px > 0.05 else image


def vignette_shade(
    size: tuple[int, int], centre: tuple[float, float], radius: float, strength: float, power: float = 2.5
) -> np.ndarray:
    """``(H, W)`` float32 illumination ``1 - strength * (r / radius) ** power``, r from ``centre`` (clipped at 1)."""
    width, height = size
    ys = (np.arange(height, dtype=np.float32) + 0.5 - centre[1]) / radius
    xs = (np.arange(width, dtype=np.float32) + 0.5 - centre[0]) / radius
    r = np.minimum(np.hypot(xs[None, :], ys[:, None]), 1.0)
    return (1.0 - strength * r**power).astype(np.float32)


def expose(
    pixels: np.ndarray,
    gains: np.ndarray,
    *,
    full_well_e: float,
    read_noise_e: float,
    signal: float,
    gamma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """What the sensor and the tone curve make of light ``pixels`` (HxWxC uint8, linear levels) scaled by
    ``gains`` (C,): photo-electrons with shot noise, read noise, the black level clipped, the tone curve
    ``255 * (x / 255) ** gamma``, 8 bits.

    Level 255 collects ``signal * full_well_e`` electrons (a dim flash, or a small pixel, collects
    fewer: relatively more shot noise). Shot noise is Poisson; with the counts a photograph holds it
    is drawn as its normal limit (variance = mean). In level units, with k electrons a level, a pixel
    of level ``v`` in channel ``c`` becomes ``v g_c + sqrt(v g_c / k + (read / k) ** 2) z``: the mean and
    the spread are looked up per level, so a multi-megapixel frame costs a few passes per channel.
    """
    per_level = signal * full_well_e / 255.0
    levels = np.arange(256, dtype=np.float64)[None, :] * np.asarray(gains, np.float64).reshape(-1, 1)
    means = levels.astype(np.float32)
    spreads = np.sqrt(levels / per_level + (read_noise_e / per_level) ** 2).astype(np.float32)
    curve = to_uint8(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** gamma)
    out = np.empty(pixels.shape, np.uint8)
    for c in range(pixels.shape[2]):
        index = pixels[..., c]
        noisy = spreads[c][index]
        noisy *= standard_normal(index.shape, rng)
        noisy += means[c][index]
        np.maximum(noisy, 0.0, out=noisy)
        np.minimum(noisy, 255.0, out=noisy)
        out[..., c] = curve[np.rint(noisy, out=noisy).astype(np.uint8)]
    return out


NORMAL_TABLE_SIZE = 1 << 24
"""Standard normals kept for ``standard_normal``'s large draws (64 MiB of float32)."""
_DIRECT_DRAW = 1 << 20
_normal_table: np.ndarray | None = None


def standard_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Independent standard normals (float32) of ``shape``: drawn from ``rng`` for up to a million values,
    else read from a fixed table of ``NORMAL_TABLE_SIZE`` normals at offsets drawn from ``rng``.

    A multi-megapixel frame needs millions of normals per photograph, which would cost more than
    painting it; the table makes the noise of one photograph a slice of i.i.d. normals (photographs
    share the table, as film-grain synthesis shares a grain pattern), deterministic in ``rng``.
    """
    global _normal_table
    n = int(np.prod(shape))
    if n <= _DIRECT_DRAW:
        return rng.standard_normal(shape, dtype=np.float32)
    if _normal_table is None:
        _normal_table = np.random.default_rng(0x5EED).standard_normal(NORMAL_TABLE_SIZE, dtype=np.float32)
    table = _normal_table
    out = np.empty(n, np.float32)
    done = 0
    while done < n:
        start = int(rng.integers(0, NORMAL_TABLE_SIZE))
        take = min(n - done, NORMAL_TABLE_SIZE - start)
        out[done : done + take] = table[start : start + take]
        done += take
    return out.reshape(shape)


def to_uint8(levels: np.ndarray) -> np.ndarray:
    """Round and clip float levels to 8 bits."""
    out = np.clip(levels, 0.0, 255.0)
    return np.rint(out, out=out).astype(np.uint8)


def jpeg_bytes(image: Image.Image, *, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG of ``image`` at ``quality`` (1-95) with ``subsampling`` chroma (ignored for greyscale)."""
    if subsampling not in SUBSAMPLINGS:
        raise ValueError(f"subsampling must be one of {SUBSAMPLINGS}, got {subsampling!r}")
    buffer = io.BytesIO()
    options = {} if image.mode == "L" else {"subsampling": subsampling}
    image.save(buffer, "JPEG", quality=int(quality), **options)
    return buffer.getvalue()


def jpeg_roundtrip(image: Image.Image, qualities: Sequence[int], *, subsampling: str = "4:2:0") -> Image.Image:
    """``image`` encoded and decoded once per quality, in order (a capture, then later re-encodings)."""
    for quality in qualities:
        with Image.open(io.BytesIO(jpeg_bytes(image, quality=quality, subsampling=subsampling))) as decoded:
            image = decoded.convert(image.mode)
    return image
