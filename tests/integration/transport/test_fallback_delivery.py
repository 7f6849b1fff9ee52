"""Fallback results where radiologists and EHRs look: per-destination PACS objects (SR, SEG,
key images, PDF) and the HL7 ORU, all re-identified into the original study, to real peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from edge_forwarder.intake import CompletedStudy
from imaging_ai.results.key_images import MULTIFRAME_GRAYSCALE_BYTE_SC
from imaging_ai.results.pdf_report import ENCAPSULATED_PDF
from imaging_ai.synthetic import write_ct_study
from tests.dciodvfy_support import assert_dciodvfy_clean
from tests.edge_support import ListIntake
from tests.integration.transport.conftest import (
    CloudSide,
    Ehr,
    Pacs,
    start_storescp,
    write_config,
)
from tests.integration.transport.helpers import forwarder_from_config
from tests.integration.transport.mllp_listener import MllpListener, mllp_listener

pytestmark = pytest.mark.integration


@pytest.fixture
def viewer_pacs(tmp_path: Path) -> Iterator[Pacs]:
    """A second PACS whose viewer shows neither SR nor SEG (gets key images and the PDF)."""
    peer = start_storescp(tmp_path / "viewer", ae_title="VIEWER")
    yield peer
    peer.process.terminate()
    peer.process.wait(10)


@pytest.fixture
def listener() -> Iterator[MllpListener]:
    with mllp_listener() as running:
        yield running


def test_each_destination_gets_its_objects_in_the_original_study_and_the_ris_an_oru(
    tmp_path: Path,
    cloud: CloudSide,
    pacs: Pacs,
    viewer_pacs: Pacs,
    ehr: Ehr,
    listener: MllpListener,
) -> None:
    # Given a forwarder whose main PACS takes SR + SEG, a viewer PACS key images + PDF,
    # and an [hl7] interface engine, and a synthetic study with fake PHI
    study = write_ct_study(
        tmp_path / "ct", seed=11, shape=(24, 128, 128), spacing_mm=(2.5, 2.5, 2.5), nodule_count=1
    )
    config_path = write_config(tmp_path, cloud, pacs.port, ehr.url)
    config_path.write_text(
        config_path.read_text()
        + f"""
[[extra_pacs]]
name = "viewer"
host = "127.0.0.1"
port = {viewer_pacs.port}
ae_title = "VIEWER"
objects = ["key_images", "pdf"]
max_attempts = 2
retry_base_s = 0.05

[hl7]
host = "127.0.0.1"
port = {listener.port}
receiving_application = "RIS"
receiving_facility = "HOSP"
patient_id_authority = "HOSP-MRN"
max_attempts = 2
retry_base_s = 0.05
"""
    )
    intake = ListIntake(
        [CompletedStudy("s-1", 1, ("default",), {study.series_instance_uid: study.paths})]
    )
    forwarder, _ = forwarder_from_config(config_path, intake)
    try:
        # When the study goes out, the cloud answers, and the inbound loop runs
        forwarder.outbound.tick()
        (run,) = forwarder.journal.runs()
        cloud.answer(cloud.read_manifest(run.pseudo_study_uid), study)
        forwarder.inbound.tick()
        final = forwarder.journal.run(run.run_id)
        stages = [stage for _, stage, _ in forwarder.journal.timeline(run.run_id)]
    finally:
        forwarder.stop()

    # Then the main PACS got exactly SR + SEG (its configured set)
    assert sorted(ds.Modality for ds in pacs.received()) == ["SEG", "SR"]
    # ... and the viewer PACS the key images and the PDF, in the ORIGINAL study and patient
    received = {str(ds.SOPClassUID): ds for ds in viewer_pacs.received()}
    assert set(received) == {MULTIFRAME_GRAYSCALE_BYTE_SC, ENCAPSULATED_PDF}
    key_images, pdf = received[MULTIFRAME_GRAYSCALE_BYTE_SC], received[ENCAPSULATED_PDF]
    for ds in (key_images, pdf):
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert (ds.PatientID, ds.PatientName) == (
            study.patient.patient_id,
            study.patient.patient_name,
        )
        assert ds.AccessionNumber == study.patient.accession_number
        assert ds.PatientIdentityRemoved == "NO"
        assert "ANON-" not in str(ds)
        assert ds.ManufacturerModelName == "lung-nodule-demo" and ds.SoftwareVersions == "0.3.1"
        # ... both dciodvfy clean as the PACS stored them
        assert_dciodvfy_clean(ds, tmp_path / f"{ds.Modality}.dcm")
    # ... the key images reference the original slices, the PDF the SR and the key images
    assert {r.ReferencedSOPInstanceUID for r in key_images.SourceImageSequence} <= set(
        study.sop_instance_uids
    )
    (sr,) = [ds for ds in pacs.received() if ds.Modality == "SR"]
    assert [r.ReferencedSOPInstanceUID for r in pdf.SourceInstanceSequence] == [
        sr.SOPInstanceUID,
        key_images.SOPInstanceUID,
    ]
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF-")

    # ... and the interface engine acknowledged one ORU with the original MRN and accession
    (message,) = listener.received
    oru = hl7.parse(message)
    assert str(oru.segment("PID")[3]) == f"{study.patient.patient_id}^^^HOSP-MRN^MR"
    assert str(oru.segment("OBR")[3]) == study.patient.accession_number
    numeric = [s for s in oru.segments("OBX") if str(s[2]) == "NM"]
    assert [str(s[3]) for s in numeric] == ["118565006^Volume^SCT", "103339001^Long Axis^SCT"]
    assert "ANON-" not in message

    # ... every target delivered: the run is done and its folder gone
    assert final is not None and final.stage == "delivered"
    assert {"delivered_pacs", "delivered_ehr", "delivered_hl7"} <= set(stages)
    assert stages.count("pacs_destination_delivered") == 2
