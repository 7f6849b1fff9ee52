"""Intended-use checks: each kind of series a site sends is skipped with its own reason."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from imaging_ai.contracts import ManifestInstance, ManifestSeries
from imaging_ai.intended_use import (
    Skip,
    SkipReason,
    _fill_holes,
    not_analyzed_reason,
    screen_headers,
    screen_manifest_series,
    screen_volume,
)
from imaging_ai.model_card import IntendedUse, load_model_card
from imaging_ai.synthetic import FakePatient, Phantom, make_chest_phantom
from imaging_ai.synthetic_series import (
    ct_series,
    dose_report,
    localizer,
    make_head_phantom,
    secondary_capture,
)
from imaging_ai.volume import build_volume
from tests.functions_support import SHIPPED_MODEL_DIR

UID = "1.2.826.0.1.3680043.8.498.7"


@pytest.fixture(scope="module")
def chest_use() -> IntendedUse:
    """The intended use the shipped lung-nodule model declares in its model.json."""
    return load_model_card(SHIPPED_MODEL_DIR, verify_weights=False).intended_use


@pytest.fixture(scope="module")
def chest() -> Phantom:
    return make_chest_phantom(seed=21, shape=(80, 256, 256), spacing_mm=(2.0, 1.2, 1.2))


@pytest.fixture(scope="module")
def chest_series(chest: Phantom) -> list[Dataset]:
    return ct_series(chest, FakePatient(), generate_uid(), generate_uid(), 2, "C", "CHEST")


def _first(slices: list[Dataset], count: int) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in slices[:count]]


def _manifest_entry(datasets: list[Dataset]) -> ManifestSeries:
    return ManifestSeries(
        pseudo_series_uid=UID,
        modality=str(datasets[0].Modality),
        object_key="incoming/site-a/1.2/1.3.tar.enc",
        sha256="0" * 64,
        size_bytes=1,
        instances=[
            ManifestInstance(sop_instance_uid=generate_uid(), sop_class_uid=str(ds.SOPClassUID))
            for ds in datasets
        ],
    )


def test_the_chest_series_passes_every_check(
    chest_series: list[Dataset], chest_use: IntendedUse
) -> None:
    # Given a 1.2 mm in-plane, 2 mm slice chest CT covering 160 mm
    slices = _first(chest_series, len(chest_series))

    # When each stage of the check runs, Then none skips it
    assert screen_manifest_series(_manifest_entry(slices), chest_use) is None
    assert screen_headers(UID, slices, chest_use) is None
    assert screen_volume(UID, build_volume(slices), chest_use) is None


def test_a_head_ct_whose_body_part_says_chest_fails_the_lung_density_check(
    chest_use: IntendedUse,
) -> None:
    # Given a head CT that passes every header check because Body Part Examined lies
    head = ct_series(
        make_head_phantom(seed=4), FakePatient(), generate_uid(), generate_uid(), 3, "H", "CHEST"
    )
    assert screen_headers(UID, head, chest_use) is None

    # When its volume is checked, Then the image-based check skips it, with the measured mL
    skip = screen_volume(UID, build_volume(head), chest_use)
    assert skip is not None and skip.reason is SkipReason.IMAGE_CHECK
    assert "lung-density volume 0 mL < 500 mL" in skip.detail


def test_a_head_ct_without_body_part_is_also_caught_by_the_image(chest_use: IntendedUse) -> None:
    head = ct_series(
        make_head_phantom(seed=4), FakePatient(), generate_uid(), generate_uid(), 3, "H", None
    )
    assert screen_headers(UID, head, chest_use) is None
    skip = screen_volume(UID, build_volume(head), chest_use)
    assert skip is not None and skip.reason is SkipReason.IMAGE_CHECK


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c, t: [dose_report(t)], SkipReason.DOSE_REPORT),
        (lambda c, t: [secondary_capture(t)], SkipReason.SECONDARY_CAPTURE),
        (lambda c, t: [t] * 4, SkipReason.TOO_FEW_SLICES),
    ],
)
def test_objects_that_are_no_volume_are_skipped_from_the_manifest(
    chest_series: list[Dataset], chest_use: IntendedUse, make: object, reason: SkipReason
) -> None:
    (template,) = _first(chest_series, 1)
    skip = screen_manifest_series(_manifest_entry(make(chest, template)), chest_use)  # type: ignore[operator]
    assert skip is not None and skip.reason is reason


def test_an_mr_series_is_the_wrong_modality(
    chest_series: list[Dataset], chest_use: IntendedUse
) -> None:
    slices = _first(chest_series, 20)
    entry = _manifest_entry(slices).model_copy(update={"modality": "MR"})
    skip = screen_manifest_series(entry, chest_use)
    assert skip is not None and skip.reason is SkipReason.WRONG_MODALITY


def _with(slices: list[Dataset], **attributes: object) -> list[Dataset]:
    for ds in slices:
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return slices


@pytest.mark.parametrize(
    ("attributes", "reason", "detail"),
    [
        ({"BodyPartExamined": "HEAD"}, SkipReason.WRONG_REGION, "BodyPartExamined HEAD"),
        ({"SliceThickness": 5.0}, SkipReason.THICK_SLICES, "5 mm outside 0.5-3 mm"),
        ({"PixelSpacing": [2.0, 2.0]}, SkipReason.PIXEL_SPACING, "2x2 mm"),
        ({"PhotometricInterpretation": "RGB"}, SkipReason.PHOTOMETRIC, "RGB"),
    ],
)
def test_header_facts_outside_the_intended_use_are_skipped_with_the_fact(
    chest_series: list[Dataset],
    chest_use: IntendedUse,
    attributes: dict[str, object],
    reason: SkipReason,
    detail: str,
) -> None:
    skip = screen_headers(UID, _with(_first(chest_series, 3), **attributes), chest_use)
    assert skip is not None and skip.reason is reason and detail in skip.detail


def test_a_localizer_is_skipped(chest: Phantom, chest_use: IntendedUse) -> None:
    scout = localizer(chest, FakePatient(), generate_uid(), generate_uid())
    skip = screen_headers(UID, [scout], chest_use)
    assert skip is not None and skip.reason is SkipReason.LOCALIZER


def test_a_short_scan_lacks_coverage(chest: Phantom, chest_use: IntendedUse) -> None:
    short = Phantom(
        hu=chest.hu[:40],
        spacing_mm=chest.spacing_mm,
        origin_mm=chest.origin_mm,
        nodules=[],
        nodule_mask=np.zeros((1, 1, 1), dtype=np.uint8),
    )
    slices = ct_series(short, FakePatient(), generate_uid(), generate_uid(), 2, "C", "CHEST")
    skip = screen_volume(UID, build_volume(slices), chest_use)
    assert skip is not None and skip.reason is SkipReason.INSUFFICIENT_COVERAGE
    assert skip.detail == "78 mm < 100 mm"


def test_the_site_reason_names_each_distinct_reason_once() -> None:
    skips = [
        Skip("1.1", SkipReason.LOCALIZER, "ImageType LOCALIZER"),
        Skip("1.2", SkipReason.DOSE_REPORT, "modality SR"),
        Skip("1.3", SkipReason.LOCALIZER, "ImageType LOCALIZER"),
    ]
    assert not_analyzed_reason(skips) == (
        "no series within the model's intended use: localizer (ImageType LOCALIZER) x2; "
        "dose report (modality SR)"
    )


def test_a_study_of_many_odd_series_still_gets_one_short_line() -> None:
    # Given 60 series each skipped for its own body part
    skips = [Skip(f"1.{n}", SkipReason.WRONG_REGION, f"BodyPartExamined P{n}") for n in range(60)]
    # When the site's reason is written, Then it fits the state and message limits
    reason = not_analyzed_reason(skips)
    assert len(reason) <= 480 and reason.endswith("; and more")
    assert "wrong region (BodyPartExamined P0)" in reason


def test_the_lung_check_fills_the_same_holes_as_scipy() -> None:
    """Given masks with holes, holes open to an edge and nested rings (and the chest phantom's
    body), when the lung check fills holes, then it fills exactly what scipy's
    binary_fill_holes fills: the measured volume cannot drift from the documented one."""
    rng = np.random.default_rng(7)
    masks = [rng.random((64, 80)) < density for density in (0.3, 0.5, 0.6, 0.8)]
    ring = np.zeros((40, 40), dtype=bool)
    ring[5:35, 5:35] = True
    ring[10:30, 10:30] = False
    ring[15:25, 15:25] = True  # an island inside the hole
    ring[18:22, 18:22] = False  # and a hole inside the island
    open_edge = ring.copy()
    open_edge[0:20, 20] = False  # a channel from the top edge drains the hole
    body = make_chest_phantom(seed=3, shape=(2, 128, 128), spacing_mm=(2.5, 2.5, 2.5)).hu[1] > -400
    for mask in [*masks, ring, open_edge, body, np.zeros((8, 8), bool), np.ones((8, 8), bool)]:
        assert np.array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))
