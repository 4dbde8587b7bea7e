"""``Preprocessor``: encoded payloads -> ``Preprocessed``, through the decoder ``cfg.decoder`` names."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from predilect.preprocess.config import PreprocessCfg
from predilect.preprocess.decoders import DecodedBatch, Decoder, Sniffed, joined, open_decoder
from predilect.preprocess.result import FieldBox, InvalidImageError, Preprocessed, decode_failure, field_box_in_frame
from predilect.preprocess.sniff import Payload, as_uint8, inspect_image


@dataclass
class Preprocessor:
    """Runs the pipeline of ``cfg`` on encoded images, isolating bad ones.

    ``run`` sniffs every payload's header (``inspect_image``), decodes the valid ones in batches
    of ``max_batch_size`` with the decoder ``cfg.decoder`` names (opened on first use:
    ``num_threads`` decode threads, ``device_id`` the GPU of ``dali_mixed``), and returns one
    ``Preprocessed``. A bad payload gets its own rejection and never fails or changes the
    others in its batch.

    Thread-safe: concurrent ``run`` calls are serialised by a lock, one batch through the
    decoder at a time (the DALI pipelines and the decode pool are not re-entrant). For
    parallel throughput, give each worker its own ``Preprocessor``, or more ``num_threads``.
    """

    cfg: PreprocessCfg
    max_batch_size: int = 16
    num_threads: int = 2
    device_id: int | None = None
    _decoder: Decoder | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def run(
        self,
        payloads: Sequence[Payload],
        *,
        quality: bool = False,
        field_angles_deg: Sequence[float | None] | None = None,
    ) -> Preprocessed:
        """Preprocess encoded images; ``quality``: also cut the squares the gradability step measures
        (``Preprocessed.quality_planes``, where ``cfg.separate_quality_square``); ``field_angles_deg``:
        per payload, the field angle of its camera (None: the model's; ``PreprocessCfg.crop_scale``)."""
        if field_angles_deg is not None and len(field_angles_deg) != len(payloads):
            raise ValueError(f"{len(field_angles_deg)} field angles for {len(payloads)} payloads")
        angles = list(field_angles_deg) if field_angles_deg is not None else [None] * len(payloads)
        with self._lock:
            return self._run(payloads, angles, quality=quality)

    def close(self) -> None:
        """Release the decoder's threads and pipeline; a later ``run`` opens it again."""
        with self._lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None

    def _run(self, payloads: Sequence[Payload], angles: Sequence[float | None], *, quality: bool) -> Preprocessed:
        errors: list[InvalidImageError | None] = [None] * len(payloads)
        valid: list[tuple[int, Sniffed]] = []
        for i, (payload, angle) in enumerate(zip(payloads, angles, strict=True)):
            try:
                array = as_uint8(payload)
                valid.append((i, Sniffed(array, inspect_image(array, self.cfg), angle)))
            except InvalidImageError as e:
                errors[i] = e
            # The per-payload boundary, as in the decoders: what reading this header raised is its rejection.
            except Exception as e:  # noqa: BLE001 - the type and message are kept, the cause chained
                errors[i] = decode_failure(e)
        if self._decoder is None:
            self._decoder = open_decoder(
                self.cfg, max_batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=self.device_id
            )
        batches: list[DecodedBatch] = []
        for start in range(0, len(valid), self.max_batch_size):
            chunk = [sniffed for _, sniffed in valid[start : start + self.max_batch_size]]
            batches.append(self._decoder.decode(chunk, quality=quality))
        done = joined(self.cfg, batches, quality=quality)
        boxes: list[FieldBox | None] = [None] * len(payloads)
        frames: list[tuple[float, float] | None] = [None] * len(payloads)
        for (i, _), error, fov, frame, side in zip(valid, done.errors, done.fov, done.frames, done.sides, strict=True):
            if error is not None:
                errors[i] = error
            else:
                boxes[i], frames[i] = field_box_in_frame(*frame, *fov, side=side), frame
        return Preprocessed(done.pixels, errors, boxes, frames, done.planes)
