"""Orthanc as the PACS for the result-object tests, one per test, on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imaging_ai.local.orthanc import Orthanc, start_orthanc

# DCMTK's storescu: the venv's pynetdicom installs a `storescu` with other arguments.
DCMTK_STORESCU = "/usr/bin/storescu"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()
