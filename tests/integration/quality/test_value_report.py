"""The monthly value report from the run-state table on a moto server."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imaging_ai.aws import client
from imaging_ai.contracts import Stage
from imaging_ai.state import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, RunKey, RunStateStore
from imaging_ai.value_report import CSV_NAME, PNG_NAME, main

TABLE = "value-report-state"
DAY_ONE = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
DAY_TWO = datetime(2026, 11, 4, 8, 0, tzinfo=UTC)


def _put(site: str, study: int, model: str, stage: Stage, times: dict[Stage, datetime],
         reason: str | None = None) -> None:  # fmt: skip
    key = RunKey(site, f"2.25.{study}", f"run-{study}")
    item = {
        **key.item_key,
        "site": {"S": site},
        "pseudo_study_uid": {"S": key.pseudo_study_uid},
        "run_id": {"S": key.run_id},
        "stage": {"S": stage.value},
        "model_name": {"S": model},
        **{f"at_{s.value}": {"S": at.isoformat()} for s, at in times.items()},
    }
    if reason:
        item["reason"] = {"S": reason}
    client("dynamodb").put_item(TableName=TABLE, Item=item)


def _delivered(start: datetime, preprocess_s: float, total_s: float) -> dict[Stage, datetime]:
    return {
        Stage.RECEIVED: start,
        Stage.PREPROCESSED: start + timedelta(seconds=preprocess_s),
        Stage.INFERRING: start + timedelta(seconds=preprocess_s + 1),
        Stage.REPORTED: start + timedelta(seconds=total_s - 1),
        Stage.DELIVERED: start + timedelta(seconds=total_s),
    }


def test_monthly_report_counts_studies_turnaround_and_reasons(aws, tmp_path: Path) -> None:
    client("dynamodb").create_table(TableName=TABLE, KeySchema=KEY_SCHEMA,
                                    AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
                                    BillingMode="PAY_PER_REQUEST")  # fmt: skip
    # Given three delivered runs at one site (preprocessing took 10, 20 and 30 s), a run
    # not analyzed and a failed one the next day, another site's run and last month's run
    _put("site-a", 1, "lung", Stage.DELIVERED, _delivered(DAY_ONE, 10, 100))
    _put("site-a", 2, "lung", Stage.DELIVERED, _delivered(DAY_ONE, 20, 200))
    _put("site-a", 3, "lung", Stage.DELIVERED, _delivered(DAY_TWO, 30, 300))
    _put("site-a", 4, "lung", Stage.NOT_ANALYZED,
         {Stage.RECEIVED: DAY_TWO, Stage.NOT_ANALYZED: DAY_TWO + timedelta(seconds=4)},
         reason="slice thickness outside intended use")  # fmt: skip
    _put("site-a", 5, "lung", Stage.FAILED,
         {Stage.RECEIVED: DAY_TWO, Stage.FAILED: DAY_TWO + timedelta(seconds=9)},
         reason="inference failed")  # fmt: skip
    _put("site-b", 6, "lung", Stage.DELIVERED, _delivered(DAY_ONE, 5, 50))
    _put("site-a", 7, "lung", Stage.DELIVERED, _delivered(DAY_ONE - timedelta(days=30), 1, 9))
    assert len(RunStateStore(client("dynamodb"), TABLE).runs()) == 7
    # When the monthly report runs for November
    assert main(["--table", TABLE, "--month", "2026-11", "--out", str(tmp_path)]) == 0
    with (tmp_path / CSV_NAME).open() as handle:
        rows = {(r["figure"], r["site"], r["key"]): r["value"] for r in csv.DictReader(handle)}
    # Then studies are counted per day and site (last month's run is left out)
    assert rows[("studies_per_day", "site-a", "2026-11-03")] == "2"
    assert rows[("studies_per_day", "site-a", "2026-11-04")] == "3"
    assert rows[("studies_per_day", "site-b", "2026-11-03")] == "1"
    # and turnaround percentiles are numpy's linear ones over 10, 20, 30 s (p95 = 29 s)
    assert rows[("turnaround_runs", "site-a", "PREPROCESSED")] == "3"
    assert float(rows[("turnaround_p50_s", "site-a", "PREPROCESSED")]) == 20.0
    assert float(rows[("turnaround_p95_s", "site-a", "PREPROCESSED")]) == 29.0
    assert float(rows[("turnaround_p50_s", "site-a", "TOTAL")]) == 200.0
    # and failed and not-analyzed runs are counted with their reasons
    assert rows[("not_analyzed", "site-a", "slice thickness outside intended use")] == "1"
    assert rows[("failed", "site-a", "inference failed")] == "1"
    assert (tmp_path / PNG_NAME).read_bytes().startswith(b"\x89PNG")
