"""Test-suite set-up: fixture plugins, and the lanes each test runs in.

Lanes (markers registered in pyproject.toml), given by what a test uses:

* ``integration``: starts a real ``tritonserver``. Every test or fixture that starts one, itself
  or through a command it runs (``predilect serve``, the demo, a benchmark), requests the
  ``tritonserver`` fixture (``tests/serving_fixtures.py``), so the lane follows from the
  fixtures a test uses; a test outside the lane that tries to start one fails, saying so.
* ``bench``: runs a benchmark end to end, or trains to a learning bar at full size: the long
  variant of a parametrized fixture or test, marked ``bench`` on its parameter; outside
  ``make test``, which keeps the short variant.
* ``gpu``: needs an NVIDIA GPU; marked on the test, skipped elsewhere with the reason.
* ``unit``: everything else.
"""

import os
import sys
from pathlib import Path

import pytest

# Before anything loads torch: idle OpenMP threads sleep rather than spin (see predilect.cli.passive_openmp).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Fixture modules load as plugins: with --import-mode=importlib tests cannot import them by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["serving_fixtures", "pipeline_fixtures"]

LANES = ("unit", "integration", "bench", "gpu")
LANE_OF_FIXTURE = {"tritonserver": "integration"}
"""A test whose fixture closure holds one of these fixtures runs in that lane."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, lane in LANE_OF_FIXTURE.items():
            if fixture in used and item.get_closest_marker(lane) is None:
                item.add_marker(lane)
        if not any(item.get_closest_marker(lane) for lane in LANES[1:]):
            item.add_marker("unit")


class LaneError(AssertionError):
    """A test started tritonserver without being in the integration lane."""


@pytest.fixture(autouse=True)
def _tritonserver_only_in_integration_lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the integration lane, ``TritonServer.start`` fails before it launches anything."""
    if request.node.get_closest_marker("integration") is not None:
        return
    from predilect.serving import server

    def refuse(cache_dir: Path | None = None) -> Path:
        raise LaneError(
            f"{request.node.nodeid} starts tritonserver outside the integration lane: "
            "request the `tritonserver` fixture (tests/conftest.py)"
        )

    monkeypatch.setattr(server, "prepare_runtime", refuse)  # the launch's first step, after the repository check
