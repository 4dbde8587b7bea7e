"""The test lanes (tests/conftest.py): set from the fixtures each test uses, and enforced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A plugin for the collecting pytest below: each selected and deselected test's lanes and fixture closure.
PROBE = """
import json, os

LANES = ("unit", "integration", "bench", "gpu")
seen = {"selected": [], "deselected": []}


def _describe(item):
    lanes = sorted(lane for lane in LANES if item.get_closest_marker(lane) is not None)
    return {"id": item.nodeid, "lanes": lanes, "fixtures": sorted(getattr(item, "fixturenames", ()))}


def pytest_deselected(items):
    seen["deselected"] += [_describe(item) for item in items]


def pytest_collection_finish(session):
    seen["selected"] = [_describe(item) for item in session.items]
    with open(os.environ["LANES_PROBE_OUT"], "w") as f:
        json.dump(seen, f)
"""


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """The whole suite collected with ``-m "not integration"``, as the probe saw it."""
    folder = tmp_path_factory.mktemp("lanes")
    (folder / "lanes_probe.py").write_text(PROBE)
    out = folder / "collected.json"
    env = {**os.environ, "PYTHONPATH": str(folder), "LANES_PROBE_OUT": str(out)}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "lanes_probe"]
    done = subprocess.run(
        [*command, "-m", "not integration", "tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_collection_keeps_no_server_test_when_integration_deselected(collected: dict[str, list[dict]]) -> None:
    selected, deselected = collected["selected"], collected["deselected"]
    assert selected and deselected
    assert not [t["id"] for t in selected if "tritonserver" in t["fixtures"]]
    assert not [t["id"] for t in deselected if "integration" not in t["lanes"]]
    # A test that reaches the launcher only through other fixtures is deselected too.
    ids = {t["id"] for t in deselected}
    assert any(i.startswith("tests/test_client.py::") for i in ids), "the `client` fixture's tests"
    assert any(i.startswith("tests/test_end_to_end.py::test_demo_cli") for i in ids), "usefixtures"


def test_lanes_mark_every_test_by_its_fixtures_when_collected(collected: dict[str, list[dict]]) -> None:
    tests = collected["selected"] + collected["deselected"]
    for test in tests:
        assert ("integration" in test["lanes"]) == ("tritonserver" in test["fixtures"]), test
        assert test["lanes"] == ["unit"] or (test["lanes"] and "unit" not in test["lanes"]), test
    bench = sorted(t["id"] for t in tests if "bench" in t["lanes"])
    assert bench == [
        "tests/test_bench.py::test_bench_writes_report_with_plots_when_run_quick[every-stack]",
        "tests/test_front.py::test_front_answers_every_call_of_plain_tritonclient_without_retries_when_channel_is_long_lived[5200-calls]",
        "tests/test_perf_analyzer.py::test_perf_analyzer_completes_without_errors_when_run_through_the_front[c1-16-30s]",
        "tests/test_training.py::test_train_learns_held_out_diseases_when_both_stages_run_on_small_phantom[full]",
    ]
    short = {t["id"]: t["lanes"] for t in tests if t["id"].endswith(("run_quick[triton]", "small_phantom[short]"))}
    assert sorted(short.values()) == [["integration"], ["unit"]], "make test keeps the short variants"


def test_tritonserver_start_raises_lane_error_when_test_outside_integration_lane(tmp_path: Path) -> None:
    from predilect.serving.server import TritonServer

    server = TritonServer.on_free_ports(model_repository=tmp_path)  # a real folder: the start gets to the launch
    with pytest.raises(AssertionError, match="outside the integration lane: request the `tritonserver` fixture"):
        server.start()
    assert not server.is_running
