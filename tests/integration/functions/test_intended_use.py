"""Intended use end to end on the cloud side: the best series is chosen, or NOT_ANALYZED."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from imaging_ai.aws import client
from imaging_ai.contracts import SiteResultMessage, Stage
from imaging_ai.model_io import unpack_model_input
from imaging_ai.synthetic import FakePatient, Phantom, make_chest_phantom
from imaging_ai.synthetic_series import (
    ct_series,
    dose_report,
    localizer,
    make_head_phantom,
    secondary_capture,
)
from tests.events import load_event
from tests.functions_support import chest_model_card, run_stage, upload_series
from tests.integration.functions.conftest import Stack

CHEST_ONLY = chest_model_card().name


@pytest.fixture(scope="module")
def chest() -> Phantom:
    return make_chest_phantom(seed=21, shape=(80, 256, 256), spacing_mm=(2.0, 1.2, 1.2))


def _site_study(chest: Phantom, with_chest: bool) -> list[list[Dataset]]:
    """Localizer, a head CT whose Body Part Examined lies (CHEST), dose SR, dose screen, and
    optionally the chest CT itself."""
    patient, study_uid, for_uid = FakePatient(), generate_uid(), generate_uid()
    head = ct_series(
        make_head_phantom(seed=4), patient, study_uid, generate_uid(), 3, "HEAD", "CHEST"
    )
    series = [[localizer(chest, patient, study_uid, for_uid)], head]
    if with_chest:
        series.append(ct_series(chest, patient, study_uid, for_uid, 4, "CHEST", "CHEST"))
    series += [[dose_report(head[0])], [secondary_capture(head[0])]]
    return series


def test_a_head_ct_labelled_chest_is_not_analyzed_and_the_site_is_told_why(
    stack: Stack, chest: Phantom
) -> None:
    # Given a study whose only CT volume is a head, its Body Part Examined wrongly CHEST
    resources = stack.resources
    manifest = upload_series(
        resources.data_bucket,
        resources.kms_key_arn,
        _site_study(chest, with_chest=False),
        model_name=CHEST_ONLY,
    )

    # When preprocess handles the manifest (twice: the queue delivers at least once)
    stack.preprocess().poll_once()
    redelivery = load_event(
        "eventbridge_s3_manifest_created",
        bucket=resources.data_bucket,
        pseudo_study_uid=manifest.pseudo_study_uid,
    )
    sqs = client("sqs")
    sqs.send_message(QueueUrl=resources.preprocess.url, MessageBody=json.dumps(redelivery))
    stack.preprocess().poll_once()

    # Then the run ended NOT_ANALYZED, no inference was requested, and the site got one
    # NOT_ANALYZED message naming every series' reason (the lung check caught the head)
    assert run_stage(stack.resources.state_table, manifest) is Stage.NOT_ANALYZED
    assert stack.inference_calls == []
    messages = [SiteResultMessage.model_validate_json(b) for b in stack.site_messages()]
    assert [m.kind for m in messages] == ["NOT_ANALYZED"]
    reason = str(messages[0].reason)
    for expected in ("localizer", "dose report", "secondary capture", "lung-density volume"):
        assert expected in reason


def test_the_chest_series_is_chosen_among_localizer_head_and_dose_objects(
    stack: Stack, chest: Phantom
) -> None:
    # Given the same study with the chest CT among its series
    resources = stack.resources
    series = _site_study(chest, with_chest=True)
    manifest = upload_series(
        resources.data_bucket, resources.kms_key_arn, series, model_name=CHEST_ONLY
    )
    chest_series_uid = str(series[2][0].SeriesInstanceUID)

    # When preprocess handles it
    stack.preprocess().poll_once()

    # Then inference was requested on the chest series' volume, nothing else
    assert run_stage(stack.resources.state_table, manifest) is Stage.INFERRING
    (call,) = stack.inference_calls
    bucket, key = str(call["InputLocation"]).removeprefix("s3://").split("/", 1)
    image, meta = unpack_model_input(client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    assert meta.pseudo_series_uid == chest_series_uid
    assert meta.source_geometry.shape == chest.hu.shape
    assert np.isfinite(image).all()
    assert stack.site_messages() == []
