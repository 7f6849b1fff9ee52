"""`make demo STUDY=folder` on a site-like study the chest model is not meant for: a head CT
whose Body Part Examined wrongly says CHEST (so routing sends it), a localizer, a dose report,
a DICOMDIR and a readme. The cloud's image check must stop it: NOT_ANALYZED, end to end."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from imaging_ai.local.demo import run_user_study
from imaging_ai.synthetic import FakePatient
from imaging_ai.synthetic_series import ct_series, dose_report, localizer, make_head_phantom

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _write_folder(folder: Path, patient: FakePatient) -> None:
    study_uid, for_uid = generate_uid(), generate_uid()
    head = make_head_phantom(seed=4)
    series = ct_series(head, patient, study_uid, for_uid, 3, "HEAD W/O", "CHEST")
    scout = localizer(head, patient, study_uid, for_uid)
    fileset = FileSet()
    for ds in [scout, *series]:
        fileset.add(ds)
    fileset.write(folder)  # DICOMDIR + the instances, as on a CD
    dose_report(series[0]).save_as(folder / "DOSE.dcm", enforce_file_format=True)
    (folder / "README.TXT").write_text("Study exported from PACS")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    from functions.common import bootstrap

    bootstrap.reset()
    work_dir = tmp_path_factory.mktemp("user-study")
    _write_folder(work_dir / "cd", FakePatient())
    args = argparse.Namespace(study=work_dir / "cd", quiet_seconds=2.0, timeout=240.0, view=False)
    code = run_user_study(args, say=lambda *_: None, work_dir=work_dir / "run")
    bootstrap.reset()
    summary = json.loads((work_dir / "run" / "summary.json").read_text())
    return code, summary, work_dir / "run"


def test_the_head_ct_is_not_analyzed_and_the_summary_says_why(
    outcome: tuple[int, dict[str, Any], Path],
) -> None:
    code, summary, _ = outcome
    # Then every file was accounted for: DICOMDIR and readme skipped, instances sent
    assert summary["skipped"] == {"DICOMDIR": 1, "not DICOM": 1}
    assert summary["instances"] == 1 + 64 + 1
    assert summary["sent"] == 1 + 64  # the forwarder does not take dose SRs
    # And the study ended NOT_ANALYZED because the image has no lungs, nothing analyzed
    assert summary["outcome"] == "NOT_ANALYZED", summary
    assert "lung-density volume 0 mL < 500 mL" in summary["reason"]
    assert "localizer" in summary["reason"]
    assert summary["analyzed_series"] == []
    # And the cloud holds none of the identifying values read from the study's headers
    assert summary["privacy"]["clean"] and summary["privacy"]["values_searched"] >= 10
    assert code == 0


def test_the_site_sees_not_analyzed_in_status(
    outcome: tuple[int, dict[str, Any], Path],
) -> None:
    _, _, run_dir = outcome
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_forwarder.cli",
            "status",
            "--config",
            str(run_dir / "edge" / "forwarder.toml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=run_dir / "edge",
    )
    assert status.returncode == 0, status.stderr[-500:]
    (run,) = json.loads(status.stdout)
    assert run["stage"] == "not_analyzed"
    assert run["reason"].startswith("not analyzed: no series within the model's intended use")
