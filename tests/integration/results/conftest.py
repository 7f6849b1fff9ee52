"""Orthanc as the PACS for the result-object tests, one per test, on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from imaging_ai.local.orthanc import SENDER_AE_TITLE, Orthanc, orthanc_binary, start_orthanc

# DCMTK's storescu: the venv's pynetdicom installs a `storescu` with other arguments.
DCMTK_STORESCU = "/usr/bin/storescu"
NEEDS_ORTHANC = pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed")


def store_with_dcmtk(pacs: Orthanc, paths: Iterable[Path]) -> None:
    """C-STORE the files to the PACS with DCMTK's storescu, as a modality would."""
    sent = subprocess.run(
        # -R proposes exactly the files' SOP classes (the default list lacks Comprehensive 3D SR).
        [DCMTK_STORESCU, "-R", "-aet", SENDER_AE_TITLE, "-aec", pacs.ae_title, "-to", "10",
         "127.0.0.1", str(pacs.dicom_port), *map(str, paths)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()
