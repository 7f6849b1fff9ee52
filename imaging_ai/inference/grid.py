"""Voxel grids: the model grid for a source volume and separable linear resampling between them."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from imaging_ai.errors import ContractError
from imaging_ai.model_io import Vector3, VolumeGeometry

Box = tuple[slice, slice, slice]


def _axis_directions(geometry: VolumeGeometry) -> tuple[Vector3, Vector3, Vector3]:
    # Array axis 0 walks slices, axis 1 walks rows (down a column), axis 2 walks columns.
    return geometry.slice_direction, geometry.column_direction, geometry.row_direction


def _check_aligned(a: VolumeGeometry, b: VolumeGeometry) -> None:
    for da, db in zip(_axis_directions(a), _axis_directions(b), strict=True):
        if not np.allclose(da, db, atol=1e-4):
            raise ContractError("grids are not axis-aligned with each other")


def model_geometry_for(source: VolumeGeometry, spacing_mm: Vector3) -> VolumeGeometry:
    """The grid at `spacing_mm` that covers the source volume and shares its first voxel."""
    shape = tuple(
        max(1, math.floor((n - 1) * s / t + 1e-6) + 1)
        for n, s, t in zip(source.shape, source.spacing_mm, spacing_mm, strict=True)
    )
    return source.model_copy(
        update={"shape": shape, "spacing_mm": tuple(float(s) for s in spacing_mm)}
    )


def _source_coordinates(
    source: VolumeGeometry, target: VolumeGeometry, axis: int, indices: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Continuous source index of target voxel centres along one array axis."""
    direction = np.asarray(_axis_directions(source)[axis])
    offset = float(np.dot(np.subtract(target.origin_mm, source.origin_mm), direction))
    position = offset + indices * target.spacing_mm[axis]
    return np.asarray(position / source.spacing_mm[axis], dtype=np.float64)


def resample_linear(
    volume: npt.NDArray[np.number],
    source: VolumeGeometry,
    target: VolumeGeometry,
    target_box: Box | None = None,
) -> npt.NDArray[np.float32]:
    """Sample `volume` (on `source`) at the voxel centres of `target` (or of a box of it).

    Trilinear interpolation done as three 1-D passes, so memory stays at the size of the output
    and a box costs only its own voxels. Points outside the source take the nearest edge value.
    """
    _check_aligned(source, target)
    if volume.shape != source.shape:
        raise ContractError("volume does not match its geometry")
    box = target_box or (
        slice(0, target.shape[0]),
        slice(0, target.shape[1]),
        slice(0, target.shape[2]),
    )
    result: npt.NDArray[np.float32] = np.asarray(volume, dtype=np.float32)
    for axis in range(3):
        start, stop, _ = box[axis].indices(target.shape[axis])
        coords = _source_coordinates(source, target, axis, np.arange(start, stop))
        coords = np.clip(coords, 0.0, source.shape[axis] - 1)
        lower = np.floor(coords).astype(np.int64)
        upper = np.minimum(lower + 1, source.shape[axis] - 1)
        weight_shape = [1, 1, 1]
        weight_shape[axis] = -1
        weight = (coords - lower).astype(np.float32).reshape(weight_shape)
        low = np.take(result, lower, axis=axis)
        high = np.take(result, upper, axis=axis)
        result = low + (high - low) * weight
    return result


def source_box_for(model_box: Box, model: VolumeGeometry, source: VolumeGeometry) -> Box:
    """The source-grid index box covering a model-grid index box (inclusive of its edges)."""
    slices = []
    for axis in range(3):
        start, stop, _ = model_box[axis].indices(model.shape[axis])
        direction = np.asarray(_axis_directions(source)[axis])
        offset = float(np.dot(np.subtract(model.origin_mm, source.origin_mm), direction))
        low = (offset + start * model.spacing_mm[axis]) / source.spacing_mm[axis]
        high = (offset + (stop - 1) * model.spacing_mm[axis]) / source.spacing_mm[axis]
        lo = max(0, math.floor(low))
        hi = min(source.shape[axis], math.ceil(high) + 1)
        slices.append(slice(lo, max(lo, hi)))
    return slices[0], slices[1], slices[2]
