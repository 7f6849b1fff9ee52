"""Inbound alone: result messages are taken once, re-identified, and queued for delivery."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.inbound import IdentifierSystems, Inbound
from edge_forwarder.observability import Telemetry
from edge_forwarder.transport.journal import Journal
from imaging_ai.contracts import BUNDLE_NAME, SR_NAME, SiteResultMessage, result_key
from imaging_ai.edge_stage import EdgeStage
from tests.edge_support import JANE_DOE
from tests.unit.edge.conftest import FakeEhr, FakePacs, FakeResults, make_delivery

PSEUDO_STUDY, PSEUDO_SERIES, PSEUDO_PATIENT = "2.25.101", "2.25.102", "ANON-TESTPATIENT"
IDENTITY = replace(
    JANE_DOE,
    pseudo_study_uid=PSEUDO_STUDY,
    pseudo_patient_id=PSEUDO_PATIENT,
    series={PSEUDO_SERIES: "1.2.3.4.2"},
)
RUN_ID = "r1-abcdef0123"


class Vault:
    def __init__(self, *known: StudyIdentity) -> None:
        self.known = {i.pseudo_study_uid: i for i in known}

    def study_by_pseudo(self, pseudo_study_uid: str) -> StudyIdentity | None:
        return self.known.get(pseudo_study_uid)


def _sr() -> bytes:
    """A result as the cloud writes it: pseudonymous study, series reference and patient."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyInstanceUID = PSEUDO_STUDY
    ds.PatientName, ds.PatientID = f"{PSEUDO_PATIENT}^", PSEUDO_PATIENT
    ds.Modality = "SR"
    reference = Dataset()
    reference.SeriesInstanceUID = PSEUDO_SERIES
    ds.ReferencedSeriesSequence = [reference]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _bundle() -> bytes:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "identifier": [{"value": PSEUDO_PATIENT}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "ImagingStudy",
                    "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{PSEUDO_STUDY}"}],
                }
            },
        ],
    }
    return json.dumps(bundle).encode()


def _ready(run_id: str = RUN_ID) -> SiteResultMessage:
    # The contract's keys (a RESULT_READY must name its objects); the fake serves the bytes.
    keys = {
        name: result_key("site-a", PSEUDO_STUDY, run_id, name) for name in (SR_NAME, BUNDLE_NAME)
    }
    return SiteResultMessage(
        kind="RESULT_READY",
        site="site-a",
        pseudo_study_uid=PSEUDO_STUDY,
        run_id=run_id,
        result_keys=keys,
    )


def _failed(reason: str) -> SiteResultMessage:
    return SiteResultMessage(
        kind="FAILED", site="site-a", pseudo_study_uid=PSEUDO_STUDY, run_id=RUN_ID, reason=reason
    )


def _inbound(
    folder: Path, journal: Journal, telemetry: Telemetry, vault: Vault, notice: bool = False
) -> tuple[Inbound, FakeResults, FakePacs, FakeEhr]:
    """The inbound part on fakes at its adapter boundary; `notice`: the optional PACS notice."""
    results, pacs, ehr = FakeResults(), FakePacs(), FakeEhr()
    inbound = Inbound(
        journal=journal,
        results=results,
        identities=vault,
        identifier_systems=IdentifierSystems(patient="urn:mrn", accession="urn:acc"),
        delivery=make_delivery(journal, telemetry, pacs, ehr, folder),
        telemetry=telemetry,
        deliveries_dir=folder,
        not_analyzed_notice=notice,
    )
    return inbound, results, pacs, ehr


