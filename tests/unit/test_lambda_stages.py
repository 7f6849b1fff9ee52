"""The Lambda stage table: typed and checked, and what the local event sources derive from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imaging_ai.lambda_stages import (
    LAMBDA_STAGES,
    STAGE_TABLE,
    StageTableError,
    Trigger,
    load_stages,
)
from imaging_ai.local.dispatcher import event_sources
from imaging_ai.local.provision import QueuePair

_AUDIT_STAGE = """
[[stage]]
name = "rereading"
description = "Reads every inference notification a second time"
trigger = "inference-notifications"
timeout_s = 30
memory_mb = 256
reserved_concurrency = [1, 1]
batch_size = 10
"""


def _queues(names: list[str]) -> dict[str, QueuePair]:
    return {
        name: QueuePair(f"url-{name}", f"arn-{name}", f"url-{name}-dlq", f"arn-{name}-dlq")
        for name in names
    }


def test_the_shipped_table_names_each_stage_once_with_its_handler_and_queues() -> None:
    # When the shipped table is read, Then it holds the pipeline's stages
    by_name = {stage.name: stage for stage in LAMBDA_STAGES}
    assert {"preprocess", "postprocess", "failure"} <= set(by_name)
    preprocess = by_name["preprocess"]
    assert preprocess.trigger is Trigger.MANIFEST_CREATED
    assert preprocess.handler == "functions.preprocess.handler.lambda_handler"
    assert (preprocess.queue_name, preprocess.dlq_name) == (
        "imaging-ai-preprocess",
        "imaging-ai-preprocess-dlq",
    )
    # And the dead-letter stage owns no queue
    assert by_name["failure"].trigger is Trigger.DEAD_LETTERS
    assert not by_name["failure"].has_queue


def test_a_stage_added_to_the_table_gets_its_mapping_and_its_dead_letters_handled(
    tmp_path: Path,
) -> None:
    # Given the shipped table with one more stage fed by the inference notifications
    table = tmp_path / "lambda_stages.toml"
    table.write_text(STAGE_TABLE.read_text() + _AUDIT_STAGE)
    stages = load_stages(table)
    # When the local event sources are derived from it
    queued = [stage.name for stage in stages if stage.has_queue]
    sources = event_sources(_queues(queued), stages=stages).dispatchers
    # Then the new stage polls its own queue with its own handler
    polled = [(d.function_name, d.queue_url, d.handler) for d in sources]
    handler = "functions.rereading.handler.lambda_handler"
    assert ("rereading", "url-rereading", handler) in polled
    # And the failure stage drains every work queue's DLQ, the new one's included
    drained = [d.queue_url for d in sources if d.function_name == "failure"]
    assert drained == [f"url-{name}-dlq" for name in queued]
    assert "url-rereading-dlq" in drained


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('trigger = "dead-letters"', 'trigger = "cron"'), "'cron' is not a valid Trigger"),
        (("memory_mb = 512\n", "memory_mb = 512\nmemroy_mb = 1\n"), "memroy_mb"),
        (('name = "failure"', 'name = "preprocess"'), "appears twice"),
        # STAT queues come from manifests, and routine work keeps at least two instances
        (("batch_size = 10\n", "batch_size = 10\nstat_headroom = 1\n"), "stat_headroom"),
        (("stat_headroom = 2", "stat_headroom = 3"), "stat_headroom"),
    ],
)
def test_a_wrong_table_fails_with_the_stage_and_the_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    # Given a table with an unknown trigger, a misspelt field or a repeated name
    table = tmp_path / "lambda_stages.toml"
    table.write_text(STAGE_TABLE.read_text().replace(*change))
    # When it is read, Then the error says what is wrong
    with pytest.raises(StageTableError, match=message):
        load_stages(table)


def test_a_stage_with_a_stat_queue_polls_it_first_and_its_dead_letters_are_handled() -> None:
    # Given the shipped table, where preprocess keeps instances for STAT studies
    (preprocess,) = [stage for stage in LAMBDA_STAGES if stage.has_stat_queue]
    assert preprocess.stat_queue_name == "imaging-ai-preprocess-stat"
    # When the local event sources are derived with the STAT queues
    stat = {"preprocess": QueuePair("url-stat", "arn-stat", "url-stat-dlq", "arn-stat-dlq")}
    sources = event_sources(_queues(["preprocess", "postprocess"]), stat_queues=stat).dispatchers
    # Then preprocess polls its STAT queue before its own, one study at a time
    (mapping,) = [d for d in sources if d.function_name == "preprocess"]
    assert (mapping.priority_queue_url, mapping.queue_url) == ("url-stat", "url-preprocess")
    assert mapping.batch_size == 1
    # And the failure stage drains the STAT queue's DLQ too
    assert "url-stat-dlq" in [d.queue_url for d in sources if d.function_name == "failure"]


def test_each_instance_of_a_function_polls_its_queues_as_lambda_instances_do() -> None:
    # Given two instances of preprocess (Lambda runs concurrent invocations side by side)
    def instance(event: dict[str, Any], context: Any) -> None:
        return None

    def other_instance(event: dict[str, Any], context: Any) -> None:
        return None

    stat = {"preprocess": QueuePair("url-stat", "arn-stat", "url-stat-dlq", "arn-stat-dlq")}
    # When the local event sources are derived with both
    sources = event_sources(
        _queues(["preprocess", "postprocess"]),
        invokers={"preprocess": [instance, other_instance]},
        stat_queues=stat,
    ).dispatchers
    # Then each instance has its own mapping on the same queues, STAT first, so a second
    # study is preprocessed while the first still is
    mappings = [d for d in sources if d.function_name == "preprocess"]
    assert [d.invoker for d in mappings] == [instance, other_instance]
    assert {(d.priority_queue_url, d.queue_url) for d in mappings} == {
        ("url-stat", "url-preprocess")
    }
