"""The test-only fault hook (tests/faults/dicom_agent_faults.py), present only when a test
puts it on the path: never in an installed agent."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def injection():
    """The fault module, or None (always, outside the tests)."""
    try:
        import dicom_agent_faults  # type: ignore[import-not-found]
    except ImportError:
        return None
    log.warning("TEST BUILD: fault injection active (%s)",
                os.environ.get("DICOM_AGENT_FAULTS", ""))
    return dicom_agent_faults
