import os
import sys
from pathlib import Path

# Before anything loads torch: idle OpenMP threads sleep rather than spin (see predilect.cli.passive_openmp).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Fixture modules load as plugins: with --import-mode=importlib tests cannot import them by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["serving_fixtures", "pipeline_fixtures"]
