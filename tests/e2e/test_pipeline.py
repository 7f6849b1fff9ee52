"""One synthetic study from C-STORE to SR + SEG in the PACS and a FHIR report in the EHR."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from imaging_ai.edge_stage import EdgeStage
from imaging_ai.local.demo import SEGMENTATION, SR_COMPREHENSIVE_3D, DemoSummary, collect_summary
from imaging_ai.local.runtime import LocalModel, LocalPipeline
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from tests.e2e.conftest import DeliveredStudy
from tests.model_support import SHADOW_MODEL, renamed_demo_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# Two backends: moto enforcing the CDK template's IAM policies (every part as its role: the
# e2e tier's shared pipeline, tests/e2e/conftest.py), and LocalStack as a host process
# (DynamoDB on moto: docs/local-backends.md says why).
BACKENDS = [
    pytest.param("iam_chest_study", id="moto-iam"),
    pytest.param("localstack_chest_study", id="localstack"),
]


@pytest.fixture(scope="module")
def localstack_chest_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeliveredStudy]:
    """The same chest CT through a pipeline of its own on LocalStack."""
    from functions.common import bootstrap

    bootstrap.reset()
    work_dir = tmp_path_factory.mktemp("e2e")
    study = write_ct_study(
        work_dir / "study",
        seed=424242,
        shape=(64, 256, 256),
        spacing_mm=(2.0, 1.4, 1.4),
        nodule_count=2,
    )
    # ... and two models deployed for chest CT: the demo model live, a second in shadow mode
    shadow = renamed_demo_model(work_dir / "registry")
    pipeline = LocalPipeline(
        work_dir=work_dir,
        models=(LocalModel(DEMO_MODEL_DIR), LocalModel(shadow.model_dir, shadow=True)),
        quiet_seconds=2.0,
        printer=None,
        backend="localstack",
    )
    with pipeline:
        started = time.monotonic()
        pipeline.send_study(work_dir / "study")
        ok = pipeline.wait_until_delivered(timeout_s=240)
        summary = collect_summary(pipeline, study, ok, started)
        pseudo_study_uids = frozenset(pipeline.pseudo_study_uids)
    bootstrap.reset()
    yield DeliveredStudy(study, summary, pseudo_study_uids)


@pytest.fixture(scope="module", params=BACKENDS)
def delivered(request: pytest.FixtureRequest) -> tuple[DemoSummary, SyntheticStudy]:
    # Given a small chest CT (same generator as the demo) carrying fake PHI, sent by a modality
    # by C-STORE to the edge forwarder, with two models deployed for chest CT: the demo model
    # live, a second in shadow mode
    chest: DeliveredStudy = request.getfixturevalue(request.param)
    return chest.summary, chest.study


def test_results_reach_pacs_and_ehr(delivered: tuple[DemoSummary, SyntheticStudy]) -> None:
    summary, _ = delivered
    assert summary.delivered, f"not delivered; failures: {summary.failures}"
    stages = [stage for stage, _ in summary.stage_seconds]
    for stage in ("received", "uploaded", "preprocessed", "inferred", "reported"):
        assert stage in stages


def test_the_shadow_models_results_stay_on_the_edge_and_reach_neither_pacs_nor_ehr(
    delivered: tuple[DemoSummary, SyntheticStudy],
) -> None:
    summary, study = delivered
    # Then the study ran once per model: the live run delivered, the shadow run kept
    runs = {run.model_name: run for run in summary.edge_runs}
    # (the live run may still be between its last delivery and DELIVERED)
    delivered = {EdgeStage.DELIVERED_PACS, EdgeStage.DELIVERED_EHR, EdgeStage.DELIVERED}
    assert runs["lung-nodule-demo"].stage in delivered and not runs["lung-nodule-demo"].shadow
    assert runs[SHADOW_MODEL].stage == EdgeStage.SHADOW_STORED and runs[SHADOW_MODEL].shadow
    # ... the shadow model's SEG is on the edge, re-identified, made by the shadow model
    seg = pydicom.dcmread(Path(summary.edge_deliveries) / runs[SHADOW_MODEL].run_id / "seg.dcm")
    assert seg.ManufacturerModelName == SHADOW_MODEL
    assert seg.StudyInstanceUID == study.study_instance_uid
    # ... while the PACS holds one SR and one SEG and the EHR one report: the live model's
    assert len(summary.pacs_objects) == 2 and len(summary.ehr_report_ids) == 1


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
