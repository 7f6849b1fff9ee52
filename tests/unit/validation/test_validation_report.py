"""The validation report's figures against an independent computation on known truth."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_forwarder.validation.command import BASELINE_NAME, SUMMARY_NAME, validate
from edge_forwarder.validation.report import HTML_NAME, PDF_NAME, ValidationReport
from edge_forwarder.validation.runner import ShadowResult
from edge_forwarder.validation.scoring import Outcome
from edge_forwarder.validation.truth import AnnotatedStudy
from imaging_ai.drift import Baseline
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import (
    ScannerProfile,
    SyntheticStudy,
    write_ct_study,
    write_truth_segmentation,
)

SHAPE = (24, 72, 72)
NOT_ANALYZED_REASON = "slice thickness 6 mm outside 0.5-3 mm"


@dataclass
class Case:
    study: SyntheticStudy
    predicted: np.ndarray | None  # None: not analyzed


def _blob(shape: tuple[int, int, int], centre: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    k, i, j = centre
    mask[k - 1 : k + 2, i - 2 : i + 3, j - 2 : j + 3] = True
    return mask


@dataclass
class KnownOutcomes:
    """A stand-in at the pipeline seam: what a model said, chosen by the test."""

    cases: dict[str, Case]
    folder: Path

    def run(self, studies: Sequence[AnnotatedStudy]) -> list[ShadowResult]:
        results = []
        for study in studies:
            case = self.cases[study.study_instance_uid]
            if case.predicted is None:
                results.append(
                    ShadowResult(
                        study.study_instance_uid, Outcome.NOT_ANALYZED, NOT_ANALYZED_REASON
                    )
                )
                continue
            path = write_truth_segmentation(
                case.study, self.folder / f"{study.study_instance_uid}.dcm", case.predicted
            )
            results.append(ShadowResult(study.study_instance_uid, Outcome.ANALYZED, "", path))
        return results


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[ValidationReport, dict, Path]:
    root = tmp_path_factory.mktemp("validation")
    studies_dir = root / "studies"
    scanner_a = ScannerProfile(model_name="SCANNER A")
    scanner_b = ScannerProfile(manufacturer="SIEMENS", model_name="SCANNER B")
    # Given three annotated studies on two scanners and two slice thicknesses: truth as SEG
    # for two, as a CSV of points for the third
    one = write_ct_study(
        studies_dir / "one",
        seed=11,
        shape=SHAPE,
        spacing_mm=(4.0, 4.5, 4.5),
        nodule_count=2,
        scanner=scanner_a,
    )
    two = write_ct_study(
        studies_dir / "two",
        seed=12,
        shape=SHAPE,
        spacing_mm=(5.0, 4.5, 4.5),
        nodule_count=2,
        scanner=scanner_b,
    )
    three = write_ct_study(
        studies_dir / "three",
        seed=13,
        shape=SHAPE,
        spacing_mm=(6.0, 4.5, 4.5),
        nodule_count=1,
        scanner=scanner_b,
    )
    for study in (one, two):
        write_truth_segmentation(study, studies_dir / "truth" / f"{study.study_instance_uid}.dcm")
    with (studies_dir / "truth.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_instance_uid", "x_mm", "y_mm", "z_mm", "diameter_mm"])
        nodules = zip(three.phantom.truth_findings(), three.phantom.nodules, strict=True)
        for finding, nodule in nodules:
            writer.writerow([three.study_instance_uid, *finding.centroid_mm, nodule.diameter_mm])
    # and a model that finds both nodules of study one plus one false positive, finds only
    # the first nodule of study two (dilated by a voxel), and does not analyze study three
    first = two.phantom.nodule_mask == 1
    grown = first | np.roll(first, 1, axis=2)
    outcomes = KnownOutcomes(
        {
            one.study_instance_uid: Case(
                one, (one.phantom.nodule_mask > 0) | _blob(SHAPE, (3, 36, 8))
            ),
            two.study_instance_uid: Case(two, grown),
            three.study_instance_uid: Case(three, None),
        },
        root / "predicted",
    )
    # When the site validates the model
    out = root / "report"
    report = validate(studies_dir, DEMO_MODEL_DIR, out, pipeline=outcomes)
    return report, {"one": one, "two": two, "grown": grown}, out


def test_detection_figures_equal_an_independent_count(validated) -> None:
    report, cases, _ = validated
    # Then sensitivity and FP/study count 3 of 4 nodules and 1 FP over 2 analyzed studies
    truth_nodules = len(cases["one"].phantom.nodules) + len(cases["two"].phantom.nodules)
    assert truth_nodules == 4
    assert report.headline["sensitivity"] == pytest.approx(3 / 4)
    assert report.headline["false_positives_per_study"] == pytest.approx(1 / 2)
    assert report.count(Outcome.NOT_ANALYZED) == 1
    low, high = report.intervals["sensitivity"]
    assert 0.0 <= low <= 3 / 4 <= high <= 1.0


def test_dice_and_volume_agreement_equal_numpy(validated) -> None:
    report, cases, _ = validated
    one, two, grown = cases["one"], cases["two"], cases["grown"]
    truth_one = one.phantom.nodule_mask > 0
    predicted_one = truth_one | _blob(SHAPE, (3, 36, 8))
    truth_two = two.phantom.nodule_mask > 0
    expected = [
        2 * (truth_one & predicted_one).sum() / (truth_one.sum() + predicted_one.sum()),
        2 * (truth_two & grown).sum() / (truth_two.sum() + grown.sum()),
    ]
    # Then mean Dice is the mean of the two studies' Dice, computed here with numpy
    assert report.headline["mean_dice"] == pytest.approx(np.mean(expected))
    # and the Bland-Altman bias is the mean found-minus-true volume of the detected nodules
    voxel_one = float(np.prod(one.phantom.spacing_mm))
    voxel_two = float(np.prod(two.phantom.spacing_mm))
    differences = [0.0, 0.0, (grown.sum() - (two.phantom.nodule_mask == 1).sum()) * voxel_two]
    assert voxel_one > 0
    assert report.volumes is not None
    assert report.volumes.bias == pytest.approx(np.mean(differences))
    assert sorted(report.volumes.differences) == pytest.approx(sorted(differences))


def test_breakdowns_froc_and_files(validated) -> None:
    report, _, out = validated
    # Then each scanner model and slice thickness gets its own row
    assert [(g.group, g.lesions, g.sensitivity) for g in report.per_scanner] == [
        ("SCANNER A", 2, 1.0),
        ("SCANNER B", 2, 0.5),
    ]
    assert [g.group for g in report.per_thickness] == ["4 mm", "5 mm"]
    # and the FROC starts at the full operating point and ends with no finding kept
    assert report.froc_points[0][1:] == pytest.approx((1 / 2, 3 / 4))
    assert report.froc_points[-1][1:] == (0.0, 0.0)
    # and the HTML, the PDF and the summary are written, naming model, hash and reason
    page = (out / HTML_NAME).read_text()
    for text in (report.model_name, report.weights_sha256, NOT_ANALYZED_REASON, "FROC"):
        assert text in page
    assert (out / PDF_NAME).read_bytes().startswith(b"%PDF")
    assert json.loads((out / SUMMARY_NAME).read_text())["not_analyzed"] == 1


def test_the_drift_baseline_holds_distributions_and_no_identifier(validated) -> None:
    _, cases, out = validated
    text = (out / BASELINE_NAME).read_text()
    baseline = Baseline.model_validate_json(text)
    # Then the baseline counts both scanners, the analyzed studies' findings (3 and 1) and
    # the one not-analyzed study, and names no study
    assert baseline.categorical["scanner_model"] == {"SCANNER A": 1, "SCANNER B": 1, "absent": 1}
    assert sorted(baseline.numeric["findings_per_study"]) == [1.0, 3.0]
    assert baseline.categorical["not_analyzed_rate"] == {"analyzed": 2, "not_analyzed": 1}
    for case in (cases["one"], cases["two"]):
        assert case.study_instance_uid not in text
        assert case.patient.patient_id not in text
