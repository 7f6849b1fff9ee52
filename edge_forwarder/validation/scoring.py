"""Match the model's findings to the truth and score them: detection, FROC, Dice, volumes.

Matching rule (the one `imaging_ai.inference.evaluation` scores phantoms with): a finding
detects a true lesion when its centroid lies within the lesion's radius; each lesion takes
the nearest unmatched finding, largest lesions first. The demo model emits no per-finding
score, so the FROC sweeps the one operating knob a site has: the minimum finding volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from edge_forwarder.validation.truth import Lesion

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 20260914  # fixed: the same studies always give the same intervals
CONFIDENCE = 0.95


class Outcome(StrEnum):
    ANALYZED = "analyzed"
    NOT_ANALYZED = "not analyzed"
    FAILED = "failed"


@dataclass(frozen=True)
class Pair:
    """A true lesion and the finding that detected it."""

    truth: Lesion
    finding: Lesion


@dataclass
class StudyScore:
    """One study's outcome against its truth."""

    study_instance_uid: str
    scanner_model: str
    slice_thickness_mm: float
    outcome: Outcome
    reason: str = ""
    truth: list[Lesion] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    missed: list[Lesion] = field(default_factory=list)
    false_positives: list[Lesion] = field(default_factory=list)
    dice: float | None = None  # None: no truth mask, or neither mask holds a voxel
    findings: list[Lesion] = field(default_factory=list)  # everything the model found


def match(
    truth: Sequence[Lesion], findings: Sequence[Lesion]
) -> tuple[list[Pair], list[Lesion], list[Lesion]]:
    """(pairs, missed lesions, false-positive findings) under the module's matching rule."""
    unmatched = list(findings)
    pairs, missed = [], []
    for lesion in sorted(truth, key=lambda item: -item.volume_mm3):
        distances = [
            float(np.linalg.norm(np.subtract(f.centroid_mm, lesion.centroid_mm))) for f in unmatched
        ]
        if distances and min(distances) <= lesion.diameter_mm / 2:
            pairs.append(Pair(lesion, unmatched.pop(int(np.argmin(distances)))))
        else:
            missed.append(lesion)
    return pairs, missed, unmatched


def dice(truth: npt.NDArray[np.bool_], predicted: npt.NDArray[np.bool_]) -> float | None:
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(truth, predicted).sum()) / total


def sensitivity(scores: Sequence[StudyScore]) -> float | None:
    analyzed = _analyzed(scores)
    lesions = sum(len(s.truth) for s in analyzed)
    return sum(len(s.pairs) for s in analyzed) / lesions if lesions else None


def false_positives_per_study(scores: Sequence[StudyScore]) -> float | None:
    analyzed = _analyzed(scores)
    return sum(len(s.false_positives) for s in analyzed) / len(analyzed) if analyzed else None


def mean_dice(scores: Sequence[StudyScore]) -> float | None:
    values = [s.dice for s in _analyzed(scores) if s.dice is not None]
    return float(np.mean(values)) if values else None


def froc(scores: Sequence[StudyScore]) -> list[tuple[float, float, float]]:
    """(minimum finding volume mm3, FP per study, sensitivity), from keeping every finding to
    keeping none: a finding below the floor is dropped, and a lesion it detected is missed."""
    analyzed = _analyzed(scores)
    lesions = sum(len(s.truth) for s in analyzed)
    if not analyzed or not lesions:
        return []
    volumes = sorted(
        {p.finding.volume_mm3 for s in analyzed for p in s.pairs}
        | {f.volume_mm3 for s in analyzed for f in s.false_positives}
    )
    points = []
    for floor in [0.0, *[np.nextafter(v, np.inf) for v in volumes]]:
        detected = sum(p.finding.volume_mm3 >= floor for s in analyzed for p in s.pairs)
        fps = sum(f.volume_mm3 >= floor for s in analyzed for f in s.false_positives)
        points.append((float(floor), fps / len(analyzed), detected / lesions))
    return points


@dataclass(frozen=True)
class BlandAltman:
    """Found minus true volume (mm3) over detected lesions: bias and 95 % limits of agreement."""

    means: list[float]
    differences: list[float]
    bias: float
    lower: float
    upper: float


def bland_altman(scores: Sequence[StudyScore]) -> BlandAltman | None:
    pairs = [p for s in _analyzed(scores) for p in s.pairs]
    if not pairs:
        return None
    found = np.array([p.finding.volume_mm3 for p in pairs])
    true = np.array([p.truth.volume_mm3 for p in pairs])
    differences = found - true
    bias = float(differences.mean())
    spread = 1.96 * float(differences.std(ddof=1)) if len(pairs) > 1 else 0.0
    return BlandAltman(
        means=((found + true) / 2).tolist(),
        differences=differences.tolist(),
        bias=bias,
        lower=bias - spread,
        upper=bias + spread,
    )


Statistic = Callable[[Sequence[StudyScore]], float | None]
STATISTICS: dict[str, Statistic] = {
    "sensitivity": sensitivity,
    "false_positives_per_study": false_positives_per_study,
    "mean_dice": mean_dice,
}


def bootstrap_interval(
    scores: Sequence[StudyScore],
    statistic: Statistic,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile interval of `statistic` over studies drawn with replacement (lesions in a
    study are not independent, so the study is the unit resampled)."""
    analyzed = _analyzed(scores)
    if not analyzed:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        drawn = [analyzed[i] for i in rng.integers(0, len(analyzed), len(analyzed))]
        value = statistic(drawn)
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class GroupFigures:
    group: str
    studies: int
    lesions: int
    sensitivity: float | None
    false_positives_per_study: float | None
    mean_dice: float | None


def breakdown(scores: Sequence[StudyScore], key: Callable[[StudyScore], str]) -> list[GroupFigures]:
    """The headline figures per group of analyzed studies (scanner model, slice thickness)."""
    groups: dict[str, list[StudyScore]] = {}
    for score in _analyzed(scores):
        groups.setdefault(key(score), []).append(score)
    return [
        GroupFigures(
            group=name,
            studies=len(members),
            lesions=sum(len(s.truth) for s in members),
            sensitivity=sensitivity(members),
            false_positives_per_study=false_positives_per_study(members),
            mean_dice=mean_dice(members),
        )
        for name, members in sorted(groups.items())
    ]


def by_scanner(score: StudyScore) -> str:
    return score.scanner_model


def by_slice_thickness(score: StudyScore) -> str:
    return f"{score.slice_thickness_mm:g} mm"


def _analyzed(scores: Sequence[StudyScore]) -> list[StudyScore]:
    return [s for s in scores if s.outcome is Outcome.ANALYZED]
