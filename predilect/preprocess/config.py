"""``PreprocessCfg``: the preprocessing constants a checkpoint carries and a model repository serves.

Standard library only. Every decoder (``predilect.preprocess.decoders``) and the DALI graph
(``predilect.preprocess.dali``) are derived from one of these; ``dali_outputs`` names the
tensors that graph returns, for the model configs that declare them without importing DALI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from predilect import contract
from predilect.errors import ConfigError

INTERPOLATIONS = ("linear", "cubic", "lanczos3", "triangular")
"""The antialiased resize filters; each decoder maps them to its library's own."""
DECODERS = ("pil_draft", "dali_cpu", "dali_mixed")
"""The decoders, each a module of ``predilect.preprocess.decoders`` of the same name."""
FIELD_ANGLES_DEG = (10.0, 220.0)
"""Field angles a fundus camera has, degrees: a direct ophthalmoscope's narrowest to an ultra-wide-field scanner."""


@dataclass(frozen=True)
class PreprocessCfg:
    """Preprocessing constants; saved with the checkpoint and served with the model.

    Attributes:
        size: side of the square model input, in pixels.
        mean, std: per-channel normalisation, in units of the [0, 1] intensity range.
        fov_threshold: 8-bit level; a pixel whose brightest channel exceeds it lies inside
            the camera's field of view (the fundus disc), darker pixels are the black mask.
        interpolation: antialiased resize filter.
        decoder: ``pil_draft`` (libjpeg DCT-domain downscaled decode, the CPU profile),
            ``dali_cpu`` (full-resolution host decode in DALI) or ``dali_mixed`` (nvJPEG, GPU
            profile). Checkpoints carry their cfg, so older ones keep ``dali_cpu``.
        min_side_px, max_pixels: accepted image dimensions, checked before decoding.
        quality_size: side of the square the gradability step measures (``predilect.quality``), in
            pixels: the side its thresholds were calibrated at (``QualityCfg.size``). When it differs
            from ``size``, preprocessing cuts a second square of this side from the same decoded
            frame with the same crop (``Preprocessor.run(..., quality=True)``); the ``pil_draft``
            decoder then decodes for ``max(size, quality_size)`` so that neither square is upsampled,
            for training as for serving. Older cfg JSON without the key reads as 224.
        field_angle_deg: the retinal angle, in degrees, that the model square's side spans (the field
            angle of the cameras the model is trained for). A request naming its camera's field angle
            A (``contract.REQUEST_FIELD_ANGLE_DEG``) is cropped to ``field_angle_deg / A`` of its field's
            diameter, so every camera reaches the model at one retinal scale; a field that fills the
            frame (all four corners lit: a crop inside the field) is taken to be the frame's
            circumscribed circle, the smallest field a crop without black corners fits in. None (cfg
            JSON written before the key) keeps the older crop: the lit extent, no request angle.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fov_threshold: int = 20
    interpolation: str = "linear"
    decoder: str = "pil_draft"
    min_side_px: int = 64
    max_pixels: int = 40_000_000
    quality_size: int = 224
    field_angle_deg: float | None = 45.0

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"size must be >= 16, got {self.size}")
        if self.quality_size < 32:
            raise ConfigError(
                f"quality_size must be >= 32 (the gradability measures' smallest square), got {self.quality_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three channels, std > 0")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if not 0 <= self.fov_threshold < 255:
            raise ConfigError(f"fov_threshold must be an 8-bit level, got {self.fov_threshold}")
        if self.field_angle_deg is not None and not FIELD_ANGLES_DEG[0] <= self.field_angle_deg <= FIELD_ANGLES_DEG[1]:
            raise ConfigError(f"field_angle_deg must lie in {list(FIELD_ANGLES_DEG)}, got {self.field_angle_deg}")

    def crop_scale(self, field_angle_deg: float | None) -> float:
        """The crop's side over the field's diameter for a photograph of ``field_angle_deg`` (None: the model's)."""
        if self.field_angle_deg is None or field_angle_deg is None:
            return 1.0
        return self.field_angle_deg / field_angle_deg

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def separate_quality_square(self) -> bool:
        """Whether quality is measured on a square of its own (``quality_size != size``), not on the model input."""
        return self.quality_size != self.size

    @property
    def quality_shape(self) -> tuple[int, int, int]:
        """The uint8 colour planes ``(3, Q, Q)`` the gradability step measures, Q = ``quality_size``."""
        return (3, self.quality_size, self.quality_size)

    @property
    def decode_px(self) -> int:
        """The side the field-of-view square must reach when decoded: the larger of the two squares cut from it."""
        return max(self.size, self.quality_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PreprocessCfg:
        data = json.loads(text)
        for key in ("mean", "std"):
            data[key] = tuple(data[key])
        data.setdefault("field_angle_deg", None)  # written before the key: the older crop
        return cls(**data)


def check_field_angle(value: object) -> float:
    """A camera field angle in degrees from a request or a manifest; ValueError names what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"a field angle must be a number of degrees, got {type(value).__name__}")
    try:
        angle = float(value)
    except ValueError as e:
        raise ValueError(f"a field angle must be a number of degrees, got {value!r}") from e
    if not FIELD_ANGLES_DEG[0] <= angle <= FIELD_ANGLES_DEG[1]:
        low, high = FIELD_ANGLES_DEG
        raise ValueError(f"a field angle must lie in [{low:g}, {high:g}] degrees, got {angle:g}")
    return angle


def dali_inputs() -> tuple[str, ...]:
    """The external sources of every DALI graph (``predilect.preprocess.dali.pipeline_definition``), in order:
    IMAGE (the encoded bytes) and FOV_EXTENT (the field of view measured on the host,
    ``predilect.preprocess.field``)."""
    return (contract.IMAGE, contract.FOV_EXTENT)


def dali_outputs(cfg: PreprocessCfg) -> tuple[str, ...]:
    """The tensors the DALI graph of ``cfg`` returns, in order (``predilect.preprocess.dali.fundus_graph``):
    PIXELS, and QUALITY_SQUARE when ``cfg.separate_quality_square``."""
    return (contract.PIXELS, contract.QUALITY_SQUARE) if cfg.separate_quality_square else (contract.PIXELS,)
