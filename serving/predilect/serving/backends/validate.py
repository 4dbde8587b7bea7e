"""The ``validate_image`` model of the GPU profile: the per-request check and field measure before DALI.

The DALI backend decodes a whole dynamic batch in one pipeline run, and one payload that the
decoder cannot read fails every request of that batch. This Python-backend step (on the CPU,
before the ensemble reaches the GPU) answers each bad request on its own, with the same
``contract.ERROR_IMAGE_REJECTED`` error as the CPU profile, and passes the good bytes on unchanged,
with the field of view and the frame they were measured to have (``FOV_EXTENT``,
``FRAME_EXTENT``): the DALI graph crops by the first (the backend's legacy executor cannot take
a crop side measured on the GPU; ``predilect.preprocess.field``), ``postprocess`` places
``FIELD_BOX`` from both.

Checks, in order: ``predilect.preprocess.inspect_image`` (format, truncation, dimensions); the
segment structure nvJPEG and libpng depend on -- JPEG marker segments up to the scan, an 8-bit
frame of 1 or 3 components, quantisation and Huffman tables present (or the standard ones
implied by a motion-JPEG frame); PNG chunk lengths and CRCs; then the field measure, a
DCT-scaled decode with libjpeg-turbo in strict mode (full resolution for PNG): what the CPU
profile's decoder reads, so scan data it calls corrupt is refused here too. The
no-field-of-view rejection stays in the postprocess step, per request.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predilect import contract
from predilect.preprocess import InvalidImageError, PreprocessCfg, as_uint8, fov_error, inspect_image
from predilect.preprocess.decoders import Sniffed
from predilect.preprocess.field import HostField, measure_field
from predilect.serving.backends import model_parameters, parse_model_config
from predilect.serving.backends.preprocess import FieldAngle, checked_payloads, field_angles_of, rejection_response

_SOF_MARKERS = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman): nvJPEG's formats
_UNSUPPORTED_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: no length field


def jpeg_structure_error(data: bytes) -> str | None:
    """Why the JPEG's segment structure would fail a decoder, or None. Reads up to the first scan."""
    pos, frame, tables = 2, None, {"DQT": False, "DHT": False}
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return f"corrupt JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02x}"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            return f"corrupt JPEG: segment 0xFF{marker:02X} at byte {pos} claims {length} bytes"
        segment = data[pos + 4 : pos + 2 + length]
        if marker in _UNSUPPORTED_SOF:
            return f"unsupported JPEG coding (SOF 0xFF{marker:02X}): only baseline, extended and progressive"
        if marker in _SOF_MARKERS:
            if len(segment) < 6:
                return "corrupt JPEG: frame header too short"
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            if precision != 8 or components not in (1, 3) or len(segment) != 6 + 3 * components:
                return f"unsupported JPEG frame: {precision}-bit, {components} components"
            if width == 0 or height == 0:
                return "corrupt JPEG: frame of zero width or height"
            frame = marker
        elif marker == 0xDB:
            tables["DQT"] = True
        elif marker == 0xC4:
            tables["DHT"] = True
        elif marker == 0xDA:  # start of scan: the entropy-coded data follows
            if frame is None:
                return "corrupt JPEG: scan before any frame header"
            if not tables["DQT"]:
                return "corrupt JPEG: no quantisation table before the scan"
            return None  # a missing DHT means the standard tables (motion JPEG), which decoders supply
        pos += 2 + length
    return "corrupt JPEG: no scan (SOS) segment"


def png_structure_error(data: bytes) -> str | None:
    """Why the PNG's chunk structure is damaged (bad length or CRC), or None."""
    pos, seen_idat = 8, False
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"corrupt PNG: chunk {kind!r} at byte {pos} runs past the end"
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            return f"corrupt PNG: CRC mismatch in chunk {kind!r} at byte {pos}"
        seen_idat = seen_idat or kind == b"IDAT"
        if kind == b"IEND":
            return None if seen_idat else "corrupt PNG: no image data (IDAT)"
        pos = end
    return "corrupt PNG: no IEND chunk"


def validate_image(
    payload: np.ndarray, cfg: PreprocessCfg, *, field_angle_deg: float | None = None
) -> HostField | InvalidImageError:
    """One encoded image (1-D uint8): its field of view, frame and crop (for a camera of ``field_angle_deg``),
    or the rejection that keeps it from DALI."""
    data = as_uint8(payload)
    try:
        header = inspect_image(data, cfg)
    except InvalidImageError as e:
        return e
    raw = data.tobytes()
    problem = jpeg_structure_error(raw) if header.format == "jpeg" else png_structure_error(raw)
    if problem:
        return InvalidImageError(problem)
    field = measure_field(Sniffed(data, header, field_angle_deg), cfg)
    if isinstance(field, HostField):
        return fov_error(cfg, *field.fov) or field
    return field


@dataclass(frozen=True)
class ValidImage:
    """One request's output tensors: the unchanged ``[1, n]`` bytes and its ``[1, 2]`` extents."""

    image: np.ndarray
    fov_extent: np.ndarray
    frame_extent: np.ndarray

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            contract.VALID_IMAGE: self.image,
            contract.FOV_EXTENT: self.fov_extent,
            contract.FRAME_EXTENT: self.frame_extent,
        }


def validate_requests(
    images: Sequence[np.ndarray], cfg: PreprocessCfg, field_angles: Sequence[FieldAngle] | None = None
) -> list[ValidImage | InvalidImageError]:
    """Per request: its ``ValidImage``, or the ``InvalidImageError`` that rejects it; ``field_angles``: per
    request, its camera's (``preprocess.request_field_angle``)."""
    results: list[ValidImage | InvalidImageError] = []
    payloads, angles = checked_payloads(images, field_angles)
    for image, payload, angle in zip(images, payloads, angles, strict=True):
        if isinstance(payload, InvalidImageError):
            results.append(payload)
            continue
        field = validate_image(payload, cfg, field_angle_deg=angle)
        if isinstance(field, InvalidImageError):
            results.append(field)
            continue
        results.append(
            ValidImage(
                np.ascontiguousarray(image, dtype=np.uint8),
                field.crop_extent()[np.newaxis],
                field.frame_extent()[np.newaxis],
            )
        )
    return results


class TritonPythonModel:
    """Triton adapter of ``validate_requests``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        params = model_parameters(parse_model_config(args))
        self._cfg = PreprocessCfg.from_json(params[contract.KEY_PREPROCESS])

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        images = [pb.get_input_tensor_by_name(r, contract.IMAGE).as_numpy() for r in requests]
        responses = []
        for out in validate_requests(images, self._cfg, field_angles_of(requests)):
            if isinstance(out, InvalidImageError):
                responses.append(rejection_response(pb, out))
            else:
                tensors = [pb.Tensor(name, value) for name, value in out.tensors().items()]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses
