"""Turn a label map into findings: connected components with volume, diameter and centroid."""

from __future__ import annotations

import contextlib

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import Finding, VolumeGeometry

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _axis_matrix(geometry: VolumeGeometry) -> npt.NDArray[np.float64]:
    """3x3 matrix mapping (slice, row, column) index offsets to patient millimetres."""
    return np.stack(
        [
            np.asarray(geometry.slice_direction) * geometry.spacing_mm[0],
            np.asarray(geometry.column_direction) * geometry.spacing_mm[1],
            np.asarray(geometry.row_direction) * geometry.spacing_mm[2],
        ]
    )


def longest_diameter_mm(mask: npt.NDArray[np.bool_], geometry: VolumeGeometry) -> float:
    """Longest diameter of a component: the farthest pair of its surface voxel centres.

    Adding a voxel's projected extent to that span (a caliper on the voxel boxes) reads a
    digitized sphere 7 % long on average and up to 20 % on 1.5 x 0.7 x 0.7 mm CT; the centre
    span alone reads it within about 1 % (measured on the phantom generator's nodules).
    """
    surface = mask & ~ndimage.binary_erosion(mask)
    indices = np.argwhere(surface).astype(np.float64)
    if len(indices) == 0:
        return 0.0
    axes = _axis_matrix(geometry)
    points = indices @ axes
    if len(points) > 64:
        # A flat or degenerate component has no hull: then every point is a hull point.
        with contextlib.suppress(QhullError):
            points = points[ConvexHull(points).vertices]
    if len(points) == 1:
        return float(max(geometry.spacing_mm))
    return float(pdist(points).max())


def _bounding_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, slice, slice] | None:
    slices = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(present) == 0:
            return None
        slices.append(slice(int(present[0]), int(present[-1]) + 1))
    return slices[0], slices[1], slices[2]


def extract_findings(
    labels: npt.NDArray[np.uint8], geometry: VolumeGeometry, card: ModelCard
) -> tuple[npt.NDArray[np.uint8], list[Finding]]:
    """Connected components per label, largest first; drops (and erases) those too small."""
    voxel_mm3 = float(abs(np.linalg.det(_axis_matrix(geometry))))
    cleaned = np.zeros_like(labels)
    findings: list[Finding] = []
    for label in card.labels:
        mask = labels == label.value
        extent = _bounding_box(mask)
        if extent is None:
            continue
        # Labelling only the box that holds any foreground: a study is ~50 M voxels.
        components, count = ndimage.label(mask[extent], structure=_FULL_CONNECTIVITY)
        boxes = ndimage.find_objects(components)
        kept: list[tuple[int, tuple[slice, ...]]] = []
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        for index, box in enumerate(boxes, start=1):
            if box is not None and sizes[index] * voxel_mm3 >= label.min_volume_mm3:
                kept.append((index, box))
        kept.sort(key=lambda item: -int(sizes[item[0]]))
        for number, (index, local_box) in enumerate(kept, start=1):
            local = components[local_box] == index
            box = tuple(
                slice(outer.start + inner.start, outer.start + inner.stop)
                for outer, inner in zip(extent, local_box, strict=True)
            )
            cleaned[box][local] = label.value
            offset = np.array([s.start for s in box], dtype=np.float64)
            centre = np.argwhere(local).mean(axis=0) + offset
            findings.append(
                Finding(
                    label_value=label.value,
                    component=number,
                    voxel_count=int(sizes[index]),
                    volume_mm3=round(float(sizes[index]) * voxel_mm3, 2),
                    longest_diameter_mm=round(longest_diameter_mm(local, geometry), 2),
                    centroid_mm=geometry.voxel_to_patient(
                        (float(centre[0]), float(centre[1]), float(centre[2]))
                    ),
                )
            )
    return cleaned, findings
