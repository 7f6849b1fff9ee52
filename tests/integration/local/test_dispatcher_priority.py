"""The preprocess queues: a STAT manifest has its own queue, drained before the routine one."""

from __future__ import annotations

import json
from typing import Any

from imaging_ai.aws import client
from imaging_ai.contracts import Priority, manifest_key
from imaging_ai.local.dispatcher import LambdaContext, event_sources
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.local.provision import provision

SITE = "site-a"
STUDIES = [f"1.2.826.0.1.3680043.10.999.{number}" for number in range(1, 7)]


def test_a_stat_manifest_written_after_five_routine_ones_is_preprocessed_first(
    aws: MotoServer,
) -> None:
    # Given the local stack, and five routine studies' manifests, then a STAT study's, written
    # while preprocess is not polling (S3 -> EventBridge -> SQS, as in AWS)
    resources = provision([SITE])
    stat_study = STUDIES[-1]
    for study in STUDIES:
        priority = Priority.STAT if study == stat_study else Priority.ROUTINE
        client("s3").put_object(
            Bucket=resources.data_bucket,
            Key=manifest_key(SITE, study, priority),
            Body=b"manifest",
        )
    # When preprocess's event source mapping is released and polls until both queues are empty
    handled: list[dict[str, Any]] = []
    batch_sizes: list[int] = []

    def preprocess(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        handled.extend(event["Records"])
        batch_sizes.append(len(event["Records"]))
        return {"batchItemFailures": []}

    sources = event_sources(
        resources.queues, invokers={"preprocess": preprocess}, stat_queues=resources.stat_queues
    )
    mapping = next(d for d in sources.dispatchers if d.function_name == "preprocess")
    while mapping.poll_once().received:
        pass
    # Then the STAT study came first, from the STAT queue, one study per invocation; the
    # routine ones after it (a standard queue keeps no order among them)
    keys = [json.loads(record["body"])["detail"]["object"]["key"] for record in handled]
    assert batch_sizes == [1] * len(STUDIES)
    assert keys[0] == manifest_key(SITE, stat_study, Priority.STAT)
    assert sorted(keys[1:]) == sorted(manifest_key(SITE, study) for study in STUDIES[:-1])
    assert handled[0]["eventSourceARN"] == resources.preprocess_stat.arn
    assert {record["eventSourceARN"] for record in handled[1:]} == {resources.preprocess.arn}
