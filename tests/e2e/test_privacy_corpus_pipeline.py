"""The privacy corpus through the whole local pipeline: nothing planted leaves or comes back.

A modality sends a CT series whose instances carry identifying values where the generator puts
none (tests/privacy_corpus.py). After the results are back in the PACS and the EHR, every
cloud object is decrypted and unpacked, the run state is scanned, and the SR and SEG the PACS
received and every FHIR resource the EHR stored are searched: not one planted value may be
found. The patient's own identity is searched in the cloud too (the crosswalk puts it back in
what the hospital receives, so it is expected there).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from imaging_ai.local.demo import SEGMENTATION, SR_COMPREHENSIVE_3D, phi_to_search
from imaging_ai.local.privacy import PrivacyReport, audit_bucket, audit_table
from imaging_ai.local.runtime import FORWARDER_AE_TITLE, MODALITY_AE_TITLE, LocalPipeline
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from tests.e2e.conftest import own_patient
from tests.privacy_corpus import PLANTED, plant

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Audit:
    delivered: bool
    failures: list[dict[str, object]]
    study: SyntheticStudy
    cloud: PrivacyReport
    state: PrivacyReport
    returned_objects: int = 0
    returned_bytes: int = 0
    returned_leaks: list[str] = field(default_factory=list)
    log_leaks: list[str] = field(default_factory=list)


def _send(port: int, folder: Path) -> None:
    """C-STORE each planted instance as the modality encodes it (UN, group 0002 and all)."""
    ae = AE(ae_title=MODALITY_AE_TITLE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=FORWARDER_AE_TITLE)
    assert assoc.is_established
    try:
        for path in sorted(folder.glob("*.dcm")):
            planted = plant(pydicom.dcmread(path))
            # What goes on the wire holds every planted value, so the audit has a target
            wire = encode(planted, False, True) or b""
            assert _search(wire, PLANTED) == list(PLANTED), path.name
            status = assoc.send_c_store(planted)
            assert status and status.Status == 0x0000, path.name
    finally:
        assoc.release()


def _search(haystack: bytes, needles: dict[str, str]) -> list[str]:
    lowered = haystack.lower()
    return [name for name, value in needles.items() if value.lower().encode() in lowered]


@pytest.fixture(scope="module")
def audit(iam_pipeline: LocalPipeline, tmp_path_factory: pytest.TempPathFactory) -> Audit:
    work_dir = tmp_path_factory.mktemp("privacy-e2e")
    # Given a small chest CT within the demo model's intended use (model.json: at least 100 mm
    # along the slices, pixels of 1.5 mm at most, lungs in the image), of a patient of its own
    study = write_ct_study(
        work_dir / "study", seed=515151, shape=(44, 224, 224), spacing_mm=(2.5, 1.5, 1.5),
        nodule_count=1, patient=own_patient("MRN-E2E-PRIVACY"),
    )  # fmt: skip
    # ... and the e2e tier's shared pipeline, every part as its CDK role
    pipeline = iam_pipeline
    assert pipeline.resources and pipeline.pacs and pipeline.ehr
    pipeline.follow_new_study()
    log_start = (pipeline.work_dir / "logs" / "edge-forwarder.log").stat().st_size
    # When a modality sends it with the privacy corpus planted in every instance
    _send(pipeline.forwarder_port, work_dir / "study")
    delivered = pipeline.wait_until_delivered(timeout_s=300)
    time.sleep(1.0)  # the last audit rows and state writes follow the delivery event
    resources = pipeline.resources
    cloud_needles = {**PLANTED, **phi_to_search(study)}
    result = Audit(
        delivered=delivered,
        failures=pipeline.failures,
        study=study,
        cloud=audit_bucket(resources.data_bucket, resources.kms_key_arn, cloud_needles),
        state=audit_table(resources.state_table, cloud_needles),
    )
    # The SR and SEG the PACS received, as files
    for instance in pipeline.pacs.study_instances(study.study_instance_uid):
        if instance["Tags"].get("SOPClassUID") not in (SR_COMPREHENSIVE_3D, SEGMENTATION):
            continue
        response = requests.get(
            f"{pipeline.pacs.rest_url}/instances/{instance['ID']}/file", timeout=10
        )
        response.raise_for_status()
        result.returned_objects += 1
        result.returned_bytes += len(response.content)
        result.returned_leaks += [f"pacs:{n}" for n in _search(response.content, PLANTED)]
    # Every FHIR resource the EHR stored, found by FHIR search
    for resource in pipeline.ehr.stored_resources():
        text = json.dumps(resource).encode()
        result.returned_objects += 1
        result.returned_bytes += len(text)
        result.returned_leaks += [f"ehr:{n}" for n in _search(text, PLANTED)]
    # The forwarder's own log lines since this study was sent (no PHI in logs)
    with (pipeline.work_dir / "logs" / "edge-forwarder.log").open("rb") as log:
        log.seek(log_start)
        result.log_leaks = _search(log.read(), {**PLANTED, **phi_to_search(study)})
    assert pipeline.iam_denials() == [], pipeline.iam_denials()
    return result


def test_planted_values_never_reach_the_cloud_the_state_or_the_results(audit: Audit) -> None:
    # Then the results came back, the audit really looked, and nothing planted was found
    assert audit.delivered, f"not delivered; failures: {audit.failures}"
    cloud = {leak.phi_field for leak in audit.cloud.leaks}
    state = {leak.phi_field for leak in audit.state.leaks}
    found = cloud | state | {name.split(":", 1)[1] for name in audit.returned_leaks}
    print(
        f"privacy corpus: planted={len(PLANTED)} found={len(found & set(PLANTED))}; "
        f"cloud objects={audit.cloud.objects_scanned} ({audit.cloud.bytes_scanned} bytes), "
        f"state items={audit.state.objects_scanned}, returned objects={audit.returned_objects} "
        f"({audit.returned_bytes} bytes)"
    )
    assert audit.cloud.undecryptable == []
    assert audit.cloud.objects_scanned >= 6 and audit.cloud.bytes_scanned > 1_000_000
    assert audit.state.objects_scanned >= 1
    assert audit.returned_objects >= 3  # SR, SEG, and the EHR's resources
    assert sorted(cloud) == [] and sorted(state) == [] and audit.returned_leaks == []


def test_no_planted_value_or_identity_in_the_forwarder_log(audit: Audit) -> None:
    assert audit.log_leaks == []
