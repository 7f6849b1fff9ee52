"""Drift against the validation baseline: a changed phantom "scanner" alarms, the same does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging_ai.drift import (
    AIR_MEAN,
    AIR_STD,
    RunProfile,
    baseline_from,
    compare,
    input_profile,
    ks_critical,
    ks_statistic,
    psi,
)
from imaging_ai.synthetic import FakePatient, ScannerProfile, iter_ct_slices, make_chest_phantom

SHAPE = (12, 64, 64)
VALIDATED = ScannerProfile()


def _profile(seed: int, scanner: ScannerProfile, thickness_mm: float = 1.5) -> RunProfile:
    phantom = make_chest_phantom(seed, shape=SHAPE, spacing_mm=(thickness_mm, 5.6, 5.6),
                                 nodule_count=0, noise_hu=scanner.noise_hu)  # fmt: skip
    header = next(iter_ct_slices(phantom, FakePatient(), "2.25.1", "2.25.2", "2.25.3",
                                 scanner=scanner))  # fmt: skip
    return input_profile(header, phantom.hu)


@pytest.fixture(scope="module")
def baseline():
    # Given the baseline of a validation on 12 studies from the validated scanner
    return baseline_from("lung", [_profile(seed, VALIDATED) for seed in range(100, 112)])


def _drifted(baseline, window: list[RunProfile]) -> set[str]:
    return {d.feature for d in compare(baseline, window) if d.drifted}


def test_unchanged_scanner_raises_no_drift(baseline) -> None:
    # When eight new studies come from the same scanner
    window = [_profile(seed, VALIDATED) for seed in range(200, 208)]
    # Then no feature drifts
    assert _drifted(baseline, window) == set()


@pytest.mark.parametrize(
    ("scanner", "thickness_mm", "expected"),
    [
        (dataclasses.replace(VALIDATED, noise_hu=40.0), 1.5, {AIR_MEAN, AIR_STD}),
        (dataclasses.replace(VALIDATED, convolution_kernel="BONE", noise_hu=30.0), 1.5,
         {"kernel", AIR_MEAN, AIR_STD}),
        (VALIDATED, 3.0, {"slice_thickness_mm"}),
        (dataclasses.replace(VALIDATED, software_version="07.1"), 1.5, {"software_version"}),
    ],
    ids=["noisier", "sharper-kernel", "thicker-slices", "new-firmware"],
)  # fmt: skip
def test_a_changed_scanner_drifts_on_what_changed(
    baseline, scanner, thickness_mm, expected
) -> None:
    # When eight new studies come from a changed scanner
    window = [_profile(seed, scanner, thickness_mm) for seed in range(200, 208)]
    # Then exactly the changed features drift (more noise also lifts the air mean: CT clips
    # at -1024 HU, so the noise below air is cut off)
    assert _drifted(baseline, window) == expected


def test_statistics_against_hand_computed_values() -> None:
    # PSI of 50/50 against 90/10: (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5)
    assert psi({"a": 5, "b": 5}, {"a": 9, "b": 1}) == pytest.approx(0.8789, abs=1e-4)
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    # c(0.01) = 1.6276 for two samples of 10
    assert ks_critical(10, 10) == pytest.approx(1.6276 * (0.2**0.5), abs=1e-3)


def test_the_profile_of_a_real_scanner_series() -> None:
    # Given five slices of a real GE CT (tests/data/ct-gantry-tilt, BSD-2)
    folder = Path(__file__).resolve().parents[2] / "data" / "ct-gantry-tilt" / "ge-variable-spacing"
    slices = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))[:5]]
    hu = np.stack(
        [s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices]
    )
    # When its acquisition profile is taken
    profile = input_profile(slices[0], hu)
    # Then it names the scanner and kernel from the headers, and the air region reads as air
    assert profile.categorical["scanner_model"] == "HiSpeed Dual"
    assert profile.categorical["kernel"] == "STD+"
    assert abs(profile.numeric["air_hu_mean"] + 1000) < 30
    assert 0 < profile.numeric["air_hu_std"] < 100
