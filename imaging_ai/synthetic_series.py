"""What a real site sends beside a chest CT: head CT, localizer, dose report, secondary capture,
tilted-gantry and enhanced multi-frame acquisitions. For tests and `make demo`."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from scipy import ndimage

from imaging_ai.results.patient_study import IDENTITY_ATTRIBUTES
from imaging_ai.synthetic import (
    HU_AIR,
    HU_BONE,
    RESCALE_INTERCEPT,
    FakePatient,
    Phantom,
    iter_ct_slices,
    make_new_instance,
)

LOCALIZER_TYPE = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
X_RAY_RADIATION_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
HU_BRAIN = 35


def make_head_phantom(
    seed: int,
    shape: tuple[int, int, int] = (64, 224, 224),
    spacing_mm: tuple[float, float, float] = (2.5, 0.9, 0.9),
    noise_hu: float = 10.0,
) -> Phantom:
    """A skull (bone ring), brain and a small air-filled sinus: no lung anywhere."""
    rng = np.random.default_rng(seed)
    depth, rows, cols = shape
    yy, xx = np.meshgrid(
        (np.arange(rows) - rows / 2) * spacing_mm[1],
        (np.arange(cols) - cols / 2) * spacing_mm[2],
        indexing="ij",
    )
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    extent = depth * spacing_mm[0]
    for k in range(depth):
        # The head narrows toward the vertex.
        scale = max(0.3, math.sqrt(max(0.0, 1.0 - ((k * spacing_mm[0]) / extent - 0.35) ** 2)))
        a, b = 72.0 * scale, 92.0 * scale
        outer = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
        inner = (xx / (a - 6.0)) ** 2 + (yy / (b - 6.0)) ** 2 <= 1.0
        hu[k][outer] = HU_BONE
        hu[k][inner] = HU_BRAIN
        if k < depth // 4:
            sinus = ((xx / 12.0) ** 2 + ((yy + b - 25.0) / 8.0) ** 2) <= 1.0
            hu[k][sinus & inner] = HU_AIR
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    return Phantom(
        hu=np.clip(hu, -1024, 3071).astype(np.int16),
        spacing_mm=spacing_mm,
        origin_mm=(0.0, -rows / 2 * spacing_mm[1], -cols / 2 * spacing_mm[2]),
        nodules=[],
        nodule_mask=np.zeros(shape, dtype=np.uint8),
    )


def ct_series(
    phantom: Phantom,
    patient: FakePatient,
    study_uid: str,
    frame_of_reference_uid: str,
    series_number: int,
    description: str,
    body_part: str | None,
) -> list[Dataset]:
    """An axial CT series of `phantom`; `body_part` None leaves Body Part Examined out."""
    slices = list(
        iter_ct_slices(
            phantom,
            patient,
            study_uid,
            generate_uid(),
            frame_of_reference_uid,
            series_number=series_number,
            series_description=description,
        )
    )
    for ds in slices:
        if body_part is None:
            del ds.BodyPartExamined
        else:
            ds.BodyPartExamined = body_part
    return slices


def localizer(phantom: Phantom, patient: FakePatient, study_uid: str, for_uid: str) -> Dataset:
    """A scout: one CT Image Storage instance with ImageType LOCALIZER (a coronal projection)."""
    projection = phantom.hu.astype(np.float32).mean(axis=1)  # (slice, column)
    flat = Phantom(
        hu=projection[None, ::-1, :].astype(np.int16),
        spacing_mm=(1.0, phantom.spacing_mm[0], phantom.spacing_mm[2]),
        origin_mm=phantom.origin_mm,
        nodules=[],
        nodule_mask=np.zeros((1, *projection.shape), dtype=np.uint8),
    )
    ds = next(iter_ct_slices(flat, patient, study_uid, generate_uid(), for_uid, 1, "SCOUT"))
    ds.ImageType = LOCALIZER_TYPE
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    return ds


def _non_image(template: Dataset, sop_class_uid: str, modality: str, series_number: int) -> Dataset:
    """A new instance of another SOP class, with the study's patient and study module."""
    ds = Dataset()
    for keyword in (*IDENTITY_ATTRIBUTES, "InstitutionName"):
        if keyword in template:
            setattr(ds, keyword, copy.deepcopy(template.data_element(keyword).value))  # type: ignore[union-attr]
    make_new_instance(ds, sop_class_uid)
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = "SYNTHETIC"
    return ds


def dose_report(template: Dataset, series_number: int = 997) -> Dataset:
    """An X-Ray Radiation Dose SR (TID 10011 root only): what CT scanners send last."""
    ds = _non_image(template, X_RAY_RADIATION_DOSE_SR, "SR", series_number)
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "113701", "DCM"
    concept.CodeMeaning = "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = DicomSequence([concept])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = DicomSequence([])
    return ds


