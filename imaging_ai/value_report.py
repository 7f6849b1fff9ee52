"""What the pipeline did for a site this month, from the run-state table: studies per day,
turnaround per stage (p50 / p95) per site and model, and failed or not-analyzed runs with
their reasons. Written as a CSV plus a PNG chart; the operations dashboard shows the same.

Run: python -m imaging_ai.value_report --table imaging-ai-state --month 2026-12 --out report/
(AWS_ENDPOINT_URL points it at the local moto server or LocalStack, as every client here.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

from imaging_ai.aws import client
from imaging_ai.contracts import Stage
from imaging_ai.state import RunState, RunStateStore

CSV_NAME = "value-report.csv"
PNG_NAME = "value-report.png"
# The turnaround of a whole run: RECEIVED (manifest in S3) to DELIVERED (the site told).
TOTAL = "TOTAL"
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class Turnaround:
    runs: int
    p50_s: float
    p95_s: float


@dataclass
class MonthlyFigures:
    """The month's figures, keyed by (site, model)."""

    month: str  # YYYY-MM
    studies_per_day: dict[tuple[str, str], Counter[date]] = field(default_factory=dict)
    turnaround: dict[tuple[str, str], dict[str, Turnaround]] = field(default_factory=dict)
    ended: dict[tuple[str, str], Counter[tuple[Stage, str]]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(figure, site, model, key, value): one long table, easy to pivot in a spreadsheet."""
        rows = []
        for (site, model), days in sorted(self.studies_per_day.items()):
            for day, count in sorted(days.items()):
                rows.append(("studies_per_day", site, model, day.isoformat(), str(count)))
        for (site, model), stages in sorted(self.turnaround.items()):
            for stage, figures in stages.items():
                rows.append(("turnaround_runs", site, model, stage, str(figures.runs)))
                rows.append(("turnaround_p50_s", site, model, stage, f"{figures.p50_s:.3f}"))
                rows.append(("turnaround_p95_s", site, model, stage, f"{figures.p95_s:.3f}"))
        for (site, model), reasons in sorted(self.ended.items()):
            for (stage, reason), count in sorted(reasons.items()):
                rows.append((stage.value.lower(), site, model, reason, str(count)))
        return rows


def _received(run: RunState) -> datetime | None:
    return run.stage_times.get(Stage.RECEIVED) or min(run.stage_times.values(), default=None)


def _percentiles(values: Sequence[float]) -> Turnaround:
    p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95])
    return Turnaround(runs=len(values), p50_s=float(p50), p95_s=float(p95))


def monthly_figures(runs: Iterable[RunState], month: str) -> MonthlyFigures:
    """The figures of the runs received in `month` (YYYY-MM, UTC)."""
    figures = MonthlyFigures(month=month)
    studies: dict[tuple[str, str], dict[date, set[str]]] = defaultdict(lambda: defaultdict(set))
    seconds: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ended: dict[tuple[str, str], Counter[tuple[Stage, str]]] = defaultdict(Counter)
    for run in runs:
        received = _received(run)
        if received is None or received.astimezone(UTC).strftime("%Y-%m") != month:
            continue
        group = (run.key.site, run.model_name or UNKNOWN_MODEL)
        studies[group][received.astimezone(UTC).date()].add(run.key.pseudo_study_uid)
        for stage, latency in run.stage_latencies_s().items():
            if stage in (Stage.FAILED, Stage.NOT_ANALYZED):
                continue  # how long a run took to fail is not a stage's turnaround
            seconds[group][stage.value].append(latency)
        delivered = run.stage_times.get(Stage.DELIVERED)
        if delivered is not None:
            seconds[group][TOTAL].append((delivered - received).total_seconds())
        if run.stage in (Stage.FAILED, Stage.NOT_ANALYZED):
            ended[group][(run.stage, run.reason or "no reason recorded")] += 1
    figures.studies_per_day = {
        group: Counter({day: len(uids) for day, uids in days.items()})
        for group, days in studies.items()
    }
    order = [stage.value for stage in Stage] + [TOTAL]
    figures.turnaround = {
        group: {stage: _percentiles(stages[stage]) for stage in order if stages.get(stage)}
        for group, stages in seconds.items()
    }
    figures.ended = dict(ended)
    return figures


def write_csv(figures: MonthlyFigures, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["figure", "site", "model", "key", "value"])
        writer.writerows(figures.rows())


def write_chart(figures: MonthlyFigures, path: Path) -> None:
    """Studies per day (left) and turnaround p50 / p95 per stage (right), per site and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (per_day, per_stage) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (site, model), days in sorted(figures.studies_per_day.items()):
        ordered = sorted(days.items())
        per_day.plot([d for d, _ in ordered], [n for _, n in ordered], marker="o",
                     label=f"{site} / {model}")  # fmt: skip
    per_day.set(title=f"Studies per day, {figures.month}", ylabel="studies")
    per_day.tick_params(axis="x", labelrotation=45)
    groups = sorted(figures.turnaround.items())
    width = 0.8 / max(1, 2 * len(groups))
    stages = [s for s in [stage.value for stage in Stage] + [TOTAL]
              if any(s in stages for _, stages in groups)]  # fmt: skip
    for index, ((site, model), turnaround) in enumerate(groups):
        for offset, (name, pick) in enumerate((("p50", 0), ("p95", 1))):
            values = [
                (turnaround[s].p50_s, turnaround[s].p95_s)[pick] if s in turnaround else 0.0
                for s in stages
            ]
            positions = np.arange(len(stages)) + (2 * index + offset) * width
            per_stage.bar(positions, values, width, label=f"{site} / {model} {name}")
    per_stage.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, stages, rotation=30)
    per_stage.set(title="Turnaround to each stage", ylabel="seconds")
    for axes in (per_day, per_stage):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_value_report(runs: Iterable[RunState], month: str, out_dir: Path) -> MonthlyFigures:
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = monthly_figures(runs, month)
    write_csv(figures, out_dir / CSV_NAME)
    write_chart(figures, out_dir / PNG_NAME)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--table", required=True, help="the run-state table's name")
    parser.add_argument("--month", default=datetime.now(UTC).strftime("%Y-%m"))
    parser.add_argument("--out", type=Path, default=Path("value-report"))
    args = parser.parse_args(argv)
    runs = RunStateStore(client("dynamodb"), args.table).runs()
    figures = write_value_report(runs, args.month, args.out)
    for row in figures.rows():
        print(",".join(row))
    print(f"wrote {args.out / CSV_NAME} and {args.out / PNG_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
