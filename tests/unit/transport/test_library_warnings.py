"""DICOM libraries' own warnings quote data values: the forwarder keeps them out of its logs."""

from __future__ import annotations

import subprocess
import sys

FAKE_NAME = "DOE^JANE^Q"

# What a malformed instance makes pydicom do inside the SCP: warn, quoting the value.
_SCRIPT = f"""
from pydicom.valuerep import validate_value
from edge_forwarder.observability import configure_logging
configure_logging("INFO")
validate_value("UI", "1.2.3 {FAKE_NAME}", validation_mode=1)
"""


def test_pydicom_value_warning_does_not_reach_the_process_output() -> None:
    # Given a process with the forwarder's logging set up as `edge-forwarder run` does
    # When pydicom meets an invalid value that contains a patient name
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", _SCRIPT], capture_output=True, text=True
    )
    # Then neither stdout nor stderr (the forwarder's logs) shows the value
    assert result.returncode == 0, result.stderr[-500:]
    assert FAKE_NAME not in result.stdout
    assert FAKE_NAME not in result.stderr
