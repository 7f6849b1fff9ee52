"""Group commit: concurrent stores share one commit; each hears its own outcome."""

from __future__ import annotations

import threading

import pytest

from edge_forwarder.intake.commit import GroupCommit


def test_stores_waiting_together_share_one_commit_and_each_gets_its_result() -> None:
    # Given a commit that holds the first batch until seven more stores are waiting
    batches: list[list[int]] = []
    first_running, others_queued = threading.Event(), threading.Event()

    def apply(batch: list[int]) -> list[int | BaseException]:
        batches.append(batch)
        if len(batches) == 1:
            first_running.set()
            assert others_queued.wait(10)
        return [ValueError("refused") if n == 5 else n * 10 for n in batch]

    commit: GroupCommit[int, int] = GroupCommit(apply)
    results: dict[int, object] = {}

    def store(n: int) -> None:
        try:
            results[n] = commit.submit(n)
        except ValueError as error:
            results[n] = error

    first = threading.Thread(target=store, args=(0,))
    first.start()
    assert first_running.wait(10)
    # When seven stores arrive while the first commit runs
    others = [threading.Thread(target=store, args=(n,)) for n in range(1, 8)]
    for thread in others:
        thread.start()
    while sum(len(b) for b in batches) < 1 or len(commit._queue) < 7:
        threading.Event().wait(0.01)
    others_queued.set()
    for thread in [first, *others]:
        thread.join(10)
    # Then they went in one second commit, and only store 5 heard its error
    assert batches[0] == [0] and sorted(batches[1]) == list(range(1, 8))
    assert {n: r for n, r in results.items() if not isinstance(r, ValueError)} == {
        n: n * 10 for n in range(8) if n != 5
    }
    assert isinstance(results[5], ValueError)


def test_a_failed_transaction_fails_every_store_in_it() -> None:
    def apply(batch: list[int]) -> list[int | BaseException]:
        raise OSError("disk gone")

    commit: GroupCommit[int, int] = GroupCommit(apply)
    with pytest.raises(OSError, match="disk gone"):
        commit.submit(1)
    # and the next store is not stuck behind a leader that never finished
    with pytest.raises(OSError):
        commit.submit(2)
