"""A radiologist's viewer shows our results: OHIF, in headless chromium, reading Orthanc's
DICOMweb on loopback, draws the SEG's segments and the SR's measurement values."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from imaging_ai.local.browser import chromium_binary, view_study
from imaging_ai.local.ohif import Viewer, start_viewer
from imaging_ai.local.orthanc import (
    SENDER_AE_TITLE,
    Orthanc,
    dicomweb_plugin,
    orthanc_binary,
    start_orthanc,
)
from imaging_ai.results import build_results
from imaging_ai.results.report_content import format_value, read_report
from tests.integration.results.conftest import DCMTK_STORESCU
from tests.unit.results.sample import make_sample_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed"),
    pytest.mark.skipif(dicomweb_plugin() is None, reason="orthanc-dicomweb is not installed"),
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed"),
]
# Set to a folder (e.g. docs) to keep the screenshots there; the README shows docs/ohif-*.png.
SCREENSHOT_DIR_ENV = "IMAGING_AI_VIEWER_SCREENSHOTS"


@pytest.fixture
def dicomweb_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    yield server
    server.stop()


@pytest.fixture
def viewer(dicomweb_pacs: Orthanc) -> Iterator[Viewer]:
    served = start_viewer(dicomweb_pacs)
    yield served
    served.stop()


def _store(pacs: Orthanc, paths: list[Path]) -> None:
    sent = subprocess.run(
        [DCMTK_STORESCU, "-R", "-aet", SENDER_AE_TITLE, "-aec", pacs.ae_title, "127.0.0.1",
         str(pacs.dicom_port), *map(str, paths)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr


def test_one_origin_serves_the_viewer_and_the_pacs_dicomweb_read_only(
    dicomweb_pacs: Orthanc, viewer: Viewer, tmp_path: Path
) -> None:
    # Given a study in the PACS
    run = make_sample_run(tmp_path / "study", nodules=1)
    _store(dicomweb_pacs, run.paths[:2])
    study_uid = str(run.headers[0].StudyInstanceUID)

    # When the browser asks the viewer's origin for the app, its config and the study (QIDO-RS)
    page = requests.get(viewer.study_url(study_uid), timeout=10)
    config = requests.get(f"{viewer.url}/app-config.js", timeout=10)
    studies = requests.get(f"{viewer.url}/dicom-web/studies", timeout=10)

    # Then the viewer route is OHIF's page, its data source is this origin's DICOMweb,
    assert page.status_code == 200 and "app.bundle" in page.text
    assert "window.location.origin + '/dicom-web'" in config.text
    # Orthanc answers through it with URLs that stay on this origin,
    assert studies.status_code == 200
    (study,) = studies.json()
    assert study["0020000D"]["Value"] == [study_uid]
    assert study["00081190"]["Value"][0].startswith(f"{viewer.url}/dicom-web/studies/")
    # no service worker outlives the server, and nothing can be stored or deleted through it.
    assert requests.get(f"{viewer.url}/sw.js", timeout=10).status_code == 404
    deleted = requests.delete(f"{viewer.url}/dicom-web/studies/{study_uid}", timeout=10)
    assert deleted.status_code == 501
    assert len(dicomweb_pacs.studies()) == 1


@pytest.mark.slow
@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed")
def test_ohif_shows_the_seg_segments_and_the_sr_measurements(
    dicomweb_pacs: Orthanc, viewer: Viewer, tmp_path: Path
) -> None:
    # Given a CT study in the PACS with our SR and SEG delivered into it
    run = make_sample_run(tmp_path / "study")
    results = build_results(run.headers, run.labels, run.output, run.card, "run-1")
    sr_path, seg_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm"
    results.sr.save_as(sr_path, enforce_file_format=True)
    results.seg.save_as(seg_path, enforce_file_format=True)
    _store(dicomweb_pacs, [*run.paths, sr_path, seg_path])
    segment_labels = [str(s.SegmentLabel) for s in pydicom.dcmread(seg_path).SegmentSequence]
    report = read_report(results.sr)
    volumes = [
        f"{m.concept.meaning}: {format_value(m.value)} {m.unit.value}"
        for finding in report.findings
        for m in finding.measurements
        if m.concept.meaning == "Volume"
    ]
    long_axes = [
        f"{format_value(m.value)} {m.unit.value}"
        for finding in report.findings
        for m in finding.measurements
        if m.concept.meaning == "Long Axis"
    ]
    assert len(volumes) == len(long_axes) == len(run.output.findings) == 2

    # When a radiologist opens the study in OHIF, loads the SEG, then the SR
    out_dir = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path / "screenshots")
    study_uid = str(run.headers[0].StudyInstanceUID)
    seen = view_study(viewer.study_url(study_uid), out_dir, segment_labels, volumes)

    # Then the segmentation panel lists every segment by our label,
    assert seen.errors == ()
    listed = seen.segmentation_panel.splitlines()
    for label in segment_labels:
        assert label in listed, seen.segmentation_panel
    # the SR's measurements are drawn with their values (volume and long axis per finding),
    for volume in volumes:
        assert volume in seen.sr_viewport_labels, seen.sr_viewport_labels
    for long_axis in long_axes:
        assert any(label.endswith(f" {long_axis}") for label in seen.sr_viewport_labels)
    # and both views were saved as screenshots.
    assert [p.name for p in seen.screenshots] == ["ohif-seg.png", "ohif-sr.png"]
    for screenshot in seen.screenshots:
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
