"""The drift monitor on a moto state table: a changed scanner raises DriftDetected, the same
scanner does not; `python -m imaging_ai.drift status` shows the same verdicts."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from functions.common.observability import metrics
from functions.drift.service import DriftService
from imaging_ai.aws import client
from imaging_ai.contracts import Stage
from imaging_ai.drift import DRIFT_INPUT_ATTRIBUTE, baseline_from, input_profile, main
from imaging_ai.state import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, RunKey, RunStateStore
from imaging_ai.synthetic import FakePatient, ScannerProfile, iter_ct_slices, make_chest_phantom

TABLE = "drift-state"
DOCS_CHART = Path(__file__).resolve().parents[3] / "docs" / "sample-drift-chart.png"
MODEL = "lung-nodule-demo"
NAMESPACE = "ImagingAI"
VALIDATED = ScannerProfile()
NEW_FIRMWARE = dataclasses.replace(VALIDATED, software_version="07.1", convolution_kernel="BONE",
                                   noise_hu=35.0)  # fmt: skip


def _profile(seed: int, scanner: ScannerProfile):
    phantom = make_chest_phantom(seed, shape=(12, 64, 64), spacing_mm=(1.5, 5.6, 5.6),
                                 nodule_count=0, noise_hu=scanner.noise_hu)  # fmt: skip
    header = next(iter_ct_slices(phantom, FakePatient(), "2.25.1", "2.25.2", "2.25.3",
                                 scanner=scanner))  # fmt: skip
    return input_profile(header, phantom.hu)


def _emf(stdout: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        record: dict[str, Any] = json.loads(line)
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        if directive["Namespace"] == NAMESPACE and name in record:
            value = record[name]
            for v in value if isinstance(value, list) else [value]:
                found.append(({d: record[d] for d in directive["Dimensions"][0]}, v))
    return found


def test_a_changed_scanner_raises_drift_and_the_same_does_not(
    aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client("dynamodb").create_table(TableName=TABLE, KeySchema=KEY_SCHEMA,
                                    AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
                                    BillingMode="PAY_PER_REQUEST")  # fmt: skip
    store = RunStateStore(client("dynamodb"), TABLE)
    # Given two sites whose model was validated on 12 studies of the same scanner
    baseline = baseline_from(MODEL, [_profile(seed, VALIDATED) for seed in range(100, 112)])
    for site in ("site-same", "site-new"):
        store.put_baseline(site, MODEL, baseline.model_dump_json())
    # and a week of runs: the same scanner at one site, new firmware and kernel at the other
    for index, seed in enumerate(range(200, 206)):
        for site, scanner in (("site-same", VALIDATED), ("site-new", NEW_FIRMWARE)):
            run = RunKey(site, f"2.25.{seed}", f"run-{index}")
            store.start(run, MODEL)
            profile = _profile(seed, scanner)
            store.advance(
                run, Stage.PREPROCESSED, {DRIFT_INPUT_ATTRIBUTE: profile.model_dump_json()}
            )
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setattr(metrics, "namespace", NAMESPACE)
    monkeypatch.setattr(metrics, "service", "drift")
    metrics.clear_metrics()
    capsys.readouterr()
    # When the scheduled drift check runs
    statuses = DriftService(store, window_days=7).check(datetime.now(UTC))
    metrics.flush_metrics()
    out = capsys.readouterr().out
    # Then DriftDetected is 1 for the changed site and 0 for the unchanged one
    per_site = {d["site"]: v for d, v in _emf(out, "DriftDetected") if "site" in d}
    assert per_site == {"site-same": 0, "site-new": 1}
    # and the alarm's account-wide DriftDetected counts one drifting site and model
    assert [v for d, v in _emf(out, "DriftDetected") if "site" not in d] == [1]
    # and the drifting features are the ones that changed, by name only (no PHI)
    drifted = {d.feature for s in statuses if s.site == "site-new" for d in s.drifts if d.drifted}
    assert {"software_version", "kernel", "air_hu_std"} <= drifted
    scores = {(d["site"], d["feature"]): v for d, v in _emf(out, "DriftScore")}
    assert scores[("site-new", "kernel")] > 1 > scores[("site-same", "kernel")]
    assert "2.25." not in out
    # And the operator's status shows the same verdicts
    chart = tmp_path / "drift.png"
    assert main(["--table", TABLE, "status", "--chart", str(chart)]) == 1
    shown = capsys.readouterr().out
    assert "site-new / lung-nodule-demo: 6 run(s): DRIFT" in shown
    assert "site-same / lung-nodule-demo: 6 run(s): ok" in shown
    assert chart.read_bytes().startswith(b"\x89PNG")
    if DOCS_CHART.parent.is_dir() and os.environ.get("WRITE_DOCS_SAMPLES"):
        shutil.copy(chart, DOCS_CHART)  # docs/sample-drift-chart.png is this chart
