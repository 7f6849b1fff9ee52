"""The site's annotated studies: CT series plus ground truth as DICOM SEG or a findings CSV.

Folder layout: any tree of DICOM files. Each CT series is one study to validate; a SEG
instance (as 3D Slicer or MONAI Label export it) referencing that study is its truth. A CSV
(`*.csv`, columns `study_instance_uid,x_mm,y_mm,z_mm,diameter_mm[,volume_mm3]`, patient
coordinates LPS) gives truth as lesion points instead. A study with neither has no truth
and is refused: validating against nothing would report a sensitivity of nothing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage

from edge_forwarder.transport.errors import ConfigError
from imaging_ai.dicom_folder import FolderSeries, scan_folder
from imaging_ai.drift import RunProfile, input_profile
from imaging_ai.model_io import Vector3, VolumeGeometry
from imaging_ai.volume import build_volume

SEG_MODALITY = "SEG"
CSV_COLUMNS = ("study_instance_uid", "x_mm", "y_mm", "z_mm", "diameter_mm")
# Lesions touching by a corner are one lesion, as the model's own findings count them.
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Lesion:
    """One lesion, true or found: where it is (patient mm, LPS) and how big."""

    centroid_mm: Vector3
    volume_mm3: float
    diameter_mm: float  # the truth's own, or the equivalent sphere's for a mask


@dataclass
class AnnotatedStudy:
    """One CT series to validate, with what the annotator said is in it."""

    study_instance_uid: str
    series: FolderSeries
    scanner_model: str
    slice_thickness_mm: float
    geometry: VolumeGeometry
    sop_instance_uids: list[str]  # volume order: the rows of every mask below
    acquisition: RunProfile  # what the drift monitor compares production against
    lesions: list[Lesion] = field(default_factory=list)
    truth_mask: npt.NDArray[np.bool_] | None = None  # None: truth given as CSV points


def equivalent_diameter_mm(volume_mm3: float) -> float:
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def lesions_from_mask(mask: npt.NDArray[np.bool_], geometry: VolumeGeometry) -> list[Lesion]:
    """Each connected component of `mask` as a lesion (no size floor: truth is truth)."""
    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count == 0:
        return []
    voxel_mm3 = float(np.prod(geometry.spacing_mm))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    centres = ndimage.center_of_mass(mask, components, range(1, count + 1))
    lesions = []
    for index, centre in enumerate(centres, start=1):
        volume = float(sizes[index]) * voxel_mm3
        lesions.append(
            Lesion(
                centroid_mm=geometry.voxel_to_patient(
                    (float(centre[0]), float(centre[1]), float(centre[2]))
                ),
                volume_mm3=volume,
                diameter_mm=equivalent_diameter_mm(volume),
            )
        )
    return lesions


def segmentation_mask(path: Path, sop_instance_uids: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Any segment of the SEG at `path`, on the source slices `sop_instance_uids` (in order)."""
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(sop_instance_uids),
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels.any(axis=-1), dtype=bool)


def _truth_points(folder: Path) -> dict[str, list[Lesion]]:
    points: dict[str, list[Lesion]] = {}
    for path in sorted(folder.rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"{path.name}: missing columns {', '.join(sorted(missing))}")
            for row in reader:
                diameter = float(row["diameter_mm"])
                volume = row.get("volume_mm3") or ""
                points.setdefault(row["study_instance_uid"].strip(), []).append(
                    Lesion(
                        centroid_mm=(float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])),
                        volume_mm3=float(volume) if volume else math.pi / 6 * diameter**3,
                        diameter_mm=diameter,
                    )
                )
    return points


def load_annotated_studies(folder: Path) -> list[AnnotatedStudy]:
    """Every CT series under `folder` with its truth, in study UID order."""
    found = scan_folder(folder)
    segs: dict[str, Path] = {}
    cts: dict[str, FolderSeries] = {}
    for series in found.series.values():
        if series.modality == SEG_MODALITY:
            for path in series.files:
                header = pydicom.dcmread(path, stop_before_pixels=True)
                segs[str(header.StudyInstanceUID)] = path
        elif series.modality == "CT":
            header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
            cts[str(header.StudyInstanceUID)] = series
    points = _truth_points(folder)
    studies = []
    for study_uid in sorted(cts):
        series = cts[study_uid]
        if study_uid not in segs and study_uid not in points:
            raise ConfigError(f"study {study_uid} has no ground truth (no SEG, no CSV row)")
        volume = build_volume(pydicom.dcmread(path) for path in series.files)
        first = volume.headers[0]
        study = AnnotatedStudy(
            study_instance_uid=study_uid,
            series=series,
            scanner_model=str(first.get("ManufacturerModelName", "") or "unknown"),
            slice_thickness_mm=float(first.get("SliceThickness", 0) or 0),
            geometry=volume.geometry,
            sop_instance_uids=volume.sop_instance_uids,
            acquisition=input_profile(first, volume.voxels),
        )
        if study_uid in segs:
            study.truth_mask = segmentation_mask(segs[study_uid], study.sop_instance_uids)
            study.lesions = lesions_from_mask(study.truth_mask, study.geometry)
        else:
            study.lesions = points[study_uid]
        studies.append(study)
    return studies
