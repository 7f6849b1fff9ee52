"""The local timeline of a study that fans out to one run per model."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imaging_ai.edge_stage import EdgeStage
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.local.timeline import FAILED, NOT_ANALYZED, NOT_ROUTED, Timeline

DELIVERED = (EdgeStage.DELIVERED_PACS, EdgeStage.DELIVERED_EHR)
NOW = 0.0  # wait_for with no time left: the answer as things stand, no waiting


def _routed(*run_ids: str) -> Timeline:
    timeline = Timeline(printer=None)
    for run_id in run_ids:
        timeline.record(EdgeStage.COMPLETE, run_id=run_id)
    return timeline


def _deliver(timeline: Timeline, run_id: str) -> None:
    for stage in DELIVERED:
        timeline.record(stage, run_id=run_id)


def test_one_model_rejecting_the_study_does_not_end_the_wait_for_another() -> None:
    # Given a study routed to two models, one of which finds it outside its intended use
    timeline = _routed("run-ct-lung", "run-ct-liver")
    timeline.record(NOT_ANALYZED, "slice thickness out of range", run_id="run-ct-liver")
    # Then the study is not over: the other model is still working
    assert timeline.wait_for(DELIVERED, NOW) is False
    assert timeline.run_ends() == {"run-ct-liver": NOT_ANALYZED}
    # When the other model's results reach PACS and EHR
    _deliver(timeline, "run-ct-lung")
    # Then the wait ends delivered, and each run says how it ended
    assert timeline.wait_for(DELIVERED, NOW) is True
    assert timeline.run_ends() == {
        "run-ct-liver": NOT_ANALYZED,
        "run-ct-lung": "+".join(sorted(DELIVERED)),
    }


def test_the_first_run_delivered_does_not_end_the_wait_while_another_runs() -> None:
    # Given two runs, the first delivered to PACS and EHR
    timeline = _routed("run-a", "run-b")
    _deliver(timeline, "run-a")
    # Then the wait goes on for the second,
    assert timeline.wait_for(DELIVERED, NOW) is False
    # and ends when the second fails, delivered (the first) with the failure reported
    timeline.record(FAILED, "cloud_failed: InferenceError", run_id="run-b")
    assert timeline.wait_for(DELIVERED, NOW) is True
    assert timeline.run_ends()["run-b"] == FAILED
    assert timeline.ended() == FAILED


def test_every_run_rejected_ends_the_wait_undelivered() -> None:
    timeline = _routed("run-a", "run-b")
    timeline.record(NOT_ANALYZED, run_id="run-a")
    timeline.record(FAILED, run_id="run-b")
    assert timeline.wait_for(DELIVERED, timeout_s=60) is False
    assert timeline.run_ends() == {"run-a": NOT_ANALYZED, "run-b": FAILED}


def test_a_shadow_run_is_over_once_its_results_are_kept_on_the_edge() -> None:
    timeline = _routed("run-live", "run-shadow")
    _deliver(timeline, "run-live")
    timeline.record(EdgeStage.SHADOW_STORED, run_id="run-shadow")
    stages = (*DELIVERED, EdgeStage.SHADOW_STORED)
    assert timeline.wait_for(stages, timeout_s=60) is True


def test_a_study_wide_end_ends_the_wait_for_every_run() -> None:
    # Given runs under way, when the edge fails the study itself (de-identification) or
    # no rule routes it, the wait ends at once
    for end in (FAILED, NOT_ROUTED):
        timeline = _routed("run-a", "run-b")
        timeline.record(end)
        assert timeline.wait_for(DELIVERED, timeout_s=60) is False
        assert timeline.ended() == end


def test_the_local_runtime_follows_each_run_in_the_forwarder_log(tmp_path: Path) -> None:
    # Given the forwarder's log of a study routed to two models, one rejecting it
    pipeline = LocalPipeline(work_dir=tmp_path, printer=None)
    lines = [
        {"event": EdgeStage.COMPLETE, "run_id": "run-lung", "pseudo_study_uid": "2.25.1"},
        {"event": EdgeStage.COMPLETE, "run_id": "run-liver", "pseudo_study_uid": "2.25.1"},
        {"event": EdgeStage.NOT_ANALYZED, "run_id": "run-liver", "reason": "not analyzed: CT"},
    ]
    for line in lines:
        pipeline._on_edge_line(json.dumps(line))
    # When the demo waits while the other model's results are delivered
    waited: list[bool] = []
    waiter = threading.Thread(target=lambda: waited.append(pipeline.wait_until_delivered(60)))
    waiter.start()
    for stage in DELIVERED:
        pipeline._on_edge_line(json.dumps({"event": stage, "run_id": "run-lung"}))
    waiter.join()
    # Then the wait ends delivered (the rejection did not end it), the rejection reported
    assert waited == [True]
    assert pipeline.timeline.run_ends()["run-liver"] == NOT_ANALYZED


def _logged(event: str, at: datetime, **fields: str) -> str:
    return json.dumps({"time": at.isoformat(timespec="milliseconds"), "event": event, **fields})


def test_each_study_is_timed_from_its_own_first_c_store_as_logged(tmp_path: Path) -> None:
    # Given the forwarder's log of two studies, the second arriving 2 s after the first and
    # delivered before it, read late (the log lines carry when each stage happened)
    pipeline = LocalPipeline(work_dir=tmp_path, printer=None)
    first = datetime.now(UTC) - timedelta(seconds=30)
    pipeline.timeline.started = time.monotonic() - 30  # the clock started with the first send
    lines = [
        _logged(EdgeStage.RECEIVED, first, study_key="st-chest"),
        _logged(EdgeStage.RECEIVED, first + timedelta(seconds=2), study_key="st-head"),
        _logged(EdgeStage.COMPLETE, first + timedelta(seconds=5), study_key="st-chest",
                run_id="run-chest", name="lung"),
        _logged(EdgeStage.COMPLETE, first + timedelta(seconds=6), study_key="st-head",
                run_id="run-head", name="head"),
        *(_logged(s, first + timedelta(seconds=14), run_id="run-head") for s in DELIVERED),
        *(_logged(s, first + timedelta(seconds=20), run_id="run-chest") for s in DELIVERED),
    ]  # fmt: skip
    # When the runtime reads them
    for line in lines:
        pipeline._on_edge_line(line)
    # Then each study's report is timed from its own first C-STORE, in arrival order
    turnarounds = pipeline.timeline.per_run()
    assert [t.model_name for t in turnarounds] == ["lung", "head"]
    assert turnarounds[0].seconds_to(EdgeStage.DELIVERED_EHR) == pytest.approx(20.0, abs=0.01)
    assert turnarounds[1].seconds_to(EdgeStage.DELIVERED_EHR) == pytest.approx(12.0, abs=0.01)
    assert turnarounds[1].seconds_to(EdgeStage.COMPLETE) == pytest.approx(4.0, abs=0.01)
    # ... and the demo was over when the last run was, not when the log was read
    assert pipeline.timeline.runs_ended_at() == pytest.approx(20.0, abs=0.5)