@pytest.fixture
def parts(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> tuple[Inbound, FakeResults, FakePacs, FakeEhr]:
    return _inbound(tmp_path / "deliveries", journal, telemetry, Vault(IDENTITY))


def _uploaded_run(journal: Journal) -> None:
    journal.open_run(RUN_ID, "key-1", 1, PSEUDO_STUDY, stage=EdgeStage.UPLOADED)


def _stages(journal: Journal, run_id: str = RUN_ID) -> list[str]:
    return [stage for _, stage, _ in journal.timeline(run_id)]


def test_results_are_re_identified_and_delivered_once_though_the_message_comes_twice(
    parts: Any, journal: Journal, tmp_path: Path
) -> None:
    # Given an uploaded run whose results message the queue delivers twice
    inbound, results, pacs, ehr = parts
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _bundle()})
    results.send(_ready())
    # When the inbound loop runs
    inbound.tick()
    # Then PACS got the SR once, under the original study and patient, no pseudonym left
    (stored,) = pacs.stored
    sr = pydicom.dcmread(io.BytesIO(stored))
    assert (sr.StudyInstanceUID, sr.PatientID) == ("1.2.3.4.1", "MRN-0042")
    assert sr.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4.2"
    assert PSEUDO_PATIENT.encode() not in stored and PSEUDO_STUDY.encode() not in stored
    # ... the EHR got the Bundle with the original MRN and study UID
    (bundle,) = ehr.posted
    text = json.dumps(bundle)
    assert "MRN-0042" in text and "urn:oid:1.2.3.4.1" in text and PSEUDO_PATIENT not in text
    # ... both messages were acknowledged, and the run is delivered with its folder gone
    assert results.acked == ["receipt-0", "receipt-1"]
    assert _stages(journal) == [
        EdgeStage.UPLOADED,
        EdgeStage.RESULTS_RECEIVED,
        EdgeStage.REIDENTIFIED,
        EdgeStage.DELIVERED_PACS,
        EdgeStage.DELIVERED_EHR,
        EdgeStage.DELIVERED,
    ]
    assert not (tmp_path / "deliveries" / RUN_ID).exists()


def test_a_cloud_failure_ends_the_run_and_a_late_one_changes_nothing(
    parts: Any, journal: Journal
) -> None:
    # Given an uploaded run the cloud reports FAILED, twice
    inbound, results, pacs, ehr = parts
    _uploaded_run(journal)
    results.send(_failed("no series matched"))
    results.send(_failed("no series matched"))
    # When the inbound loop runs
    inbound.tick()
    # Then the run is FAILED with the cloud's reason, once; nothing was delivered
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.FAILED
    assert run.reason == "cloud: no series matched"
    assert _stages(journal).count(EdgeStage.FAILED) == 1
    assert len(results.acked) == 2 and pacs.stored == [] and ehr.posted == []


def test_a_result_without_a_crosswalk_entry_fails_the_run_and_is_acknowledged(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a vault that does not know the study
    inbound, results, pacs, _ehr = _inbound(tmp_path / "d", journal, telemetry, Vault())
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr()})
    # When the inbound loop runs
    inbound.tick()
    # Then the run failed at re-identification; nothing reached PACS
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.FAILED
    assert "no crosswalk entry" in (run.reason or "")
    assert results.acked == ["receipt-0"] and pacs.stored == []


def test_a_result_for_a_run_the_journal_does_not_know_opens_it_as_uploaded(
    parts: Any, journal: Journal
) -> None:
    # Given a results message for a run this journal never saw (a cloud re-run)
    inbound, results, pacs, _ehr = parts
    results.send(_ready("r9-cloudrerun"), {SR_NAME: _sr()})
    # When the inbound loop runs
    inbound.tick()
    # Then the run is opened where the cloud has it and delivered
    assert _stages(journal, "r9-cloudrerun") == [
        EdgeStage.UPLOADED,
        EdgeStage.RESULTS_RECEIVED,
        EdgeStage.REIDENTIFIED,
        EdgeStage.DELIVERED_PACS,
        EdgeStage.DELIVERED,
    ]
    assert len(pacs.stored) == 1


def _not_analyzed() -> SiteResultMessage:
    return SiteResultMessage(
        kind="NOT_ANALYZED",
        site="site-a",
        pseudo_study_uid=PSEUDO_STUDY,
        run_id=RUN_ID,
        reason="no series within the model's intended use: localizer",
        model_name="lung-nodule-demo",
    )


def test_a_study_not_analyzed_ends_the_run_with_its_reason_in_status_metric_and_audit(
    parts: Any, journal: Journal, telemetry: Telemetry
) -> None:
    # Given an uploaded run the cloud reports NOT_ANALYZED, twice (at-least-once queue)
    inbound, results, pacs, ehr = parts
    _uploaded_run(journal)
    results.send(_not_analyzed())
    results.send(_not_analyzed())
    # When the inbound loop runs
    inbound.tick()
    # Then the run ends NOT_ANALYZED once, with "not analyzed: <reason>" for `status`
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.NOT_ANALYZED
    assert run.reason == "not analyzed: no series within the model's intended use: localizer"
    assert _stages(journal).count(EdgeStage.NOT_ANALYZED) == 1
    # ... counted in its own metric and recorded in the audit log with the reason
    studies = telemetry.metrics.registry.get_sample_value(
        "edge_forwarder_studies_total", {"stage": "not_analyzed"}
    )
    assert studies == 1.0
    audit = [json.loads(line) for line in telemetry.audit.path.read_text().splitlines()]
    (event,) = [e for e in audit if e["subtype"][0]["code"] == "not_analyzed"]
    assert event["outcomeDesc"] == run.reason
    # ... and nothing reached the PACS or the EHR (the notice is off by default)
    assert len(results.acked) == 2 and pacs.stored == [] and ehr.posted == []


