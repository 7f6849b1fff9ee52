"""The validation report: the scored studies as figures, an HTML page and a PDF.

It names studies by their original Study Instance UID, so it is written on the edge only.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a forwarder; set before pyplot loads a backend
import matplotlib.pyplot as plt
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from edge_forwarder.validation.runner import ShadowResult
from edge_forwarder.validation.scoring import (
    STATISTICS,
    BlandAltman,
    GroupFigures,
    Outcome,
    StudyScore,
    bland_altman,
    bootstrap_interval,
    breakdown,
    by_scanner,
    by_slice_thickness,
    dice,
    froc,
    match,
)
from edge_forwarder.validation.truth import (
    AnnotatedStudy,
    lesions_from_mask,
    segmentation_mask,
)
from imaging_ai.model_card import ModelCard

HTML_NAME = "validation-report.html"
PDF_NAME = "validation-report.pdf"


def score_studies(
    studies: Sequence[AnnotatedStudy], results: Sequence[ShadowResult]
) -> list[StudyScore]:
    """Each annotated study against what the pipeline made of it (a study the pipeline never
    reported on counts as failed, not as silently absent)."""
    by_study = {result.study_instance_uid: result for result in results}
    scores = []
    for study in studies:
        result = by_study.get(study.study_instance_uid)
        score = StudyScore(
            study_instance_uid=study.study_instance_uid,
            scanner_model=study.scanner_model,
            slice_thickness_mm=study.slice_thickness_mm,
            outcome=result.outcome if result else Outcome.FAILED,
            reason=result.reason if result else "no result from the pipeline",
            truth=list(study.lesions),
        )
        if result is not None and result.segmentation is not None:
            predicted = segmentation_mask(result.segmentation, study.sop_instance_uids)
            findings = lesions_from_mask(predicted, study.geometry)
            score.findings = findings
            score.pairs, score.missed, score.false_positives = match(study.lesions, findings)
            if study.truth_mask is not None:
                score.dice = dice(study.truth_mask, predicted)
        scores.append(score)
    return scores


@dataclass
class ValidationReport:
    """Everything the report shows, computed once (the HTML and the PDF print the same)."""

    model_name: str
    model_version: str
    weights_sha256: str
    created_at: datetime
    scores: list[StudyScore]
    headline: dict[str, float | None] = field(init=False)
    intervals: dict[str, tuple[float, float] | None] = field(init=False)
    froc_points: list[tuple[float, float, float]] = field(init=False)
    volumes: BlandAltman | None = field(init=False)
    per_scanner: list[GroupFigures] = field(init=False)
    per_thickness: list[GroupFigures] = field(init=False)

    def __post_init__(self) -> None:
        self.headline = {name: stat(self.scores) for name, stat in STATISTICS.items()}
        self.intervals = {
            name: bootstrap_interval(self.scores, stat) for name, stat in STATISTICS.items()
        }
        self.froc_points = froc(self.scores)
        self.volumes = bland_altman(self.scores)
        self.per_scanner = breakdown(self.scores, by_scanner)
        self.per_thickness = breakdown(self.scores, by_slice_thickness)

    @classmethod
    def of(cls, card: ModelCard, scores: list[StudyScore]) -> ValidationReport:
        return cls(card.name, card.version, card.weights_sha256, datetime.now(UTC), scores)

    def count(self, outcome: Outcome) -> int:
        return sum(score.outcome is outcome for score in self.scores)

    def summary(self) -> dict[str, object]:
        """The headline figures as JSON-ready values (what the command prints)."""
        return {
            "model": f"{self.model_name} {self.model_version}",
            "studies": len(self.scores),
            **{outcome.name.lower(): self.count(outcome) for outcome in Outcome},
            **self.headline,
            **{f"{name}_ci95": interval for name, interval in self.intervals.items()},
        }


def _figure_froc(report: ValidationReport) -> Figure:
    figure, axes = plt.subplots(figsize=(5, 3.6))
    if report.froc_points:
        fps = [p[1] for p in report.froc_points]
        sens = [p[2] for p in report.froc_points]
        axes.step(fps, sens, where="post", marker="o")
    axes.set(xlabel="false positives per study", ylabel="sensitivity", ylim=(0, 1.05))
    axes.set_title("FROC (sweeping the minimum finding volume)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _figure_bland_altman(report: ValidationReport) -> Figure:
    figure, axes = plt.subplots(figsize=(5, 3.6))
    volumes = report.volumes
    if volumes is not None:
        axes.scatter(volumes.means, volumes.differences)
        for value, style in ((volumes.bias, "-"), (volumes.lower, "--"), (volumes.upper, "--")):
            axes.axhline(value, linestyle=style, color="grey")
    axes.set(xlabel="mean of found and true volume (mm³)", ylabel="found - true (mm³)")
    axes.set_title("Bland-Altman: lesion volume")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0]:.3f} - {value[1]:.3f}"


def _lines(report: ValidationReport) -> list[tuple[str, list[list[str]]]]:
    """The report's tables, as (title, rows with a header row): one source for both formats."""
    headline = [["figure", "value", "95 % CI (bootstrap over studies)"]] + [
        [name.replace("_", " "), _number(report.headline[name]), _interval(report.intervals[name])]
        for name in STATISTICS
    ]
    identity = [
        ["model", "version", "weights SHA-256", "date (UTC)"],
        [
            report.model_name,
            report.model_version,
            report.weights_sha256,
            report.created_at.isoformat(timespec="seconds"),
        ],
    ]
    outcomes = [["outcome", "studies"]] + [
        [outcome.value, str(report.count(outcome))] for outcome in Outcome
    ]

    def groups(title: str, rows: list[GroupFigures]) -> list[list[str]]:
        return [[title, "studies", "lesions", "sensitivity", "FP/study", "mean Dice"]] + [
            [
                g.group,
                str(g.studies),
                str(g.lesions),
                _number(g.sensitivity),
                _number(g.false_positives_per_study),
                _number(g.mean_dice),
            ]
            for g in rows
        ]

    volumes = report.volumes
    agreement = [["bias (mm³)", "lower limit", "upper limit", "pairs"]]
    if volumes is not None:
        agreement.append(
            [
                _number(volumes.bias, 1),
                _number(volumes.lower, 1),
                _number(volumes.upper, 1),
                str(len(volumes.means)),
            ]
        )
    operating_points = [["minimum finding volume (mm3)", "FP/study", "sensitivity"]] + [
        [_number(floor, 1), _number(fps), _number(sens)] for floor, fps, sens in report.froc_points
    ]
    not_analyzed = [["study", "outcome", "reason"]] + [
        [s.study_instance_uid, s.outcome.value, s.reason]
        for s in report.scores
        if s.outcome is not Outcome.ANALYZED
    ]
    studies = [["study", "scanner", "thickness", "lesions", "found", "FP", "Dice"]] + [
        [
            s.study_instance_uid,
            s.scanner_model,
            f"{s.slice_thickness_mm:g}",
            str(len(s.truth)),
            str(len(s.pairs)),
            str(len(s.false_positives)),
            _number(s.dice),
        ]
        for s in report.scores
        if s.outcome is Outcome.ANALYZED
    ]
    return [
        ("Model", identity),
        ("Detection and segmentation", headline),
        ("Outcomes", outcomes),
        ("FROC operating points", operating_points),
        ("Volume agreement (Bland-Altman, 95 % limits)", agreement),
        ("Per scanner model", groups("scanner model", report.per_scanner)),
        ("Per slice thickness", groups("slice thickness", report.per_thickness)),
        ("Not analyzed or failed, with reasons", not_analyzed),
        ("Per study", studies),
    ]


