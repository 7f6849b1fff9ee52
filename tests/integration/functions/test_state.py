"""The run-state store on DynamoDB (moto): conditional moves, FAILED from anywhere, timeline."""

from __future__ import annotations

import pytest

from imaging_ai.aws import client
from imaging_ai.contracts import Stage
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.local.provision import provision
from imaging_ai.state import RunKey, RunState, RunStateStore, StageConflict

RUN = RunKey("site-a", "1.2.826.0.1.3680043.8.498.1", "run-1")


@pytest.fixture
def store(aws: MotoServer) -> RunStateStore:
    return RunStateStore(client("dynamodb"), provision(["site-a"]).state_table)


def _recorded(store: RunStateStore, run: RunKey) -> RunState:
    """The run's item, which must exist."""
    current = store.get(run)
    assert current is not None
    return current


def test_a_run_moves_forward_only_from_its_predecessor(store: RunStateStore) -> None:
    assert store.start(RUN, "lung-nodule-demo") is True
    assert store.start(RUN, "lung-nodule-demo") is False  # a redelivery does not restart it
    with pytest.raises(StageConflict):
        store.advance(RUN, Stage.INFERRING)  # skipping PREPROCESSED is refused
    store.advance(RUN, Stage.PREPROCESSED)
    with pytest.raises(StageConflict):
        store.advance(RUN, Stage.PREPROCESSED)  # a second writer loses
    store.advance(RUN, Stage.INFERRING, {"inference_id": "run-run-1"})
    current = _recorded(store, RUN)
    assert current.stage is Stage.INFERRING
    assert current.attributes == {"inference_id": "run-run-1"}


def test_failed_is_recorded_once_with_its_reason_and_origin(store: RunStateStore) -> None:
    store.start(RUN, "lung-nodule-demo")
    store.advance(RUN, Stage.PREPROCESSED)
    assert store.fail(RUN, "inference failed: timeout") is True
    assert store.fail(RUN, "a later duplicate") is False
    current = _recorded(store, RUN)
    assert (current.stage, current.reason, current.failed_from) == (
        Stage.FAILED,
        "inference failed: timeout",
        Stage.PREPROCESSED,
    )


def test_a_run_never_received_can_still_be_failed(store: RunStateStore) -> None:
    assert store.fail(RUN, "manifest refused: unreadable") is True
    current = store.get(RUN)
    assert current is not None and current.stage is Stage.FAILED and current.failed_from is None


def test_the_timeline_lists_each_run_with_stage_latencies(store: RunStateStore) -> None:
    second = RunKey(RUN.site, RUN.pseudo_study_uid, "run-2")
    store.start(RUN, "m")
    store.advance(RUN, Stage.PREPROCESSED)
    store.start(second, "m")
    runs = store.timeline(RUN.site, RUN.pseudo_study_uid)
    assert [r.key.run_id for r in runs] == ["run-1", "run-2"]
    assert set(runs[0].stage_latencies_s()) == {Stage.PREPROCESSED}


def test_the_work_lease_admits_one_holder_until_released_or_expired(
    store: RunStateStore,
) -> None:
    store.start(RUN, "lung-nodule-demo")
    workable = (Stage.RECEIVED, Stage.PREPROCESSED)
    claimed = store.claim(RUN, workable, "holder-a", lease_s=60)
    assert claimed is not None and claimed.stage is Stage.RECEIVED
    assert store.claim(RUN, workable, "holder-b", lease_s=60) is None  # live lease: refused
    store.release(RUN, "holder-b")  # not the holder: the lease stays
    assert store.claim(RUN, workable, "holder-b", lease_s=60) is None
    store.release(RUN, "holder-a")
    assert store.claim(RUN, workable, "holder-b", lease_s=-1) is not None  # released: taken
    assert store.claim(RUN, workable, "holder-c", lease_s=60) is not None  # expired: taken over
    store.advance(RUN, Stage.PREPROCESSED)
    store.advance(RUN, Stage.INFERRING)
    store.release(RUN, "holder-c")
    assert store.claim(RUN, workable, "holder-d", lease_s=60) is None  # past the stages


def test_not_analyzed_is_terminal_recorded_once_and_only_before_inference(
    store: RunStateStore,
) -> None:
    # Given a received run, and another one already inferring
    store.start(RUN, "lung-nodule-demo")
    inferring = RunKey(RUN.site, RUN.pseudo_study_uid, "run-2")
    store.start(inferring, "lung-nodule-demo")
    store.advance(inferring, Stage.PREPROCESSED)
    store.advance(inferring, Stage.INFERRING)

    # When both are declared outside the model's intended use, twice
    assert store.not_analyze(RUN, "no series within the model's intended use: localizer")
    assert store.not_analyze(RUN, "a redelivery") is False
    assert store.not_analyze(inferring, "too late") is False

    # Then the first is NOT_ANALYZED with the first reason, and no failure can overwrite it
    assert store.fail(RUN, "a late failure") is False
    current = _recorded(store, RUN)
    assert (current.stage, current.failed_from) == (Stage.NOT_ANALYZED, Stage.RECEIVED)
    assert current.reason == "no series within the model's intended use: localizer"
    later = _recorded(store, inferring)
    assert later.stage is Stage.INFERRING
