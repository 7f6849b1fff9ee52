"""A study turns STAT at completion: by its routing rule, or by its order's priority."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from edge_forwarder.intake import Intake, RoutingRule
from imaging_ai.contracts import Priority
from tests.integration.intake.conftest import send, write_study

pytestmark = pytest.mark.integration
LATER = 3600.0


def _ordered(paths: list[Path], priority: str | None) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in paths]
    for ds in datasets:
        if priority is not None:
            ds.RequestedProcedurePriority = priority
    return datasets


def test_requested_procedure_priority_stat_makes_the_run_stat_and_high_does_not(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    # Given three studies received over DICOM: ordered STAT, ordered HIGH, and with no priority
    intake = start_intake()
    sent = {}
    for name, priority in (("stat", "STAT"), ("high", "HIGH"), ("none", None)):
        study = write_study(tmp_path / name, series_count=1)
        assert set(send(intake.port, _ordered(study.paths, priority))) == {0}
        sent[study.study_uid] = name
    # When their quiet timers expire
    completed = intake.poll_completed(now=time.time() + LATER)
    # Then only the study whose order says STAT is a STAT run
    by_name = {sent[_study_uid(c.series)]: c.priority for c in completed}
    assert by_name == {"stat": Priority.STAT, "high": Priority.ROUTINE, "none": Priority.ROUTINE}


def test_a_stat_routing_rule_makes_every_study_it_routes_stat(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    # Given a rule for the emergency department's scanner that says "stat" (as the TOML would)
    rule = RoutingRule.model_validate(
        {"model": "ich-triage", "modality": ["CT"], "priority": "stat"}
    )
    intake = start_intake(routing=[rule])
    study = write_study(tmp_path / "ed", series_count=1)
    # When a study with no priority in its header completes
    assert set(send(intake.port, _ordered(study.paths, None))) == {0}
    (completed,) = intake.poll_completed(now=time.time() + LATER)
    # Then its run is STAT
    assert (completed.models, completed.priority) == (("ich-triage",), Priority.STAT)


def _study_uid(series: dict[str, list[Path]]) -> str:
    first = next(iter(series.values()))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
