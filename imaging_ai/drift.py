"""Drift of a model's inputs and outputs at a site, against the baseline of its validation.

Input drift: the acquisition (manufacturer, scanner model, software version, reconstruction
kernel: PSI over their frequencies; slice thickness, kVp and the HU statistics of a reference
region: two-sample KS). The reference region is air outside the body (the volume's corners),
where a new kernel or a noisier detector shows first. Output drift: findings per study and
finding volumes (KS), and the rate of not-analyzed studies (PSI of a two-bin distribution).

Every feature is a property of the acquisition or of the model's output: none identifies a
patient, so profiles may sit in the run-state table and features may name metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset

from imaging_ai.aws import client
from imaging_ai.contracts import Stage
from imaging_ai.errors import ContractError
from imaging_ai.state import RunState, RunStateStore

# Header attributes compared by frequency (PSI); absent ones count as "absent".
CATEGORICAL_FEATURES: Final = {
    "manufacturer": "Manufacturer",
    "scanner_model": "ManufacturerModelName",
    "software_version": "SoftwareVersions",
    "kernel": "ConvolutionKernel",
}
NUMERIC_HEADER_FEATURES: Final = {"slice_thickness_mm": "SliceThickness", "kvp": "KVP"}
AIR_MEAN, AIR_STD = "air_hu_mean", "air_hu_std"
FINDINGS_PER_STUDY, FINDING_VOLUME, NOT_ANALYZED_RATE = (
    "findings_per_study",
    "finding_volume_mm3",
    "not_analyzed_rate",
)
# Run-state attributes the drift monitor reads (preprocess and postprocess write them).
DRIFT_INPUT_ATTRIBUTE: Final = "drift_input"  # a RunProfile's JSON (acquisition only)
FINDINGS_ATTRIBUTE: Final = "findings"  # the number of findings the model made
FINDING_VOLUMES_ATTRIBUTE: Final = "finding_volumes_mm3"  # their volumes, a JSON list
# PSI above 0.25 is the usual "significant shift"; KS is judged at alpha = 0.01 (its
# critical D for the two sample sizes), so a small window needs a larger shift to alarm.
PSI_THRESHOLD: Final = 0.25
KS_ALPHA: Final = 0.01
DEFAULT_WINDOW_DAYS: Final = 7.0  # the recent window compared with the baseline
MIN_WINDOW: Final = 5  # fewer runs than this: no verdict (a single odd study is not drift)
_CHART_FLOOR = 1e-2  # a score of 0 on a log axis
_PSI_FLOOR = 1e-4  # a category absent from one side must not make PSI infinite
_CORNER_FRACTION = 0.08
_PADDING_BELOW_HU = -1100.0  # outside the reconstruction circle some scanners write -2048


class DriftKind(StrEnum):
    INPUT = "input"
    OUTPUT = "output"


class RunProfile(BaseModel):
    """What drift needs of one run: its acquisition and, once reported, its output."""

    model_config = ConfigDict(frozen=True)
    categorical: dict[str, str] = Field(default_factory=dict)
    numeric: dict[str, float] = Field(default_factory=dict)
    not_analyzed: bool = False
    findings: int | None = None
    finding_volumes_mm3: list[float] = Field(default_factory=list)


class Baseline(BaseModel):
    """The validation run's profiles, summarised: what "as validated" looks like."""

    model_config = ConfigDict(frozen=True)
    model_name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    studies: int
    categorical: dict[str, dict[str, int]]
    numeric: dict[str, list[float]]  # samples, for KS


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: DriftKind
    test: str  # "PSI" or "KS"
    value: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


