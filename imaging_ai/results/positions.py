"""Where a patient-space point falls in the source series: its slice and its pixel position."""

from __future__ import annotations

import numpy as np

from imaging_ai.model_io import VolumeGeometry


def slice_index(geometry: VolumeGeometry, point_mm: tuple[float, float, float]) -> int:
    """The source slice nearest to a patient-space point (along the slice normal)."""
    offset = np.asarray(point_mm) - np.asarray(geometry.origin_mm)
    k = float(np.dot(offset, np.asarray(geometry.slice_direction))) / geometry.spacing_mm[0]
    return min(max(round(k), 0), geometry.shape[0] - 1)


def in_plane_index(
    geometry: VolumeGeometry, point_mm: tuple[float, float, float]
) -> tuple[float, float]:
    """(row, column) of a patient-space point projected onto a slice."""
    offset = np.asarray(point_mm) - np.asarray(geometry.origin_mm)
    row = float(np.dot(offset, np.asarray(geometry.column_direction))) / geometry.spacing_mm[1]
    column = float(np.dot(offset, np.asarray(geometry.row_direction))) / geometry.spacing_mm[2]
    return row, column
