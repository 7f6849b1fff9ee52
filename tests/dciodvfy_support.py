"""dciodvfy (Debian dicom3tools): every SR, SEG and DICOM object we write must pass it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.dataset import Dataset


def assert_dciodvfy_clean(dataset: Dataset | None, path: Path) -> None:
    """Write `dataset` to `path` as a Part 10 file (None: `path` is written already); then
    dciodvfy must report no error (its warnings are not errors) and exit 0."""
    if dataset is not None:
        dataset.save_as(path, enforce_file_format=True)
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in report.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], report.stderr
    assert report.returncode == 0, report.stderr
