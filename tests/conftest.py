import sys
from pathlib import Path

# Fixture modules load as plugins: with --import-mode=importlib tests cannot import them by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["serving_fixtures", "pipeline_fixtures"]
