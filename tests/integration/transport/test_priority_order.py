"""STAT first at the edge: a STAT study queued behind five routine ones is uploaded and delivered
first (real moto S3 / SQS / KMS, DCMTK storescp as the PACS, a loopback FHIR endpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_forwarder.intake import CompletedStudy
from imaging_ai.aws import client
from imaging_ai.contracts import Priority, manifest_key
from imaging_ai.synthetic import FakePatient, SyntheticStudy, write_ct_study
from tests.edge_support import ListIntake
from tests.integration.transport.conftest import BUCKET, SITE, CloudSide, Ehr, Pacs, write_config
from tests.integration.transport.helpers import forwarder_from_config

pytestmark = pytest.mark.integration
ROUTINE_STUDIES = 5


def _study(tmp: Path, number: int) -> SyntheticStudy:
    # Each study its own accession number, so the EHR tells whose report came when.
    return write_ct_study(
        tmp / f"ct-{number}",
        seed=20 + number,
        shape=(10, 64, 64),
        spacing_mm=(2.5, 2.5, 2.5),
        patient=FakePatient(accession_number=f"ACC-PRIO-{number}"),
        nodule_count=1,
    )


def test_a_stat_study_sent_last_behind_five_routine_ones_is_delivered_first(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given five routine studies and then a STAT one, all completed before the outbound loop
    # runs (the intake holds them: the loop is the stage's one worker, released once)
    studies = [_study(tmp_path, number) for number in range(ROUTINE_STUDIES + 1)]
    stat_number = ROUTINE_STUDIES
    intake = ListIntake(
        [
            CompletedStudy(
                f"study-{number}",
                1,
                ("default",),
                {study.series_instance_uid: study.paths},
                Priority.STAT if number == stat_number else Priority.ROUTINE,
            )
            for number, study in enumerate(studies)
        ]
    )
    forwarder, _ = forwarder_from_config(write_config(tmp_path, cloud, pacs.port, ehr.url), intake)

    # When the outbound loop runs once
    forwarder.outbound.tick()

    # Then the STAT study was uploaded first, under the STAT commit marker
    assert intake.forwarded[0] == (f"study-{stat_number}", 1)
    assert len(intake.forwarded) == len(studies)
    runs = {run.study_key: run for run in forwarder.journal.runs()}
    stat_run = runs[f"study-{stat_number}"]
    assert stat_run.priority is Priority.STAT
    stat_manifest = cloud.read_manifest(stat_run.pseudo_study_uid, Priority.STAT)
    assert stat_manifest.priority is Priority.STAT
    keys = {o["Key"] for o in client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert manifest_key(SITE, stat_run.pseudo_study_uid) not in keys  # no routine marker

    # When the cloud answers every study, the STAT one last, and the inbound loop runs once
    for number, study in enumerate(studies):
        run = runs[f"study-{number}"]
        priority = Priority.STAT if number == stat_number else Priority.ROUTINE
        cloud.answer(cloud.read_manifest(run.pseudo_study_uid, priority), study)
    forwarder.inbound.tick()

    # Then every report reached the EHR, the STAT study's first
    accessions = [_accession(bundle) for bundle in ehr.received]
    assert sorted(accessions) == sorted(f"ACC-PRIO-{n}" for n in range(len(studies)))
    assert accessions[0] == f"ACC-PRIO-{stat_number}"
    # ... and the STAT run was the first to finish its deliveries (PACS and EHR)
    delivered = [
        run.study_key
        for run in sorted(forwarder.journal.runs(), key=lambda r: r.updated_at)
        if run.stage == "delivered"
    ]
    assert delivered[0] == f"study-{stat_number}" and len(delivered) == len(studies)


def _accession(bundle: dict[str, object]) -> str:
    text = json.dumps(bundle)
    (found,) = {f"ACC-PRIO-{n}" for n in range(ROUTINE_STUDIES + 1) if f"ACC-PRIO-{n}" in text}
    return found
