"""Referral rules (predilect.referral), the result they make (client results) and discovery's checks of them."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from client_faces import decided_result
from pydantic import ValidationError

from predilect import contract
from predilect.catalog import Catalog, Disease
from predilect.client.errors import IncompatibleModelError
from predilect.client.protocol import served_info
from predilect.client.results import QualityReport, ScreeningResult
from predilect.quality import default_quality_cfg
from predilect.referral import ReferralRules, RulesError

CATALOG = Catalog(
    diseases=(
        Disease("dr", "Diabetic retinopathy", ("a",), threshold=0.4, referral="routine"),
        Disease("rvo", "Retinal vein occlusion", ("b",), threshold=0.6, referral="urgent"),
        Disease("drusen", "Drusen", ("c",), threshold=0.5, referral="none"),
    )
)
RULES = ReferralRules.from_catalog(CATALOG, default_quality_cfg().to_dict())


@pytest.mark.parametrize(
    ("probabilities", "gradable", "findings", "decision"),
    [
        ([0.1, 0.1, 0.1], True, (), "no_referral"),
        ([0.4, 0.1, 0.1], True, ("dr",), "refer_routine"),  # at the threshold is positive
        ([0.39, 0.1, 0.1], True, (), "no_referral"),
        ([0.9, 0.7, 0.1], True, ("dr", "rvo"), "refer_urgent"),  # the most urgent referral wins
        ([0.1, 0.1, 0.9], True, ("drusen",), "no_referral"),  # recorded, not referred
        ([0.9, 0.9, 0.9], False, (), "ungradable"),  # no disease decision on an ungradable image
    ],
)
def test_decide_returns_most_urgent_referral_of_findings_when_gradable(
    probabilities: list[float], gradable: bool, findings: tuple[str, ...], decision: str
) -> None:
    decided = RULES.decide(probabilities, gradable=gradable)
    assert (decided.findings, decided.decision) == (findings, decision)
    assert decided.code == contract.DECISIONS.index(decision)
    assert decided.referable == (decision in ("refer_routine", "refer_urgent"))


def test_rules_digest_changes_when_a_threshold_referral_or_quality_threshold_changes() -> None:
    base = RULES.digest()
    moved = dataclasses.replace(CATALOG.diseases[0], threshold=0.41)
    assert ReferralRules.from_catalog(Catalog((moved, *CATALOG.diseases[1:])), RULES.quality).digest() != base
    urgent = dataclasses.replace(CATALOG.diseases[0], referral="urgent")
    assert ReferralRules.from_catalog(Catalog((urgent, *CATALOG.diseases[1:])), RULES.quality).digest() != base
    quality = {**RULES.quality, "thresholds": {**RULES.quality["thresholds"], "dust": 0.5}}
    assert ReferralRules.from_catalog(CATALOG, quality).digest() != base
    assert (
        ReferralRules.from_json(RULES.to_json()) == RULES and ReferralRules.from_json(RULES.to_json()).digest() == base
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "predilect.rules.v0", "diseases": [{"id": "dr", "threshold": 0.5, "referral": "none"}]}', "v1"),
        (
            '{"format": "predilect.rules.v1", "diseases": [{"id": "dr", "threshold": 1.5, "referral": "none"}]}',
            "(0, 1)",
        ),
        (
            '{"format": "predilect.rules.v1", "diseases": [{"id": "dr", "threshold": 0.5, "referral": "soon"}]}',
            "one of",
        ),
        ('{"format": "predilect.rules.v1", "diseases": []}', "distinct"),
    ],
)
def test_rules_raise_rules_error_naming_problem_when_json_is_bad(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        ReferralRules.from_json(text)


def test_check_catalog_raises_when_rules_are_not_the_catalogs() -> None:
    RULES.check_catalog(CATALOG)
    other = Catalog((dataclasses.replace(CATALOG.diseases[0], threshold=0.3), *CATALOG.diseases[1:]))
    with pytest.raises(RulesError, match="disagree"):
        RULES.check_catalog(other)


def _result(**overrides) -> dict:
    made = decided_result([0.9, 0.1, 0.1], CATALOG, latency_s=0.1, rules=RULES)
    return {**made.model_dump(), **overrides}


@pytest.mark.parametrize(
    "overrides",
    [
        {"decision": "ungradable"},  # ungradable without a failing quality check
        {"probabilities": None},  # gradable result without its probabilities
        {"audit_probabilities": {"dr": 0.9, "rvo": 0.1, "drusen": 0.1}},  # audit copy on a gradable result
        {"referable": False},  # a routine referral that is not referable
        {"quality": {"score": 0.2, "gradable": True, "reasons": ["focus"]}},  # reasons on a gradable report
    ],
)
def test_screening_result_raises_validation_error_when_fields_disagree(overrides: dict) -> None:
    ScreeningResult.model_validate(_result())
    with pytest.raises(ValidationError):
        ScreeningResult.model_validate(_result(**overrides))


def test_from_outputs_keeps_probabilities_for_audit_only_when_ungradable() -> None:
    row = [0.2] + [1.0 if r == "focus" else 0.0 for r in contract.QUALITY_REASONS]
    result = decided_result([0.9, 0.9, 0.9], CATALOG, latency_s=0.1, quality=row, rules=RULES)
    assert (result.decision, result.gradable, result.referable, result.positive) == ("ungradable", False, False, [])
    assert result.probabilities is None and result.audit_probabilities == pytest.approx({d: 0.9 for d in CATALOG.ids})
    assert result.quality == QualityReport(score=0.2, gradable=False, reasons=["focus"])
    assert result.summary() == "ungradable — focus (no disease decision)"
    assert (result.rules_digest, result.catalog_digest) == (RULES.digest(), CATALOG.digest())
    assert result.thresholds == {"dr": 0.4, "rvo": 0.6, "drusen": 0.5}


def _config(params: dict[str, str], classes: int) -> SimpleNamespace:
    def tensor(name: str, *dims: int) -> SimpleNamespace:
        return SimpleNamespace(name=name, dims=list(dims))

    return SimpleNamespace(
        parameters={k: SimpleNamespace(string_value=v) for k, v in params.items()},
        input=[tensor(contract.IMAGE, -1)],
        output=[
            tensor(contract.PROBABILITIES, classes),
            tensor(contract.QUALITY, 1 + len(contract.QUALITY_REASONS)),
            tensor(contract.QUALITY_MEASURES_TENSOR, len(contract.QUALITY_MEASURES)),
            tensor(contract.FINDINGS, classes),
            tensor(contract.REFERRAL, 1),
            tensor(contract.FIELD_BOX, 4),
        ],
    )


def _params(**overrides: str) -> dict[str, str]:
    params = {
        contract.KEY_CATALOG: CATALOG.to_json(),
        contract.KEY_PREPROCESS: "{}",
        contract.KEY_MODEL_NAME: "m",
        contract.KEY_MODEL_VERSION: "1",
        contract.KEY_RULES: RULES.to_json(),
        contract.KEY_RULES_DIGEST: RULES.digest(),
        contract.KEY_CATALOG_DIGEST: CATALOG.digest(),
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v}


def test_served_info_reads_rules_and_knows_no_heatmaps_when_model_exports_none() -> None:
    served = served_info(_config(_params(), len(CATALOG)), model_name=contract.ENSEMBLE, url="u")
    assert served.rules == RULES and served.rules_digest == RULES.digest() and not served.heatmaps


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({contract.KEY_RULES_DIGEST: "0" * 16}, "do not match"),
        ({contract.KEY_CATALOG_DIGEST: "0" * 16}, "do not match"),
        ({contract.KEY_RULES: ""}, "lacks config parameters"),
        ({contract.KEY_RULES: ReferralRules.from_catalog(CATALOG, {}).to_json().replace("0.4", "0.45")}, "disagree"),
    ],
    ids=["rules_digest", "catalog_digest", "no_rules", "rules_not_catalogs"],
)
def test_served_info_raises_incompatible_model_error_when_rules_or_digests_do_not_match(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(IncompatibleModelError, match=message):
        served_info(_config(_params(**overrides), len(CATALOG)), model_name=contract.ENSEMBLE, url="u")