def secondary_capture(template: Dataset, series_number: int = 998) -> Dataset:
    """A dose screen as a Secondary Capture, Modality CT, as many scanners send it."""
    ds = _non_image(template, SECONDARY_CAPTURE, "CT", series_number)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64 * 64)
    return ds


def tilted_series(
    phantom: Phantom,
    tilt_deg: float,
    table_step_mm: float,
    patient: FakePatient | None = None,
) -> list[Dataset]:
    """The phantom scanned with the gantry tilted by `tilt_deg`: each slice plane is rotated
    about the patient's left-right axis and the table moves `table_step_mm` along z between
    slices, so the stack is sheared, as GE and Philips scanners write it."""
    patient = patient or FakePatient()
    depth, rows, cols = phantom.hu.shape
    oz, oy, ox = phantom.origin_mm
    dz, dy, dx = phantom.spacing_mm
    angle = math.radians(tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, math.cos(angle), -math.sin(angle)])
    # The plane's centre row travels the phantom's z range; what a tilted plane reaches
    # beyond it is air.
    count = int((depth - 1) * dz // table_step_mm) + 1
    centre_row = rows / 2
    plane_rows, plane_cols = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    template = Phantom(
        hu=np.zeros((count, rows, cols), dtype=np.int16),
        spacing_mm=(table_step_mm, dy, dx),
        origin_mm=phantom.origin_mm,
        nodules=phantom.nodules,
        nodule_mask=np.zeros((1, 1, 1), dtype=np.uint8),
    )
    slices = list(iter_ct_slices(template, patient, generate_uid(), generate_uid(), generate_uid()))
    hu = phantom.hu.astype(np.float32)
    for k, ds in enumerate(slices):
        # The plane pivots about its centre row, which sits on the table's z.
        z_centre = oz + k * table_step_mm
        position = np.array([ox, oy + centre_row * dy, z_centre]) - col_dir * centre_row * dy
        world = (
            position[None, None, :]
            + plane_cols[..., None] * dx * row_dir
            + plane_rows[..., None] * dy * col_dir
        )
        index = np.stack(
            [
                (world[..., 2] - oz) / dz,
                (world[..., 1] - oy) / dy,
                (world[..., 0] - ox) / dx,
            ]
        )
        plane = ndimage.map_coordinates(hu, index, order=1, mode="constant", cval=HU_AIR)
        stored = (np.rint(plane) - RESCALE_INTERCEPT).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.GantryDetectorTilt = tilt_deg
        ds.SliceLocation = round(float(z_centre), 4)
    return slices


def enhanced_ct(slices: Sequence[Dataset]) -> Dataset:
    """The single-frame series as one Enhanced CT instance with per-frame functional groups."""
    first = slices[0]
    ds = Dataset()
    skip = {
        "PixelData",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "InstanceNumber",
        "SliceLocation",
        "SOPInstanceUID",
        "SOPClassUID",
    }
    for element in first:
        if element.keyword and element.keyword not in skip and element.tag.group != 0x0029:
            ds.add(copy.deepcopy(element))
    make_new_instance(ds, ENHANCED_CT)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(slices)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = list(first.PixelSpacing)
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(first.ImageOrientationPatient)
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    transform = Dataset()
    transform.RescaleIntercept = first.RescaleIntercept
    transform.RescaleSlope = first.RescaleSlope
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for item in slices:
        group = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = list(item.ImagePositionPatient)
        group.PlanePositionSequence = DicomSequence([plane])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    pixels: list[npt.NDArray[np.generic]] = [np.asarray(item.pixel_array) for item in slices]
    ds.PixelData = np.stack(pixels).tobytes()
    return ds


def write_site_study(
    out_dir: Path,
    chest: Phantom,
    patient: FakePatient | None = None,
    head_lies_as_chest: bool = False,
) -> dict[str, list[Path]]:
    """A study as a site sends it on one order: localizer, head CT, chest CT, dose SR and a
    secondary-capture dose screen. Returns the written files per series name."""
    patient = patient or FakePatient()
    study_uid, for_uid = generate_uid(), generate_uid()
    head = make_head_phantom(seed=11)
    series: dict[str, list[Dataset]] = {
        "localizer": [localizer(chest, patient, study_uid, for_uid)],
        "head": ct_series(
            head,
            patient,
            study_uid,
            generate_uid(),
            3,
            "HEAD W/O 2.5MM",
            "CHEST" if head_lies_as_chest else "HEAD",
        ),
        "chest": ct_series(chest, patient, study_uid, for_uid, 4, "CHEST W/O 1.5MM", "CHEST"),
    }
    series["dose_report"] = [dose_report(series["chest"][0])]
    series["dose_screen"] = [secondary_capture(series["chest"][0])]
    written: dict[str, list[Path]] = {}
    for name, datasets in series.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for index, ds in enumerate(datasets):
            path = folder / f"{index:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written[name].append(path)
    return written