def test_the_optional_pacs_notice_tells_the_original_study_why(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a site that asked for the notice
    inbound, results, pacs, ehr = _inbound(
        tmp_path / "d", journal, telemetry, Vault(IDENTITY), notice=True
    )
    _uploaded_run(journal)
    results.send(_not_analyzed())
    # When the inbound loop runs
    inbound.tick()
    # Then the PACS got one Basic Text SR in the original study saying why; no EHR post
    (stored,) = pacs.stored
    notice = pydicom.dcmread(io.BytesIO(stored))
    assert notice.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert (notice.StudyInstanceUID, notice.PatientID) == ("1.2.3.4.1", "MRN-0042")
    assert notice.ContentSequence[0].TextValue == (
        "Not analyzed by lung-nodule-demo: no series within the model's intended use: localizer"
    )
    assert PSEUDO_PATIENT.encode() not in stored and ehr.posted == []
    # ... but a shadow-mode model's verdict never reaches the PACS, even as a notice
    journal.open_run("r1-5ad0e00001", "key-1", 1, PSEUDO_STUDY, stage=EdgeStage.UPLOADED,
                     model_name="lung-next", shadow=True)  # fmt: skip
    results.send(_not_analyzed().model_copy(update={"run_id": "r1-5ad0e00001"}))
    inbound.tick()
    assert len(pacs.stored) == 1
    assert journal.run("r1-5ad0e00001").stage is EdgeStage.NOT_ANALYZED  # type: ignore[union-attr]


def test_a_shadow_models_results_stay_on_the_edge_while_the_live_models_are_delivered(
    parts: Any, journal: Journal, telemetry: Telemetry, tmp_path: Path
) -> None:
    # Given one upload with two model runs: a live one and one in shadow mode
    inbound, results, pacs, ehr = parts
    shadow_run = "r1-5ad0e00001"
    journal.open_run(RUN_ID, "key-1", 1, PSEUDO_STUDY, stage=EdgeStage.UPLOADED,
                     model_name="lung-nodule-demo")  # fmt: skip
    journal.open_run(shadow_run, "key-1", 1, PSEUDO_STUDY, stage=EdgeStage.UPLOADED,
                     model_name="lung-next", shadow=True)  # fmt: skip
    # When both models' results arrive (the shadow one twice: the queue is at-least-once)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _bundle()})
    results.send(_ready(shadow_run), {SR_NAME: _sr(), BUNDLE_NAME: _bundle()})
    results.send(_ready(shadow_run))
    inbound.tick()
    # Then PACS and EHR got the live model's results only
    assert len(pacs.stored) == 1 and len(ehr.posted) == 1
    assert pacs.stored[0] != (tmp_path / "deliveries" / shadow_run / SR_NAME).read_bytes()
    # ... while the shadow model's results are kept on the edge, re-identified
    kept = pydicom.dcmread(tmp_path / "deliveries" / shadow_run / SR_NAME)
    assert (kept.StudyInstanceUID, kept.PatientID) == ("1.2.3.4.1", "MRN-0042")
    assert "MRN-0042" in (tmp_path / "deliveries" / shadow_run / BUNDLE_NAME).read_text()
    assert journal.deliveries(run_id=shadow_run) == []
    assert _stages(journal, shadow_run) == [
        EdgeStage.UPLOADED,
        EdgeStage.RESULTS_RECEIVED,
        EdgeStage.REIDENTIFIED,
        EdgeStage.SHADOW_STORED,
    ]
    assert journal.run(RUN_ID).stage is EdgeStage.DELIVERED  # type: ignore[union-attr]
    assert results.acked == ["receipt-0", "receipt-1", "receipt-2"]
    # ... and the metrics and the audit trail count it as a shadow result
    shadow_results = telemetry.metrics.registry.get_sample_value(
        "edge_forwarder_shadow_results_total", {"model": "lung-next"}
    )
    assert shadow_results == 1.0
    audit = [json.loads(line) for line in telemetry.audit.path.read_text().splitlines()]
    assert [e["subtype"][0]["code"] for e in audit].count("shadow_stored") == 1
