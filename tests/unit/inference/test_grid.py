"""Model grid and linear resampling between aligned voxel grids."""

from __future__ import annotations

import numpy as np

from imaging_ai.inference.grid import model_geometry_for, resample_linear, source_box_for
from imaging_ai.model_io import VolumeGeometry

SOURCE = VolumeGeometry(shape=(20, 40, 40), spacing_mm=(1.5, 0.7, 0.7), origin_mm=(-10, -5, 3))


def test_model_grid_covers_source_and_shares_first_voxel() -> None:
    # Given a 0.7 mm source, When the 1.5 mm model grid is made
    model = model_geometry_for(SOURCE, (1.5, 1.5, 1.5))
    # Then it starts at the same voxel and its last voxel stays inside the source extent
    assert model.origin_mm == SOURCE.origin_mm
    assert model.shape == (20, 19, 19)
    for n, s, m, t in zip(
        SOURCE.shape, SOURCE.spacing_mm, model.shape, model.spacing_mm, strict=True
    ):
        assert (m - 1) * t <= (n - 1) * s + 1e-6 < m * t


def test_linear_resampling_reproduces_a_linear_field_exactly() -> None:
    # Given a field linear in patient position, When it is resampled to a coarser grid
    k, i, j = np.meshgrid(*(np.arange(n) for n in SOURCE.shape), indexing="ij")
    field = (k * 1.5 * 2.0 + i * 0.7 * -1.0 + j * 0.7 * 0.5).astype(np.float32)
    model = model_geometry_for(SOURCE, (2.0, 1.3, 1.1))
    resampled = resample_linear(field, SOURCE, model)
    # Then every model voxel holds the field's value at its centre
    mk, mi, mj = np.meshgrid(*(np.arange(n) for n in model.shape), indexing="ij")
    expected = mk * 2.0 * 2.0 + mi * 1.3 * -1.0 + mj * 1.1 * 0.5
    np.testing.assert_allclose(resampled, expected, atol=1e-3)


def test_a_box_resamples_to_the_same_values_as_the_whole_grid() -> None:
    # Given random model-grid values, When only a box of the source grid is resampled
    model = model_geometry_for(SOURCE, (1.5, 1.5, 1.5))
    values = np.random.default_rng(1).random(model.shape).astype(np.float32)
    whole = resample_linear(values, model, SOURCE)
    box = source_box_for((slice(3, 9), slice(4, 10), slice(2, 7)), model, SOURCE)
    # Then it equals the same box cut from the whole resampled volume
    np.testing.assert_allclose(resample_linear(values, model, SOURCE, box), whole[box], atol=1e-6)
