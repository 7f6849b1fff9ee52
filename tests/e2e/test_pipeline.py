"""One synthetic study from C-STORE to SR + SEG in the PACS and a FHIR report in the EHR."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from imaging_ai.local.demo import SEGMENTATION, SR_COMPREHENSIVE_3D, DemoSummary, collect_summary
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.synthetic import SyntheticStudy, write_ct_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# Two backends: moto enforcing the CDK template's IAM policies (every part as its role), and
# LocalStack as a host process (DynamoDB on moto: docs/local-backends.md says why).
BACKENDS = ["moto-iam", "localstack"]


@pytest.fixture(scope="module", params=BACKENDS)
def delivered(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    contract_template: dict[str, Any],
) -> Iterator[tuple[DemoSummary, SyntheticStudy]]:
    # Lambda handlers cache their settings and clients per process, as in Lambda; the
    # pipeline points them at its own moto server, so earlier tests' caches must go.
    from functions.common import bootstrap

    bootstrap.reset()
    work_dir = tmp_path_factory.mktemp("e2e")
    # Given a small chest CT (same generator as the demo) carrying fake PHI; the field of
    # view covers the whole body, as the demo model was trained (a cropped body adds FPs)
    study = write_ct_study(
        work_dir / "study",
        seed=424242,
        shape=(64, 256, 256),
        spacing_mm=(2.0, 1.4, 1.4),
        nodule_count=2,
    )
    from tests.cloud_contract import role_specs

    iam = request.param == "moto-iam"
    pipeline = LocalPipeline(
        work_dir=work_dir,
        quiet_seconds=2.0,
        printer=None,
        backend="moto" if iam else "localstack",
        iam_policies=(lambda resources: role_specs(contract_template, resources)) if iam else None,
    )
    with pipeline:
        # When a modality sends it to the edge forwarder by C-STORE
        started = time.monotonic()
        pipeline.send_study(work_dir / "study")
        ok = pipeline.wait_until_delivered(timeout_s=240)
        summary = collect_summary(pipeline, study, ok, started)
        denials = pipeline.iam_denials()
    # Then (IAM mode) no part needed a permission its CDK role does not grant
    assert denials == [], denials
    bootstrap.reset()
    yield summary, study


def test_results_reach_pacs_and_ehr(delivered: tuple[DemoSummary, SyntheticStudy]) -> None:
    summary, _ = delivered
    assert summary.delivered, f"not delivered; failures: {summary.failures}"
    stages = [stage for stage, _ in summary.stage_seconds]
    for stage in ("received", "uploaded", "preprocessed", "inferred", "reported"):
        assert stage in stages


def test_sr_and_seg_arrive_under_original_study_and_patient(
    delivered: tuple[DemoSummary, SyntheticStudy],
) -> None:
    summary, study = delivered
    # Then the PACS holds an SR and a SEG in the ORIGINAL study, for the ORIGINAL patient
    classes = sorted(obj.sop_class_uid for obj in summary.pacs_objects)
    assert classes == sorted([SR_COMPREHENSIVE_3D, SEGMENTATION])
    for obj in summary.pacs_objects:
        assert obj.study_instance_uid == study.study_instance_uid
        assert obj.patient_id == study.patient.patient_id
        assert obj.patient_name == study.patient.patient_name


def test_fhir_report_names_original_patient_and_study(
    delivered: tuple[DemoSummary, SyntheticStudy],
) -> None:
    summary, study = delivered
    # Then the EHR has one DiagnosticReport for the original MRN and the original study UID
    assert len(summary.ehr_report_ids) == 1
    assert study.patient.patient_id in summary.ehr_patient_identifiers
    assert f"urn:oid:{study.study_instance_uid}" in summary.ehr_report_study_uids
    assert summary.ehr_observations >= 2  # volume + diameter for at least one nodule


def test_reported_nodules_match_the_ground_truth(
    delivered: tuple[DemoSummary, SyntheticStudy],
) -> None:
    summary, study = delivered
    # Then every true nodule has a reported longest diameter within 20 %, and nothing else
    reported = sorted(v for name, v, unit in summary.ehr_measurements if name == "Long Axis")
    truth = sorted(n.diameter_mm for n in study.phantom.nodules)
    assert len(reported) == len(truth), (reported, truth)
    for measured, expected in zip(reported, truth, strict=True):
        assert abs(measured - expected) / expected < 0.2, (reported, truth)


def test_no_fake_phi_in_any_cloud_object(delivered: tuple[DemoSummary, SyntheticStudy]) -> None:
    summary, _ = delivered
    # Then no fake PHI value or original UID is in any object, decrypted and unpacked
    privacy = summary.privacy
    assert privacy["leaks"] == []
    assert privacy["undecryptable"] == []
    # and the audit really looked: series tar, manifest, model input/output, results
    assert privacy["objects_scanned"] >= 6
    assert privacy["bytes_scanned"] > 5_000_000
