"""The preprocess and postprocess Lambdas on moto, fed by the local dispatcher as Lambda would."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom

from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import SiteResultMessage, Stage, encryption_context
from imaging_ai.state import RunStateStore
from tests.functions_support import SITE, emulate_inference, run_stage, upload_study
from tests.integration.functions.conftest import Stack


def test_a_committed_study_comes_back_as_encrypted_results(stack: Stack, tmp_path: Path) -> None:
    # Given a de-identified series and its manifest uploaded the way the forwarder does
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)

    # When the preprocess queue is dispatched
    outcome = stack.preprocess().poll_once()

    # Then one inference is requested on a model input in preprocessed/
    assert (outcome.received, outcome.failed) == (1, 0)
    assert len(stack.inference_calls) == 1
    call = stack.inference_calls[0]
    assert call["EndpointName"] == resources.model_endpoints[study.model_name]
    assert call["ContentType"] == "application/x-npz"
    assert str(call["InputLocation"]).endswith(f"/{study.run_id}/input.npz")
    assert run_stage(stack.resources.state_table, study) is Stage.INFERRING

    # When the endpoint reports success and the postprocess queue is dispatched
    emulate_inference(
        resources.data_bucket,
        str(call["InputLocation"]),
        resources.inference_success_topic_arn,
        study,
    )
    outcome = stack.postprocess().poll_once()

    # Then the site hears RESULT_READY with keys to three objects it can decrypt
    assert (outcome.received, outcome.failed) == (1, 0)
    messages = [SiteResultMessage.model_validate_json(body) for body in stack.site_messages()]
    assert [m.kind for m in messages] == ["RESULT_READY"]
    message = messages[0]
    assert message.run_id == study.run_id and message.model_version == "0.1.0"
    context = encryption_context(SITE, study.pseudo_study_uid)
    plain = {
        name: envelope.decrypt_bytes(
            client("s3").get_object(Bucket=resources.data_bucket, Key=key)["Body"].read(),
            resources.kms_key_arn,
            context,
        )
        for name, key in message.result_keys.items()
    }
    assert set(plain) == {"sr.dcm", "seg.dcm", "keyimages.dcm", "report.bundle.json"}
    sr = pydicom.dcmread(io.BytesIO(plain["sr.dcm"]))
    assert sr.StudyInstanceUID == study.pseudo_study_uid
    # ... and the key images burn the outline into the de-identified slice of the finding
    key_images = pydicom.dcmread(io.BytesIO(plain["keyimages.dcm"]))
    assert key_images.StudyInstanceUID == study.pseudo_study_uid
    assert key_images.BurnedInAnnotation == "YES"
    referenced = {i.ReferencedSOPInstanceUID for i in key_images.SourceImageSequence}
    assert referenced and referenced <= {str(d.SOPInstanceUID) for d in study.datasets}
    assert json.loads(plain["report.bundle.json"])["resourceType"] == "Bundle"

    # And the run's timeline shows every stage, in order
    store = RunStateStore(client("dynamodb"), resources.state_table)
    (run,) = store.timeline(SITE, study.pseudo_study_uid)
    assert run.stage is Stage.DELIVERED
    assert list(run.stage_times) == [
        Stage.RECEIVED,
        Stage.PREPROCESSED,
        Stage.INFERRING,
        Stage.REPORTED,
        Stage.DELIVERED,
    ]
    assert all(seconds >= 0 for seconds in run.stage_latencies_s().values())
