"""Evaluate a model directory on held-out synthetic studies: sensitivity, FP/study, volume error.

Run: python -m imaging_ai.inference.evaluation \
     --model-dir containers/inference/models/lung-nodule-demo/1.0.0 --seeds 1000-1019
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging_ai.errors import ContractError
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from imaging_ai.inference.training import TRAINING_SEED_BASE
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import Finding, ModelInputMeta
from imaging_ai.synthetic import Phantom, make_chest_phantom
from imaging_ai.volume import resample_normalize

DEMO_SHAPE = (200, 512, 512)
DEMO_SPACING_MM = (1.5, 0.7, 0.7)
DETECTABLE_DIAMETER_MM = 6.0
TARGETS = {"sensitivity": 0.95, "false_positives_per_study": 0.5, "median_volume_error": 0.15}


def model_input_for(
    phantom: Phantom, card: ModelCard, seed: int = 0
) -> tuple[npt.NDArray[np.float32], ModelInputMeta]:
    """What preprocessing hands the model: the phantom through the Lambda's own resample and
    intensity-window normalization (`imaging_ai.volume.resample_normalize`)."""
    source = phantom.geometry()
    image, model = resample_normalize(
        phantom.hu.astype(np.float32), source, card.input_spacing_mm, card.intensity_window_hu
    )
    model_name = card.name
    meta = ModelInputMeta(
        site="eval-site",
        pseudo_study_uid=f"2.25.{seed + 1}",
        pseudo_series_uid=f"2.25.{seed + 1}.1",
        run_id=f"eval-{seed}",
        model_name=model_name,
        source_geometry=source,
        model_geometry=model,
        sop_instance_uids=[f"2.25.{seed + 1}.1.{k + 1}" for k in range(source.shape[0])],
    )
    return image, meta


@dataclass
class StudyResult:
    seed: int
    nodules: int
    detected: int
    false_positives: int
    volume_errors: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _patient_centre(
    phantom: Phantom, centre_voxel: tuple[int, int, int]
) -> npt.NDArray[np.float64]:
    # Default orientation: patient (x, y, z) = (column, row, slice) positions.
    k, i, j = centre_voxel
    dz, dy, dx = phantom.spacing_mm
    oz, oy, ox = phantom.origin_mm
    return np.array([ox + j * dx, oy + i * dy, oz + k * dz])


def score_study(seed: int, phantom: Phantom, findings: list[Finding]) -> StudyResult:
    """Match each true nodule to the nearest unmatched finding whose centroid lies inside it."""
    unmatched = list(findings)
    result = StudyResult(seed=seed, nodules=0, detected=0, false_positives=0)
    for nodule in phantom.nodules:
        if nodule.diameter_mm < DETECTABLE_DIAMETER_MM:
            continue
        result.nodules += 1
        centre = _patient_centre(phantom, nodule.center_voxel)
        distances = [float(np.linalg.norm(np.subtract(f.centroid_mm, centre))) for f in unmatched]
        if distances and min(distances) <= nodule.diameter_mm / 2:
            match = unmatched.pop(int(np.argmin(distances)))
            result.detected += 1
            result.volume_errors.append(
                abs(match.volume_mm3 - nodule.volume_mm3) / nodule.volume_mm3
            )
    result.false_positives = len(unmatched)
    return result


def evaluate(
    predictor: Predictor,
    seeds: list[int],
    shape: tuple[int, int, int] = DEMO_SHAPE,
    spacing_mm: tuple[float, float, float] = DEMO_SPACING_MM,
    nodule_count: int | None = None,
) -> tuple[dict[str, float], list[StudyResult]]:
    if any(seed >= TRAINING_SEED_BASE for seed in seeds):
        raise ContractError(f"seeds from {TRAINING_SEED_BASE} up are training seeds")
    results = []
    for seed in seeds:
        phantom = make_chest_phantom(
            seed, shape=shape, spacing_mm=spacing_mm, nodule_count=nodule_count
        )
        image, meta = model_input_for(phantom, predictor.card, seed)
        started = time.perf_counter()
        _, output = predictor.predict(image, meta)
        result = score_study(seed, phantom, output.findings)
        result.seconds = time.perf_counter() - started
        results.append(result)
    nodules = sum(r.nodules for r in results)
    errors = [e for r in results for e in r.volume_errors]
    summary = {
        "studies": float(len(results)),
        "nodules": float(nodules),
        "sensitivity": sum(r.detected for r in results) / nodules if nodules else 0.0,
        "false_positives_per_study": sum(r.false_positives for r in results) / len(results),
        "median_volume_error": statistics.median(errors) if errors else 1.0,
        "seconds_per_study": statistics.mean(r.seconds for r in results),
    }
    return summary, results


def meets_targets(summary: dict[str, float]) -> bool:
    return (
        summary["sensitivity"] >= TARGETS["sensitivity"]
        and summary["false_positives_per_study"] <= TARGETS["false_positives_per_study"]
        and summary["median_volume_error"] <= TARGETS["median_volume_error"]
    )


def parse_seeds(text: str) -> list[int]:
    """ "1000-1019" or "1000,1001,1005"."""
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            seeds.extend(range(int(low), int(high) + 1))
        else:
            seeds.append(int(part))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1000-1019"))
    parser.add_argument("--shape", type=int, nargs=3, default=DEMO_SHAPE)
    parser.add_argument("--spacing", type=float, nargs=3, default=DEMO_SPACING_MM)
    args = parser.parse_args(argv)
    predictor = Predictor(args.model_dir, PredictorSettings())
    summary, results = evaluate(predictor, args.seeds, tuple(args.shape), tuple(args.spacing))
    print("DEMO MODEL, NOT FOR CLINICAL USE: figures are on synthetic phantoms only.")
    print(f"{'seed':>6} {'nodules':>7} {'found':>5} {'FP':>3} {'vol err':>8} {'s':>6}")
    for r in results:
        error = f"{statistics.median(r.volume_errors):.1%}" if r.volume_errors else "-"
        counts = f"{r.seed:>6} {r.nodules:>7} {r.detected:>5} {r.false_positives:>3}"
        print(f"{counts} {error:>8} {r.seconds:>6.1f}")
    print(
        f"sensitivity (>= {DETECTABLE_DIAMETER_MM:g} mm) {summary['sensitivity']:.3f} "
        f"(target >= {TARGETS['sensitivity']}), "
        f"FP/study {summary['false_positives_per_study']:.2f} "
        f"(target <= {TARGETS['false_positives_per_study']}), median abs volume error "
        f"{summary['median_volume_error']:.1%} (target <= {TARGETS['median_volume_error']:.0%})"
    )
    print(json.dumps({**summary, "meets_targets": meets_targets(summary)}))
    return 0 if meets_targets(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
