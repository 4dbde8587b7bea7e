"""Shift monitoring: reference distributions, drift against them, and the served per-camera metrics."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from predilect import contract, drift


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Triton's metrics endpoint, parsed: sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items()))


def test_histogram_bins_values_with_le_semantics_when_built_from_quantiles() -> None:
    values = np.arange(100, dtype=np.float64)
    histogram = drift.Histogram.of(values)
    assert len(histogram.edges) == drift.BINS - 1 and np.isclose(sum(histogram.shares), 1.0)
    counts = histogram.bin_counts(np.array([histogram.edges[0], histogram.edges[0] + 1e-9, np.nan]))
    assert counts[0] == 1 and counts[1] == 1 and counts.sum() == 2  # a value on an edge lies in the bin below it
    tied = drift.Histogram.of(np.zeros(50))
    assert tied.edges == (0.0,) and tied.shares == (1.0, 0.0)


def test_compare_reports_stable_when_same_population_and_alert_when_shifted() -> None:
    rng = np.random.default_rng(0)
    reference = drift.Reference.build(
        measures={"blur": rng.normal(0.4, 0.03, 2000)},
        probabilities={"dr": rng.beta(1, 6, 2000)},
        ungradable=rng.random(2000) < 0.05,
        source="test",
    )
    again = drift.Reference.from_json(reference.to_json())
    assert again == reference
    same = drift.compare(
        again,
        measures={"blur": rng.normal(0.4, 0.03, 500)},
        probabilities={"dr": rng.beta(1, 6, 500)},
        ungradable=rng.random(500) < 0.05,
    )
    assert same.level == "stable", same.to_dict()
    shifted = drift.compare(
        again,
        measures={"blur": rng.normal(0.47, 0.03, 500)},  # a softer camera
        probabilities={"dr": rng.beta(1, 6, 500)},
        ungradable=rng.random(500) < 0.3,
    )
    by_name = {s.name: s for s in shifted.series}
    assert by_name["quality.blur"].level == "alert" and by_name[drift.UNGRADABLE].level == "alert"
    assert by_name["probability.dr"].level == "stable" and shifted.level == "alert"
    few = drift.compare(again, measures={"blur": np.full(10, 2.0)}, probabilities={}, ungradable=np.zeros(10, bool))
    assert few.level == drift.TOO_FEW


def test_reference_from_json_raises_user_error_when_malformed() -> None:
    with pytest.raises(drift.ReferenceError, match="format"):
        drift.Reference.from_json('{"format": "other"}')
    with pytest.raises(drift.ReferenceError, match="readable"):
        drift.Reference.from_json("{")


@pytest.fixture(scope="module")
def screened_by_camera(layout_server, fundus_jpeg) -> tuple[object, dict[str, list[tuple[dict[str, str], float]]]]:
    """Four photographs sent naming camera "Cam A/1", two without a camera, then the metrics scraped."""
    from predilect.client import ScreeningClient

    with ScreeningClient(layout_server.grpc_url, timeout_s=60, camera="Cam A/1") as client:
        named = [client.screen(fundus_jpeg(seed)) for seed in range(4)]
    with ScreeningClient(layout_server.grpc_url, timeout_s=60) as client:
        unnamed = [client.screen(fundus_jpeg(seed)) for seed in (4, 5)]
    assert all(r.camera == "Cam A/1" for r in named) and all(r.camera is None for r in unnamed)
    return layout_server, _scrape(layout_server.metrics_url)


def test_served_metrics_count_images_and_measures_by_camera_when_request_names_it(screened_by_camera) -> None:
    _, samples = screened_by_camera
    # The session's server answers other tests too: at least what this test sent, under its labels.
    assert _value(samples, "predilect_images_total", camera="Cam A/1") == 4
    assert _value(samples, "predilect_images_total", camera="unknown") >= 2
    assert _value(samples, "predilect_quality_blur_count", camera="Cam A/1") == 4
    buckets = [labels["le"] for labels, _ in samples["predilect_quality_blur_bucket"] if labels["camera"] == "Cam A/1"]
    assert "+Inf" in buckets and len(buckets) > 2
    assert {labels["model"] for labels, _ in samples["predilect_images_total"]} == {"uopsl-tiny"}


def test_served_metrics_observe_probabilities_of_gradable_images_when_split_or_fused(screened_by_camera) -> None:
    _, samples = screened_by_camera
    diseases = {labels["disease"] for labels, _ in samples.get("predilect_probability_count", [])}
    assert "dr" in diseases
    gradable = _value(samples, "predilect_images_total", camera="Cam A/1", gradable="true")
    assert _value(samples, "predilect_probability_count", camera="Cam A/1", disease="dr") == gradable


def test_request_camera_cleans_label_when_parameter_is_odd() -> None:
    from predilect.serving.backends.shift_metrics import request_camera

    assert request_camera(None) == "unknown" and request_camera("{}") == "unknown"
    odd = json.dumps({contract.REQUEST_CAMERA: "Topcon {NW}\n400"})
    assert request_camera(odd) == "Topcon _NW__400"
    assert request_camera("not json") == "unknown"