def write_html(report: ValidationReport, path: Path) -> None:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Model validation report</title>",
        "<style>body{font-family:sans-serif;max-width:60em}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}</style>",
        f"<h1>Validation of {html.escape(report.model_name)} {html.escape(report.model_version)}"
        "</h1><p>On-prem only: this report names the site's studies.</p>",
    ]
    for title, rows in _lines(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
        for row in rows[1:]:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    for make in (_figure_froc, _figure_bland_altman):
        figure = make(report)
        parts.append(f"<img alt='' src='data:image/png;base64,{_png(figure)}'>")
        plt.close(figure)
    path.write_text("\n".join(parts), encoding="utf-8")


_LINE = 0.016  # of an A4 page, at 6.5 pt monospace
_TOP, _BOTTOM = 0.96, 0.04


def write_pdf(report: ValidationReport, path: Path) -> None:
    """The tables as monospace text flowing over A4 pages, then the two figures."""
    with PdfPages(path) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))
        page.text(0.05, _TOP, f"Validation of {report.model_name} {report.model_version}",
                  fontsize=14, weight="bold")  # fmt: skip
        y = _TOP - 0.04
        for title, rows in _lines(report):
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            lines = [
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
            ]
            for index, line in enumerate([title, *lines]):
                if y < _BOTTOM:  # next page
                    pdf.savefig(page)
                    plt.close(page)
                    page, y = plt.figure(figsize=(8.27, 11.69)), _TOP
                if index == 0:
                    page.text(0.05, y, line, fontsize=11, weight="bold")
                    y -= 0.025
                else:
                    page.text(0.05, y, line, fontsize=6.5, family="monospace")
                    y -= _LINE
            y -= 0.02
        pdf.savefig(page)
        plt.close(page)
        for make in (_figure_froc, _figure_bland_altman):
            figure = make(report)
            pdf.savefig(figure)
            plt.close(figure)
        info = pdf.infodict()
        info["Title"] = f"Validation of {report.model_name} {report.model_version}"
        info["CreationDate"] = report.created_at


def write_report(report: ValidationReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    html_path, pdf_path = out_dir / HTML_NAME, out_dir / PDF_NAME
    write_html(report, html_path)
    write_pdf(report, pdf_path)
    return html_path, pdf_path
