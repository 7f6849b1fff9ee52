"""Postprocess emits the latency metrics the stack's alarm and dashboard read (EMF on stdout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from functions.common.observability import metrics
from tests.functions_support import SITE
from tests.integration.functions.conftest import Stack

NAMESPACE = "ImagingAI"  # cdk/imaging_ai_infra/names.py METRICS_NAMESPACE


def _emf_records(stdout: str) -> list[dict[str, Any]]:
    records = []
    for line in stdout.splitlines():
        if line.startswith('{"_aws"'):
            records.append(json.loads(line))
    return records


def _values(records: list[dict[str, Any]], name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for record in records:
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        if directive["Namespace"] != NAMESPACE:
            continue
        for metric in directive["Metrics"]:
            if metric["Name"] == name:
                dimensions = {d: record[d] for d in directive["Dimensions"][0]}
                value = record[name]
                found += [(dimensions, v) for v in (value if isinstance(value, list) else [value])]
    return found


def test_a_delivered_run_reports_end_to_end_and_per_stage_seconds(
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a study that went through preprocess and inference
    stack.inferred(tmp_path)
    # and metrics on, as the stack configures the postprocess function
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "postprocess")
    monkeypatch.setattr(metrics, "namespace", NAMESPACE)
    monkeypatch.setattr(metrics, "service", "postprocess")
    metrics.clear_metrics()  # earlier tests ran with metrics disabled, which never flushes
    capsys.readouterr()

    # When postprocess delivers the results
    stack.postprocess().poll_once()

    # Then EndToEndSeconds (service=postprocess) covers manifest written → site told
    records = _emf_records(capsys.readouterr().out)
    ((dimensions, seconds),) = _values(records, "EndToEndSeconds")
    assert dimensions == {"service": "postprocess"}
    assert 0 < seconds < 300
    # And StageSeconds has one value per stage after RECEIVED, each with its stage dimension
    stages = {d["stage"]: v for d, v in _values(records, "StageSeconds")}
    assert set(stages) == {"PREPROCESSED", "INFERRING", "REPORTED", "DELIVERED"}
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= seconds
    assert all(d["service"] == "postprocess" for d, _ in _values(records, "StageSeconds"))
    # And the value report's figures go live too: TurnaroundSeconds per site, model and stage,
    # and one RunsEnded (outcome delivered) for the studies-per-day count
    turnaround = _values(records, "TurnaroundSeconds")
    assert {d["stage"] for d, _ in turnaround} == set(stages)
    assert {(d["site"], d["model"]) for d, _ in turnaround} == {(SITE, "lung-nodule-demo")}
    ((ended, count),) = _values(records, "RunsEnded")
    assert (ended["outcome"], ended["site"], count) == ("delivered", SITE, 1)
