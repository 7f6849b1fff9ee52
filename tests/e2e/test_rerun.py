"""Re-execution: `edge-forwarder rerun STUDY --model NAME@VERSION` on the local pipeline.

A study is reported by the model's current version; the operator re-runs it with the kept
older version; the PACS receives a revision SR made by that version, pointing back at the
first SR, and the EHR a report naming the same version.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from edge_forwarder.cli import main as edge_forwarder
from edge_forwarder.config import load_config
from edge_forwarder.transport.journal import Journal, RunRow
from imaging_ai.aws import client
from imaging_ai.edge_stage import TERMINAL_EDGE_STAGES, EdgeStage
from imaging_ai.local.demo import SEGMENTATION, SR_COMPREHENSIVE_3D
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.model_registry import DEMO_MODEL, DEMO_MODEL_DIR
from imaging_ai.state import RunKey, RunStateStore
from imaging_ai.synthetic import SyntheticStudy
from tests.e2e.conftest import CURRENT, OLD, DeliveredStudy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Rerun:
    study: SyntheticStudy
    first: RunRow
    second: RunRow
    srs: Sequence[pydicom.Dataset]  # in the PACS: the first SR, then its revision
    seg_versions: list[str]  # SoftwareVersions of the SEGs in the PACS
    state: dict[str, Any]  # the re-run's cloud state item attributes
    reports: list[dict[str, Any]]  # DiagnosticReports in the EHR
    work_dir: Path


def _wait_for_end(
    journal: Journal, pseudo_study_uid: str, run_number: int, timeout_s: float
) -> RunRow:
    """The live model's run `run_number` of the study, once it is over."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [
            r
            for r in journal.runs()
            if (r.pseudo_study_uid, r.run_number, r.model_name)
            == (pseudo_study_uid, run_number, DEMO_MODEL)
        ]
        if runs and runs[0].stage in TERMINAL_EDGE_STAGES:
            return runs[0]
        time.sleep(0.5)  # polling the forwarder's journal for an outcome, not ordering
    raise AssertionError(f"run {run_number} did not end in {timeout_s} s")


@pytest.fixture(scope="module")
def rerun(
    iam_pipeline: LocalPipeline,
    iam_chest_study: DeliveredStudy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Rerun:
    # Given a study reported by the model's current version, on the shared pipeline (every
    # part under the exact policies CDK synthesizes: the kept versions' cards must be
    # readable by the roles that read them)
    pipeline, study = iam_pipeline, iam_chest_study.study
    assert iam_chest_study.summary.delivered, iam_chest_study.summary.failures
    (pseudo_study_uid,) = iam_chest_study.pseudo_study_uids
    journal = Journal(load_config(_config_path(pipeline)).database_path)
    first = _wait_for_end(journal, pseudo_study_uid, 1, timeout_s=60)
    # When the operator re-runs it with the kept older version
    command = ["--config", str(_config_path(pipeline)), "rerun", first.run_id, "--model"]
    assert edge_forwarder([*command, f"{DEMO_MODEL}@{OLD}"]) == 0
    second = _wait_for_end(journal, pseudo_study_uid, 2, timeout_s=240)
    assert pipeline.pacs and pipeline.ehr and pipeline.resources
    results = [
        pydicom.dcmread(io.BytesIO(_instance_file(pipeline.pacs.rest_url, item["ID"])))
        for item in pipeline.pacs.study_instances(study.study_instance_uid)
        if item["Tags"].get("SOPClassUID") in (SR_COMPREHENSIVE_3D, SEGMENTATION)
    ]
    srs = [ds for ds in results if ds.SOPClassUID == SR_COMPREHENSIVE_3D]
    seg_versions = sorted(str(ds.SoftwareVersions) for ds in results if ds not in srs)
    # The first SR revises nothing: it sorts first.
    srs.sort(key=lambda sr: "PredecessorDocumentsSequence" in sr)
    store = RunStateStore(client("dynamodb"), pipeline.resources.state_table)
    item = store.get(RunKey(pipeline.site, second.pseudo_study_uid, second.run_id))
    assert item is not None
    # The reports as a clinician's EHR finds them: by FHIR search on the patient's MRN.
    reports = pipeline.ehr.search(
        "DiagnosticReport", **{"subject:Patient.identifier": study.patient.patient_id}
    )
    assert pipeline.iam_denials() == [], pipeline.iam_denials()
    return Rerun(
        study=study,
        first=first,
        second=second,
        srs=srs,
        seg_versions=seg_versions,
        state={**item.attributes, "model_name": item.model_name, "stage": str(item.stage)},
        reports=reports,
        work_dir=tmp_path_factory.mktemp("rerun"),
    )


def _config_path(pipeline: LocalPipeline) -> Path:
    return pipeline.work_dir / "edge" / "forwarder.toml"


def _instance_file(rest_url: str, instance_id: str) -> bytes:
    response = requests.get(f"{rest_url}/instances/{instance_id}/file", timeout=10)
    response.raise_for_status()
    return response.content


def _algorithm_version(sr: pydicom.Dataset) -> str:
    (equipment,) = sr.ContributingEquipmentSequence
    return str(equipment.SoftwareVersions)


def test_the_rerun_is_delivered_as_a_revision_made_by_the_pinned_version(rerun: Rerun) -> None:
    # Then both runs were delivered, and the PACS holds the first SR and its revision
    assert (rerun.first.stage, rerun.second.stage) == (EdgeStage.DELIVERED, EdgeStage.DELIVERED)
    assert len(rerun.srs) == 2
    first, revision = rerun.srs
    # Each names the version that made it
    assert (_algorithm_version(first), _algorithm_version(revision)) == (CURRENT, OLD)
    assert rerun.seg_versions == [OLD, CURRENT]  # one SEG per run, each naming its version
    # The revision points back at the first SR, in the original study
    (predecessor,) = revision.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == rerun.study.study_instance_uid
    (series,) = predecessor.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    assert sop.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert revision.StudyInstanceUID == first.StudyInstanceUID == rerun.study.study_instance_uid


def test_the_revision_sr_passes_dciodvfy(rerun: Rerun) -> None:
    path = rerun.work_dir / "revision-sr.dcm"
    rerun.srs[1].save_as(path, enforce_file_format=True)
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in report.stderr.splitlines() if line.startswith("Error")] == []


def test_the_state_item_and_the_ehr_report_name_the_pinned_version(rerun: Rerun) -> None:
    # The cloud's state item of the re-run names the model, the pinned version and its weights
    shipped = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    assert rerun.state["model_name"] == DEMO_MODEL
    assert rerun.state["model_version"] == OLD
    assert rerun.state["weights_sha256"] == shipped["weights_sha256"]
    # And the EHR holds two reports, the later by the pinned version's Device
    conclusions = sorted(report.get("conclusion", "") for report in rerun.reports)
    assert any(f"{DEMO_MODEL} {OLD}" in text for text in conclusions), conclusions
    assert any(f"{DEMO_MODEL} {CURRENT}" in text for text in conclusions), conclusions
