"""Test configuration: the netns lab fixtures (netns-fixtures/lab_fixtures.py)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "netns-fixtures"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["lab_fixtures"]
