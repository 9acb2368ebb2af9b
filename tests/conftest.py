"""Test configuration: the netns lab fixtures (netns-fixtures/lab_fixtures.py)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "netns-fixtures"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["lab_fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """`make test` never skips: a skipped test is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"tests are never skipped here: {report.longrepr}"


INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(config, items):
    """Every test of tests/integration/ builds the lab (root, namespaces, real servers)
    and carries the `integration` marker; the privileged tests of the other tiers are
    marked by hand. `make unit` runs the rest with every capability dropped."""
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
