"""What the CPU profile serves: its knobs (``ServingOptions``) and the exported model's identity.

The layouts built from them are ``predilect.serving.topology``'s; the Triton config types and
their rendering to ``config.pbtxt``, ``predilect.serving.triton_config``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from predilect import contract
from predilect.catalog import Catalog
from predilect.drift import Reference
from predilect.errors import ConfigError
from predilect.preprocess import PreprocessCfg
from predilect.quality import QualityCfg, QualitySizeError, check_size, default_quality_cfg
from predilect.referral import ReferralRules
from predilect.serving.triton_config import QueuePolicyDef

LAYOUTS = ("fused", "split")
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class ServingOptions:
    """Knobs of the served pipeline; everything else follows from the exported model.

    The defaults are the CPU profile's, tuned on 2 cores by ``predilect bench sweep``: at 16
    users the fused layout with two instances, two decode threads and one ONNX Runtime thread
    answered the most requests per second of the layouts tried (split; one fused instance with
    two ONNX Runtime threads; two with one decode thread); ``predilect assemble`` takes one
    option per field.
    """

    max_batch_size: int = field(default=16, metadata={"help": "largest dynamic batch of every model"})
    max_queue_delay_us: int = field(default=2_000, metadata={"help": "dynamic batcher wait for more requests, in us"})
    preprocess_instances: int = field(default=1, metadata={"help": "preprocess model instances"})
    classifier_instances: int = field(default=1, metadata={"help": "classifier model instances"})
    decode_threads: int = field(default=2, metadata={"help": "decode threads per preprocess instance"})
    # 2 cores: the decode pool already takes both, so ONNX Runtime gets one.
    ort_threads: int = field(default=1, metadata={"help": "ONNX Runtime intra-op threads per classifier instance"})
    preferred_batch_sizes: tuple[int, ...] = field(default=(), metadata={"help": "dynamic batcher preferred sizes"})
    # CPU profile (measured by `predilect bench` and `bench sweep`): "fused" runs preprocess, ONNX Runtime
    # and the sigmoid in one Python-backend model, so the float tensor never leaves the process;
    # "split" is the three-step ensemble. Either way clients see the same fundus_screen ensemble.
    layout: str = field(default="fused", metadata={"help": "CPU model layout: fused (one process) or split"})
    fused_instances: int = field(default=2, metadata={"help": "instances of the fused model (layout fused)"})
    precision: str = field(
        default="fp32",
        metadata={"help": "classifier precision: fp32, or int8 (the gated model `predilect quantize` wrote)"},
    )
    # Overload protection on the ensemble's first step (fused, or preprocess in the split layout):
    # past max_queue_size waiting requests, or after queue_timeout_us in the queue, a request is
    # refused at once (UNAVAILABLE) instead of waiting, so accepted requests keep their latency. A
    # client's own timeout overrides the queue timeout, so a request its client gave up on is
    # dropped before it is decoded. Measured: `predilect bench overload` (docs/RELIABILITY.md).
    max_queue_size: int = field(
        default=16, metadata={"help": "requests waiting at the first step before more are refused (0: unbounded)"}
    )
    queue_timeout_us: int = field(
        default=500_000, metadata={"help": "longest wait at the first step before refusal, in us (0: none)"}
    )

    def first_step_queue(self) -> QueuePolicyDef | None:
        """The queue policy of the ensemble's first step; None when both bounds are off."""
        if not self.max_queue_size and not self.queue_timeout_us:
            return None
        return QueuePolicyDef(
            max_queue_size=self.max_queue_size,
            default_timeout_us=self.queue_timeout_us,
            timeout_action="REJECT",
            allow_timeout_override=True,
        )

    def __post_init__(self) -> None:
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise ConfigError(
                f"max_queue_size and queue_timeout_us must be >= 0, got {self.max_queue_size}, {self.queue_timeout_us}"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        names = ("max_batch_size", "preprocess_instances", "classifier_instances", "decode_threads", "ort_threads")
        for name in (*names, "fused_instances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ConfigError(f"preferred_batch_sizes must lie in 1..max_batch_size, got {self.preferred_batch_sizes}")


@dataclass(frozen=True)
class ServedModel:
    """What the ensemble advertises: the exported model's identity and its constants.

    ``quality`` holds the gradability thresholds (default: the packaged calibration), which must
    have been calibrated at ``preprocess.quality_size`` (else ``ConfigError``: nothing is assembled);
    ``attention_grid`` is the side g of the model's ``ATTENTION`` output ``[batch, C, g, g]``, or
    None when the exported model has none (then the repository serves no ``HEATMAPS``); ``reference``
    the model's reference distributions (``predilect.drift``), served for shift monitoring when given.
    """

    catalog: Catalog
    preprocess: PreprocessCfg
    model_name: str
    model_version: str
    quality: QualityCfg = field(default_factory=default_quality_cfg)
    attention_grid: int | None = None
    reference: Reference | None = None
    heatmap_kind: str | None = None

    def __post_init__(self) -> None:
        try:
            check_size(self.quality, self.preprocess.quality_size)
        except QualitySizeError as e:
            raise ConfigError(f"model {self.model_name} {self.model_version}: {e}") from e

    @property
    def rules(self) -> ReferralRules:
        """The referral rules the repository applies: the catalog's operating points and referrals, and ``quality``."""
        return ReferralRules.from_catalog(self.catalog, self.quality.to_dict())

    def parameters(self) -> dict[str, str]:
        return {
            contract.KEY_CATALOG: self.catalog.to_json(),
            contract.KEY_PREPROCESS: self.preprocess.to_json(),
            contract.KEY_MODEL_NAME: self.model_name,
            contract.KEY_MODEL_VERSION: self.model_version,
            contract.KEY_RULES: self.rules.to_json(),
            contract.KEY_RULES_DIGEST: self.rules.digest(),
            contract.KEY_CATALOG_DIGEST: self.catalog.digest(),
            **self.reference_parameters(),
            **({contract.KEY_HEATMAP: self.heatmap_kind} if self.heatmap_kind and self.attention_grid else {}),
        }

    def reference_parameters(self) -> dict[str, str]:
        """``KEY_REFERENCE`` when the repository carries reference distributions, else nothing."""
        return {contract.KEY_REFERENCE: self.reference.to_json()} if self.reference is not None else {}


def screening_parameters(served: ServedModel) -> dict[str, str]:
    """The parameters ``Screening.from_parameters`` reads (every profile's models that grade or decide):
    the referral rules, with the quality calibration inside them, and the preprocessing; and what their
    shift metrics name and bucket by (``backends.shift_metrics``): the model's identity and reference."""
    return {
        contract.KEY_RULES: served.rules.to_json(),
        contract.KEY_PREPROCESS: served.preprocess.to_json(),
        contract.KEY_MODEL_NAME: served.model_name,
        contract.KEY_MODEL_VERSION: served.model_version,
        **served.reference_parameters(),
    }
