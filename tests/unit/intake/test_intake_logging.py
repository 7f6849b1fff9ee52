"""Intake log lines reach the forwarder's JSON log with their keyword fields, at INFO."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_forwarder.intake import ExpectedSeriesRule, Intake, IntakeSettings, RoutingRule
from edge_forwarder.intake.settings import SenderRule
from edge_forwarder.observability import LOGGER_NAME, configure_logging

LATER = 3600.0
JsonLog = Callable[[], list[dict[str, object]]]


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonLog]:
    forwarder = logging.getLogger(LOGGER_NAME)
    saved = (forwarder.handlers[:], forwarder.level, forwarder.propagate)
    stdout = io.StringIO()
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", stdout)
        configure_logging("INFO")  # the run command's logging: JSON lines on stdout

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in stdout.getvalue().splitlines()]

    yield lines
    forwarder.handlers[:], forwarder.level, forwarder.propagate = saved


def _intake(tmp_path: Path, **overrides: object) -> Intake:
    senders = [SenderRule(name="ct", ae_title="CT", addresses=["127.0.0.1"])]
    return Intake(IntakeSettings(spool_dir=tmp_path / "spool", senders=senders, **overrides))


def _journal_ct_series(intake: Intake, study_uid: str, now: float) -> str:
    attrs = {"Modality": "CT", "SeriesDescription": "CHEST SOFT TISSUE"}
    with intake.journal.batch() as journal:
        study_key = journal.study_key_for(study_uid, now)
        for number in range(3):
            path = Path(f"/spool/{number}.dcm")
            journal.add_instance(
                study_key, f"1.2.3.4.{number}", "1.2.3.9", path, 10, attrs, "ct", now
            )
    return study_key


def test_missing_expected_series_still_routes_the_study_and_logs_both_decisions(
    tmp_path: Path, json_log: JsonLog
) -> None:
    # Given INFO logging and a CT study whose expected thin lung series never came
    rule = ExpectedSeriesRule(name="thin lung", series_description="LUNG")
    intake = _intake(
        tmp_path,
        routing=[RoutingRule(model="lung-nodule-demo", modality=["CT"])],
        expected_series=[rule],
        expected_series_max_wait_seconds=60,
    )
    study_key = _journal_ct_series(intake, "1.2.826.0.1.3680043.99.1", now=0.0)
    try:
        # When the quiet timer and the expected-series wait are over
        completed = intake.poll_completed(now=LATER)
    finally:
        intake.journal.close()
    # Then the study is handed out (not lost to a logging error after its claim)
    assert [(c.study_key, c.run_number, c.models) for c in completed] == [
        (study_key, 1, ("lung-nodule-demo",))
    ]
    # and both decisions are JSON lines with their keyword fields
    by_event = {str(line["event"]): line for line in json_log()}
    missing = by_event["expected_series_missing"]
    assert (missing["level"], missing["study_key"], missing["name"]) == (
        "WARNING",
        study_key,
        "thin lung",
    )
    routed = by_event["route_decision"]
    assert routed["level"] == "INFO"
    assert (routed["study_key"], routed["name"], routed["status"]) == (
        study_key,
        "lung-nodule-demo",
        "rule_0",
    )
    assert (routed["run_number"], routed["series_count"], routed["logger"]) == (
        1,
        1,
        "edge_forwarder.intake",
    )
    assert "1.2.826.0.1.3680043.99.1" not in json.dumps(list(by_event.values()))
