"""Volume building: slice order, rescale, compressed syntaxes, geometry refusals, memory."""

from __future__ import annotations

import copy
import io
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from scipy import ndimage

from imaging_ai.model_io import pack_model_input
from imaging_ai.synthetic import FakePatient, Phantom, iter_ct_slices, make_chest_phantom
from imaging_ai.volume import GeometryError, build_volume, resample_normalize, target_grid
from tests.model_io_support import input_meta


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_chest_phantom(seed=5, shape=(12, 48, 48), spacing_mm=(2.5, 1.5, 1.5))


def _slices(phantom: Phantom) -> list[Dataset]:
    return list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )


def _round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_shuffled_slices_come_out_in_patient_order_in_hounsfield_units(phantom: Phantom) -> None:
    # Given the slices of a series in random order
    slices = _slices(phantom)
    order = np.random.default_rng(0).permutation(len(slices))

    # When the volume is built
    volume = build_volume([slices[i] for i in order])

    # Then it is the phantom, rescaled to HU, with its geometry
    np.testing.assert_array_equal(volume.voxels, phantom.hu.astype(np.float32))
    assert volume.geometry.shape == phantom.hu.shape
    assert volume.geometry.spacing_mm == pytest.approx(phantom.spacing_mm)
    assert volume.geometry.slice_direction == pytest.approx((0.0, 0.0, 1.0))
    assert [h.InstanceNumber for h in volume.headers] == list(range(1, len(slices) + 1))
    assert all("PixelData" not in h for h in volume.headers)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_compressed_series_give_the_same_volume(phantom: Phantom, syntax: str) -> None:
    # Given the series stored with a compressed transfer syntax
    slices = []
    for ds in _slices(phantom):
        ds.compress(syntax)
        slices.append(_round_trip(ds))

    # When the volume is built, Then it equals the uncompressed one
    np.testing.assert_array_equal(build_volume(slices).voxels, phantom.hu.astype(np.float32))


def _missing_slice(slices: list[Dataset]) -> None:
    del slices[5]


def _tilted_orientation(slices: list[Dataset]) -> None:
    slices[3].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.995, 0.0998]


def _duplicate_position(slices: list[Dataset]) -> None:
    slices[4].ImagePositionPatient = list(slices[3].ImagePositionPatient)


def _gantry_tilt(slices: list[Dataset]) -> None:
    for k, ds in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.8 * k, z]


def _other_matrix(slices: list[Dataset]) -> None:
    ds = slices[2]
    ds.Rows = 24
    ds.PixelData = bytes(24 * int(ds.Columns) * 2)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_missing_slice, "not uniform"),
        (_tilted_orientation, "ImageOrientationPatient"),
        (_duplicate_position, "share one position"),
        (_gantry_tilt, "gantry tilt"),
        (_other_matrix, "Rows or Columns"),
    ],
)
def test_inconsistent_geometry_is_refused_with_a_reason(
    phantom: Phantom, damage: object, reason: str
) -> None:
    slices = [copy.deepcopy(ds) for ds in _slices(phantom)]
    damage(slices)  # type: ignore[operator]
    with pytest.raises(GeometryError, match=reason):
        build_volume(slices)


def test_resampling_to_the_source_spacing_only_windows_the_intensities(phantom: Phantom) -> None:
    volume = build_volume(_slices(phantom))
    image, grid = resample_normalize(
        volume.voxels, volume.geometry, volume.geometry.spacing_mm, (-1000.0, 400.0)
    )
    expected = (np.clip(volume.voxels, -1000.0, 400.0) + 1000.0) / 1400.0
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert grid == volume.geometry


def test_resampling_keeps_the_first_voxel_and_covers_the_source_extent(phantom: Phantom) -> None:
    volume = build_volume(_slices(phantom))
    grid = target_grid(volume.geometry, (4.0, 2.0, 2.0))
    image, _ = resample_normalize(volume.voxels, volume.geometry, (4.0, 2.0, 2.0), (-1e4, 1e4))
    assert grid.origin_mm == volume.geometry.origin_mm
    assert grid.shape == (7, 36, 36)  # floor((n - 1) * source / target) + 1
    assert image[0, 0, 0] == pytest.approx((volume.voxels[0, 0, 0] + 1e4) / 2e4, abs=1e-6)


@pytest.mark.parametrize("spacing_mm", [(2.5, 2.0, 2.0), (4.0, 1.0, 2.0), (2.5, 1.5, 1.5)])
def test_resampling_is_trilinear_interpolation_as_scipy_computes_it(
    phantom: Phantom, spacing_mm: tuple[float, float, float]
) -> None:
    """Given a volume, when it is resampled keeping or changing the slice spacing, then every
    voxel is scipy's trilinear interpolation (float64) of the source, windowed: the fast
    paths (a source slice read without a copy) change no value beyond float32 rounding."""
    volume = build_volume(_slices(phantom))
    image, grid = resample_normalize(volume.voxels, volume.geometry, spacing_mm, (-1000.0, 400.0))
    axes = [
        np.arange(n) * target / source
        for n, target, source in zip(
            grid.shape, spacing_mm, volume.geometry.spacing_mm, strict=True
        )
    ]
    points = np.meshgrid(*axes, indexing="ij")
    reference = ndimage.map_coordinates(volume.voxels.astype(np.float64), points, order=1)
    expected = (np.clip(reference, -1000.0, 400.0) + 1000.0) / 1400.0
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (2.5, -1024.0), (1.0, 0.0)])
def test_rescale_gives_stored_times_slope_plus_intercept(
    phantom: Phantom, slope: float, intercept: float
) -> None:
    """Given slices with a rescale slope and intercept, the volume holds stored * slope +
    intercept as float32, whichever path (one pass for slope 1) computed it."""
    slices = _slices(phantom)
    for ds in slices:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    volume = build_volume(slices)
    stored = np.stack([np.asarray(ds.pixel_array) for ds in _slices(phantom)])
    expected = (stored.astype(np.float64) * slope).astype(np.float32) + np.float32(intercept)
    assert np.array_equal(volume.voxels, expected)


def test_preprocess_memory_stays_within_three_times_the_volume() -> None:
    # Given a CT series already in memory (as after reading the series tar)
    phantom = make_chest_phantom(seed=9, shape=(48, 160, 160), spacing_mm=(1.25, 0.7, 0.7))
    slices = [_round_trip(ds) for ds in _slices(phantom)]
    volume_bytes = phantom.hu.size * 4  # the float32 volume

    # When it is built, resampled, normalised and packed as the model input
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    volume = build_volume(slices)
    del slices
    image, grid = resample_normalize(volume.voxels, volume.geometry, (2.0, 1.0, 1.0), (-1e3, 4e2))
    meta = input_meta(volume.geometry, grid, sop_instance_uids=volume.sop_instance_uids)
    payload = pack_model_input(image, meta)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then no more than 3x the volume was ever allocated on top of what was there
    assert len(payload) > 0
    print(f"peak {(peak - base) / volume_bytes:.2f}x the volume")
    assert peak - base <= 3 * volume_bytes, (peak - base) / volume_bytes
