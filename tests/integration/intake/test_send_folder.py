"""`edge-forwarder send` on a CD-like folder: a DICOMDIR must not stop it, nothing is left out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.fileset import FileSet
from pydicom.uid import JPEGLSLossless, generate_uid

from edge_forwarder.intake import Intake
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom

CLI = [sys.executable, "-m", "edge_forwarder.cli"]


def test_send_skips_dicomdir_and_other_files_and_sends_every_instance(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    # Given a CD: a DICOMDIR over 6 CT slices (2 of them JPEG-LS), a readme and a viewer
    phantom = make_chest_phantom(seed=4, shape=(6, 32, 32), spacing_mm=(2.0, 8.0, 8.0))
    slices = list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )
    for ds in slices[:2]:
        ds.compress(JPEGLSLossless)
    fileset = FileSet()
    for ds in slices:
        fileset.add(ds)
    fileset.write(tmp_path / "cd")
    (tmp_path / "cd" / "README.TXT").write_text("Insert this CD in a workstation")
    (tmp_path / "cd" / "VIEWER.EXE").write_bytes(b"MZ\x90\x00" + bytes(200))
    intake = start_intake(quiet_seconds_study=0.0, quiet_seconds_series=0.0)

    # When it is sent with `edge-forwarder send`
    sent = subprocess.run(
        [*CLI, "send", str(tmp_path / "cd"), "--port", str(intake.port), "--ae-title", "EDGE_FWD"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )

    # Then it succeeds, says what it skipped, and the intake holds all 6 instances
    assert sent.returncode == 0, sent.stderr[-500:]
    assert "sent 6 of 6 DICOM instance(s) in 1 series; skipped: 1 DICOMDIR, 2 not DICOM" in (
        sent.stdout
    )
    deadline = time.monotonic() + 10
    completed = intake.poll_completed(now=time.time() + 3600)
    while not completed and time.monotonic() < deadline:
        time.sleep(0.2)
        completed = intake.poll_completed(now=time.time() + 3600)
    ((_, paths),) = completed[0].series.items()
    assert len(paths) == 6