def reference_region_hu(
    hu: npt.NDArray[np.floating] | npt.NDArray[np.integer],
) -> tuple[float, float]:
    """Mean and standard deviation of HU in air outside the body: the four corners of every
    slice, and the top rows over the middle third of the columns (the air above the patient,
    inside the reconstruction circle where a scanner pads its corners). Padding is left out."""
    if hu.ndim != 3:
        raise ContractError("reference region needs a (slice, row, column) volume")
    rows, cols = hu.shape[1:]
    r, c = max(1, int(rows * _CORNER_FRACTION)), max(1, int(cols * _CORNER_FRACTION))
    region = np.concatenate(
        [
            hu[:, :r, :c].ravel(),
            hu[:, :r, -c:].ravel(),
            hu[:, -r:, :c].ravel(),
            hu[:, -r:, -c:].ravel(),
            hu[:, :r, cols // 3 : 2 * cols // 3].ravel(),
        ]
    ).astype(np.float64)
    region = region[region >= _PADDING_BELOW_HU]
    if region.size == 0:
        return float("nan"), float("nan")
    return float(region.mean()), float(region.std())


def input_profile(
    header: Dataset, hu: npt.NDArray[np.floating] | npt.NDArray[np.integer]
) -> RunProfile:
    """The acquisition of one series: its first (de-identified) header and its HU volume."""
    categorical = {
        feature: str(header.get(keyword, "") or "absent").strip() or "absent"
        for feature, keyword in CATEGORICAL_FEATURES.items()
    }
    numeric = {}
    for feature, keyword in NUMERIC_HEADER_FEATURES.items():
        value = header.get(keyword)
        if value not in (None, ""):
            numeric[feature] = float(value)
    numeric[AIR_MEAN], numeric[AIR_STD] = reference_region_hu(hu)
    return RunProfile(
        categorical=categorical,
        numeric={k: round(v, 3) for k, v in numeric.items() if math.isfinite(v)},
    )


def _output_samples(profiles: Sequence[RunProfile]) -> dict[str, list[float]]:
    reported = [p for p in profiles if p.findings is not None]
    return {
        FINDINGS_PER_STUDY: [float(p.findings or 0) for p in reported],
        FINDING_VOLUME: [v for p in reported for v in p.finding_volumes_mm3],
    }


def _not_analyzed_counts(profiles: Sequence[RunProfile]) -> dict[str, int]:
    analyzed = sum(not p.not_analyzed for p in profiles)
    return {"analyzed": analyzed, "not_analyzed": len(profiles) - analyzed}


def baseline_from(model_name: str, profiles: Sequence[RunProfile]) -> Baseline:
    categorical: dict[str, dict[str, int]] = {
        feature: dict(Counter(p.categorical.get(feature, "absent") for p in profiles))
        for feature in CATEGORICAL_FEATURES
    }
    categorical[NOT_ANALYZED_RATE] = _not_analyzed_counts(profiles)
    numeric: dict[str, list[float]] = {}
    for profile in profiles:
        for feature, value in profile.numeric.items():
            numeric.setdefault(feature, []).append(value)
    numeric.update(_output_samples(profiles))
    return Baseline(
        model_name=model_name, studies=len(profiles), categorical=categorical, numeric=numeric
    )


def psi(expected: Mapping[str, int], actual: Mapping[str, int]) -> float:
    """Population stability index between two frequency tables (categories: their union)."""
    categories = set(expected) | set(actual)
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if not total_e or not total_a:
        return 0.0
    value = 0.0
    for category in categories:
        e = max(expected.get(category, 0) / total_e, _PSI_FLOOR)
        a = max(actual.get(category, 0) / total_a, _PSI_FLOOR)
        value += (a - e) * math.log(a / e)
    return value


def ks_statistic(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    e, a = np.sort(np.asarray(expected, float)), np.sort(np.asarray(actual, float))
    points = np.concatenate([e, a])
    gap = np.searchsorted(e, points, side="right") / e.size
    gap -= np.searchsorted(a, points, side="right") / a.size
    return float(np.abs(gap).max())


def ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """The D above which two samples of sizes n and m differ at level `alpha` (asymptotic)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def compare(baseline: Baseline, window: Sequence[RunProfile]) -> list[FeatureDrift]:
    """Each feature's statistic for the recent `window` of runs against the baseline; empty
    when the window is too small to judge."""
    if len(window) < MIN_WINDOW:
        return []
    drifts = []
    current = baseline_from(baseline.model_name, window)
    for feature, expected in baseline.categorical.items():
        kind = DriftKind.OUTPUT if feature == NOT_ANALYZED_RATE else DriftKind.INPUT
        value = psi(expected, current.categorical.get(feature, {}))
        drifts.append(FeatureDrift(feature, kind, "PSI", round(value, 4), PSI_THRESHOLD))
    for feature, samples in baseline.numeric.items():
        recent = current.numeric.get(feature, [])
        if not samples or not recent:
            continue
        kind = (
            DriftKind.OUTPUT if feature in (FINDINGS_PER_STUDY, FINDING_VOLUME) else DriftKind.INPUT
        )
        drifts.append(
            FeatureDrift(
                feature,
                kind,
                "KS",
                round(ks_statistic(samples, recent), 4),
                round(ks_critical(len(samples), len(recent)), 4),
            )
        )
    return drifts


def profile_of(run: RunState) -> RunProfile | None:
    """A run's profile from its state attributes; None while it has neither ended
    not-analyzed nor been preprocessed (nothing to compare yet)."""
    if run.stage is Stage.NOT_ANALYZED:
        return RunProfile(not_analyzed=True)
    stored = run.attributes.get(DRIFT_INPUT_ATTRIBUTE)
    if stored is None:
        return None
    profile = RunProfile.model_validate_json(stored)
    findings = run.attributes.get(FINDINGS_ATTRIBUTE)
    if findings is None:
        return profile
    volumes = json.loads(run.attributes.get(FINDING_VOLUMES_ATTRIBUTE, "[]"))
    return profile.model_copy(
        update={"findings": int(findings), "finding_volumes_mm3": [float(v) for v in volumes]}
    )


@dataclass(frozen=True)
class DriftStatus:
    """One site and model: the recent window against its baseline."""

    site: str
    model_name: str
    window: int
    drifts: list[FeatureDrift]
    has_baseline: bool = True

    @property
    def drifted(self) -> bool:
        return any(d.drifted for d in self.drifts)


def drift_status(store: RunStateStore, now: datetime, window_days: float) -> list[DriftStatus]:
    """Every (site, model) with runs received in the last `window_days`, compared with its
    stored baseline (one without a baseline is listed, and judged never)."""
    since = now - timedelta(days=window_days)
    windows: dict[tuple[str, str], list[RunProfile]] = defaultdict(list)
    for run in store.runs():
        received = run.stage_times.get(Stage.RECEIVED)
        if received is None or received < since or not run.model_name:
            continue
        profile = profile_of(run)
        if profile is not None:
            windows[(run.key.site, run.model_name)].append(profile)
    statuses = []
    for (site, model_name), window in sorted(windows.items()):
        stored = store.baseline(site, model_name)
        if stored is None:
            statuses.append(DriftStatus(site, model_name, len(window), [], has_baseline=False))
            continue
        baseline = Baseline.model_validate_json(stored)
        statuses.append(DriftStatus(site, model_name, len(window), compare(baseline, window)))
    return statuses


def print_status(statuses: Sequence[DriftStatus]) -> None:
    for status in statuses:
        verdict = "DRIFT" if status.drifted else "ok"
        if not status.has_baseline:
            verdict = "no baseline (run edge-forwarder validate, then drift baseline)"
        elif not status.drifts:
            verdict = f"too few runs to judge (< {MIN_WINDOW})"
        print(f"{status.site} / {status.model_name}: {status.window} run(s): {verdict}")
        for d in status.drifts:
            mark = "  DRIFT" if d.drifted else ""
            print(f"    {d.kind.value:<6} {d.feature:<20} {d.test} {d.value:.3f}"
                  f" (threshold {d.threshold:.3f}){mark}")  # fmt: skip


def write_chart(statuses: Sequence[DriftStatus], path: Path) -> None:
    """Each feature's statistic over its threshold, one bar group per site and model: a bar
    above 1 is drift (log scale: a replaced kernel scores ~70, noise ~2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [status for status in statuses if status.drifts]
    features = sorted({d.feature for status in judged for d in status.drifts})
    figure, axes = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(judged))
    for index, status in enumerate(judged):
        scores = {d.feature: d.value / d.threshold for d in status.drifts}
        positions = np.arange(len(features)) + index * width
        values = [max(scores.get(f, 0.0), _CHART_FLOOR) for f in features]
        axes.bar(positions, values, width,
                 label=f"{status.site} / {status.model_name} ({status.window} runs)")  # fmt: skip
    axes.axhline(1.0, color="red", linestyle="--", label="threshold")
    axes.set_xticks(np.arange(len(features)) + 0.4 - width / 2, features, rotation=30, ha="right")
    axes.set_yscale("log")
    axes.set(ylabel="statistic / threshold", title="Drift against the validation baseline")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imaging_ai.drift", description=__doc__)
    parser.add_argument("--table", required=True, help="the run-state table's name")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="drift per site and model now")
    status.add_argument("--window-days", type=float, default=DEFAULT_WINDOW_DAYS)
    status.add_argument("--chart", type=Path, help="also draw the scores as a PNG")
    put = sub.add_parser("baseline", help="store a validation's baseline for a site")
    put.add_argument("baseline_file", type=Path)
    put.add_argument("--site", required=True)
    args = parser.parse_args(argv)
    store = RunStateStore(client("dynamodb"), args.table)
    if args.command == "baseline":
        baseline = Baseline.model_validate_json(args.baseline_file.read_text())
        store.put_baseline(args.site, baseline.model_name, baseline.model_dump_json())
        print(f"baseline of {baseline.model_name} at {args.site}: {baseline.studies} studies")
        return 0
    statuses = drift_status(store, datetime.now(UTC), args.window_days)
    print_status(statuses)
    if args.chart:
        write_chart(statuses, args.chart)
    return 1 if any(s.drifted for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
