"""A completed study goes out de-identified and encrypted; its results come back re-identified."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import encryption_context
from tests.integration.transport.conftest import BUCKET, SITE, CloudSide, Ehr, Pacs
from tests.integration.transport.helpers import completed_study

pytestmark = pytest.mark.integration


def test_study_round_trip_restores_identity_and_leaks_nothing(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given a completed synthetic CT study with fake PHI, handed over by the intake
    edge = completed_study(tmp_path, cloud, pacs.port, ehr.url, seed=11)
    study, intake, forwarder, config = edge.study, edge.intake, edge.forwarder, edge.config

    # When the outbound loop runs once
    forwarder.outbound.tick()

    # Then one encrypted tar per series and the manifest are in S3, manifest checksums match
    (run,) = forwarder.journal.runs()
    assert run.stage == "uploaded" and intake.forwarded == [("study-11", 1)]
    manifest = cloud.read_manifest(run.pseudo_study_uid)
    assert manifest.runs[0].run_id == run.run_id and len(manifest.series) == 1
    stored = (
        client("s3").get_object(Bucket=BUCKET, Key=manifest.series[0].object_key)["Body"].read()
    )
    assert hashlib.sha256(stored).hexdigest() == manifest.series[0].sha256
    assert len(stored) == manifest.series[0].size_bytes
    # ... and no fake PHI is in any object, before or after decryption
    plain = envelope.decrypt_bytes(
        stored, cloud.key_arn, encryption_context(SITE, run.pseudo_study_uid)
    )
    with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
        assert len(archive.getmembers()) == len(study.paths)
    for value in study.patient.phi_values():
        assert value.encode() not in plain
    assert study.study_instance_uid.encode() not in plain
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert all(study.study_instance_uid not in k for k in keys)

    # When the cloud answers with SR + SEG + Bundle and the inbound loop runs
    cloud.answer(manifest, study)
    forwarder.inbound.tick()

    # Then PACS holds SR + SEG in the ORIGINAL study with the original patient module
    received = pacs.received()
    assert sorted(ds.Modality for ds in received) == ["SEG", "SR"]
    pseudonyms = {run.pseudo_study_uid, *(s.pseudo_series_uid for s in manifest.series)}
    pseudonyms |= {i.sop_instance_uid for s in manifest.series for i in s.instances}
    for ds in received:
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert ds.PatientName == study.patient.patient_name
        assert ds.PatientID == study.patient.patient_id
        assert ds.PatientBirthDate == study.patient.birth_date
        assert ds.AccessionNumber == study.patient.accession_number
        assert ds.SOPInstanceUID not in study.sop_instance_uids
        text = str(ds)
        assert not any(p in text for p in pseudonyms), "a pseudonym reached the PACS"
        assert "ANON-" not in text
    seg = next(ds for ds in received if ds.Modality == "SEG")
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid
    refs = {
        i.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs and refs <= set(study.sop_instance_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_instance_uid

    # ... and the EHR got the Bundle with the original patient id, accession and study UID
    (bundle,) = ehr.received
    text = json.dumps(bundle)
    assert study.patient.patient_id in text
    assert study.patient.accession_number in text
    assert f"urn:oid:{study.study_instance_uid}" in text
    assert not any(p in text for p in pseudonyms)
    assert "ANON-" not in text

    # ... and the timeline shows every stage, the audit trail every event
    stages = [stage for _, stage, _ in forwarder.journal.timeline(run.run_id)]
    for stage in (
        "received",
        "complete",
        "deidentified",
        "prepared",
        "uploaded",
        "results_received",
        "reidentified",
        "delivered_pacs",
        "delivered_ehr",
        "delivered",
    ):
        assert stage in stages
    audit = [json.loads(line) for line in config.audit_log_path.read_text().splitlines()]
    assert {e["subtype"][0]["code"] for e in audit} == {
        "deidentify",
        "upload",
        "reidentify",
        "export",
    }
    assert all(e["resourceType"] == "AuditEvent" for e in audit)
    assert study.patient.patient_id not in config.audit_log_path.read_text()


def test_cloud_failure_is_visible_in_status(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given an uploaded study
    forwarder = completed_study(tmp_path, cloud, pacs.port, ehr.url, seed=11).forwarder
    forwarder.outbound.tick()
    (run,) = forwarder.journal.runs()
    # When the cloud reports a failure
    cloud.fail(run.pseudo_study_uid, run.run_id, "no series matched the model's selection")
    forwarder.inbound.tick()
    # Then the run is FAILED with the cloud's reason, and nothing went to PACS or EHR
    failed = forwarder.journal.run(run.run_id)
    assert failed is not None and failed.stage == "FAILED"
    assert "no series matched" in (failed.reason or "")
    assert pacs.received() == [] and ehr.received == []
