"""Gantry tilt and uneven slice spacing onto a regular grid (as dcm2niix does), and back.

A tilted gantry images planes that are not perpendicular to the table's travel: each slice is
the previous one moved along the table, so the stack is sheared. Some scanners also change the
table increment mid-series. Both are resampled here, within configured limits: every slice is
shifted in its own plane onto the first slice's in-plane frame (removing the shear), then the
stack is interpolated linearly along the slice normal at a constant step. Results computed on
that grid are mapped back onto the original slices (`labels_on_source_slices`), so a SEG can
reference the instances the site holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from imaging_ai.errors import ContractError
from imaging_ai.model_io import VolumeGeometry

FloatArray = npt.NDArray[np.float32]

# Offsets below this fraction of a pixel are DICOM DS rounding, not shear.
_OFFSET_TOLERANCE_PX = 0.05
_SPACING_RELATIVE_TOLERANCE = 0.01
# A shear is a straight line of offsets; points off it by more than this are not a tilt.
_SHEAR_RESIDUAL_PX = 0.25


class ResliceError(ContractError):
    """The slice stack cannot be made regular within the configured limits (no PHI)."""


@dataclass(frozen=True)
class StackLayout:
    """Where each slice (sorted along the normal) lies relative to the first one."""

    along_mm: npt.NDArray[np.float64]  # distance along the slice normal, first slice = 0
    row_offset_px: npt.NDArray[np.float64]  # in-plane offset along the column direction (rows)
    column_offset_px: npt.NDArray[np.float64]  # in-plane offset along the row direction
    tilt_deg: float
    steps_mm: npt.NDArray[np.float64]

    @property
    def sheared(self) -> bool:
        return bool(
            max(np.abs(self.row_offset_px).max(), np.abs(self.column_offset_px).max())
            > _OFFSET_TOLERANCE_PX
        )

    @property
    def uneven(self) -> bool:
        median = float(np.median(self.steps_mm))
        return bool(np.abs(self.steps_mm - median).max() > _SPACING_RELATIVE_TOLERANCE * median)

    @property
    def regular(self) -> bool:
        return not self.sheared and not self.uneven

    def target_step_mm(self) -> float:
        """The regular step: the finest spacing the series has, but one odd short step (a
        repeated or overlapping slice) must not multiply the slice count."""
        median = float(np.median(self.steps_mm))
        return float(max(self.steps_mm.min(), 0.5 * median))


def stack_layout(
    positions_mm: npt.NDArray[np.float64],
    row_direction: npt.NDArray[np.float64],
    column_direction: npt.NDArray[np.float64],
    pixel_spacing_mm: tuple[float, float],
) -> StackLayout:
    """Describe sorted slice positions: steps along the normal, shear, tilt angle."""
    normal = np.cross(row_direction, column_direction)
    offsets = positions_mm - positions_mm[0]
    along = offsets @ normal
    steps = np.diff(along)
    if steps.size == 0 or steps.min() < 1e-3:
        raise ResliceError("two slices share one position along the slice normal")
    row_mm = offsets @ column_direction
    column_mm = offsets @ row_direction
    # Tilt: the in-plane drift per millimetre along the normal, fitted as a straight line.
    design = np.stack([along, np.ones_like(along)], axis=1)
    in_plane = np.stack([row_mm, column_mm], axis=1)
    fit, *_ = np.linalg.lstsq(design, in_plane, rcond=None)
    residual_mm = np.abs(design @ fit - in_plane).max()
    if residual_mm > _SHEAR_RESIDUAL_PX * min(pixel_spacing_mm):
        raise ResliceError("slice positions drift off the slice normal irregularly (not a tilt)")
    tilt = math.degrees(math.atan(float(np.hypot(fit[0, 0], fit[0, 1]))))
    return StackLayout(
        along_mm=along,
        row_offset_px=row_mm / pixel_spacing_mm[0],
        column_offset_px=column_mm / pixel_spacing_mm[1],
        tilt_deg=tilt,
        steps_mm=steps,
    )


def check_limits(layout: StackLayout, max_tilt_deg: float, max_gap_mm: float) -> None:
    """Refuse what correcting would distort: a steeper tilt or a wider gap than configured."""
    if layout.sheared and layout.tilt_deg > max_tilt_deg:
        if max_tilt_deg <= 0.0:
            raise ResliceError("slice positions drift off the slice normal (gantry tilt or shear)")
        raise ResliceError(
            f"gantry tilt {layout.tilt_deg:.1f} deg exceeds the configured {max_tilt_deg:g} deg"
        )
    if layout.uneven:
        gap = float(layout.steps_mm.max())
        if max_gap_mm <= 0.0:
            raise ResliceError("slice spacing is not uniform (missing or extra slices)")
        if gap > max_gap_mm:
            raise ResliceError(
                f"a {gap:.1f} mm gap between slices exceeds the configured {max_gap_mm:g} mm"
            )


def regularize(
    stack: FloatArray, layout: StackLayout, geometry: VolumeGeometry
) -> tuple[FloatArray, VolumeGeometry]:
    """Resample a sheared / unevenly spaced stack onto a regular grid.

    `stack` holds the decoded slices sorted along the normal; `geometry` is the first slice's
    frame (origin, directions, pixel spacing). It is overwritten (each slice is de-sheared in
    place) to keep peak memory near one stack plus the output. Voxels that no source slice
    covers take the stack's minimum (the scanner's padding or air), as dcm2niix does.
    """
    fill = float(stack.min())
    if layout.sheared:
        for k in range(stack.shape[0]):
            shift = (float(layout.row_offset_px[k]), float(layout.column_offset_px[k]))
            if max(abs(shift[0]), abs(shift[1])) > _OFFSET_TOLERANCE_PX:
                stack[k] = ndimage.shift(stack[k], shift, order=1, mode="constant", cval=fill)
    step = layout.target_step_mm()
    extent = float(layout.along_mm[-1])
    depth = math.floor(extent / step + 1e-6) + 1
    output = np.empty((depth, stack.shape[1], stack.shape[2]), dtype=np.float32)
    along = layout.along_mm
    for t in range(depth):
        position = t * step
        k = int(np.clip(np.searchsorted(along, position, side="right") - 1, 0, len(along) - 2))
        weight = np.float32(np.clip((position - along[k]) / (along[k + 1] - along[k]), 0.0, 1.0))
        plane = stack[k] * (np.float32(1.0) - weight)
        if weight > 0.0:
            plane += stack[k + 1] * weight
        output[t] = plane
    regular = geometry.model_copy(
        update={
            "shape": (depth, int(stack.shape[1]), int(stack.shape[2])),
            "spacing_mm": (step, geometry.spacing_mm[1], geometry.spacing_mm[2]),
        }
    )
    return output, regular


def labels_on_source_slices(
    labels: npt.NDArray[np.uint8],
    geometry: VolumeGeometry,
    source_positions_mm: list[tuple[float, float, float]],
) -> npt.NDArray[np.uint8]:
    """A label map on `geometry` seen on each original slice (nearest neighbour: labels are
    categories). Returns `labels` itself when the grid already is the original slices."""
    origin = np.asarray(geometry.origin_mm)
    normal = np.asarray(geometry.slice_direction)
    rows = np.asarray(geometry.column_direction)
    columns = np.asarray(geometry.row_direction)
    offsets = np.asarray(source_positions_mm, dtype=np.float64) - origin
    index = offsets @ normal / geometry.spacing_mm[0]
    row_px = offsets @ rows / geometry.spacing_mm[1]
    column_px = offsets @ columns / geometry.spacing_mm[2]
    nearest = np.rint(index).astype(np.intp)
    identity = (
        len(source_positions_mm) == labels.shape[0]
        and np.array_equal(nearest, np.arange(labels.shape[0]))
        and np.abs(index - nearest).max() < 0.05
        and max(np.abs(row_px).max(), np.abs(column_px).max()) < _OFFSET_TOLERANCE_PX
    )
    if identity:
        return labels
    mapped = np.zeros((len(source_positions_mm), *labels.shape[1:]), dtype=np.uint8)
    for k, (slice_index, dy, dx) in enumerate(zip(nearest, row_px, column_px, strict=True)):
        if not 0 <= slice_index < labels.shape[0]:
            continue  # outside the regular grid's extent: nothing was found there
        plane = labels[slice_index]
        if max(abs(dy), abs(dx)) > _OFFSET_TOLERANCE_PX:
            # The original slice sees the grid moved by its own offset: shift back.
            plane = ndimage.shift(plane, (-dy, -dx), order=0, mode="constant", cval=0)
        mapped[k] = plane
    return mapped
