"""Key images: a Multi-frame Grayscale Byte Secondary Capture with outlines and measurements
burned in, for the PACS viewers that show neither SEG nor SR.

Built in postprocessing from the de-identified source slices and the model's findings: every
pixel and every letter comes from de-identified data, so the cloud sees no PHI, and the edge
re-identifies the object into the original study like the SR and SEG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import Finding, ModelOutputMeta
from imaging_ai.results import codes
from imaging_ai.results.patient_study import RESULT_PATIENT_STUDY_ATTRIBUTES
from imaging_ai.results.positions import in_plane_index, slice_index
from imaging_ai.results.sr import contributing_equipment, measurement_value, tracking_identifier
from imaging_ai.results.uids import explicit_le_file_meta, result_uid

MULTIFRAME_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
KEY_IMAGES_SERIES_NUMBER = 9102
# Burned-in text must stay legible on a PACS thumbnail: small matrices are enlarged to this.
MIN_DISPLAY_SIZE = 512
_OUTLINE = 255
_AI_MARK = "AI OUTPUT - NOT A RADIOLOGIST READ"
_TYPE_2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _ordered(output: ModelOutputMeta) -> list[Finding]:
    return sorted(output.findings, key=lambda f: (f.label_value, f.component))


def key_slice_indices(labels: npt.NDArray[np.uint8], output: ModelOutputMeta) -> list[int]:
    """The slices the key images show: each finding's centroid slice, or the middle slice.

    A centroid slice that misses its label (a curved structure) moves to the slice of that
    label with the largest area, so every frame shows an outline.
    """
    geometry = output.input.source_geometry
    chosen: list[int] = []
    for finding in _ordered(output):
        k = slice_index(geometry, finding.centroid_mm)
        if not np.any(labels[k] == finding.label_value):
            areas = (labels == finding.label_value).sum(axis=(1, 2))
            k = int(np.argmax(areas))
        if k not in chosen:
            chosen.append(k)
    return chosen or [labels.shape[0] // 2]


def stored_to_hu(dataset: Dataset) -> npt.NDArray[np.float32]:
    """A slice's pixels after its Modality LUT (rescale), as float32.

    `dataset` is a single-frame image, or one frame `imaging_ai.volume.split_frames` made of
    an enhanced multi-frame image (its decoded values in `stored`, its own rescale).
    """
    stored = getattr(dataset, "stored", None)  # set by split_frames on each frame
    if stored is None:
        stored = dataset.pixel_array
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return np.asarray(stored, dtype=np.float32) * slope + intercept


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default font: no system font files are needed in Lambda.
    return ImageFont.load_default(size=size)


def _frame(
    hu: npt.NDArray[np.float32],
    labels: npt.NDArray[np.uint8],
    window: tuple[float, float],
    lines: Sequence[str],
    markers: Sequence[tuple[float, float, str]] = (),
) -> npt.NDArray[np.uint8]:
    """One key image; `markers` are (row, column, text) on the source grid, e.g. "Nodule 1"
    beside that nodule's outline, so a frame with several findings says which is which."""
    low, high = window
    scaled = np.clip((hu - low) / (high - low), 0.0, 1.0) * 254.0  # 255 is the outline alone
    zoom = max(1, math.ceil(MIN_DISPLAY_SIZE / max(hu.shape)))
    image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if zoom > 1:
        size = (hu.shape[1] * zoom, hu.shape[0] * zoom)
        image = image.resize(size, Image.Resampling.BILINEAR)
        labels = np.kron(labels, np.ones((zoom, zoom), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    font_size = max(10, image.height // 40)
    font = _font(font_size)
    y: float = 4
    for line in lines:
        box = draw.textbbox((4, y), line, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=0)
        draw.text((4, y), line, fill=_OUTLINE, font=font)
        y = box[3] + 3
    for row, column, text in markers:
        # Up and to the right of the centroid, clear of a small outline.
        at = (column * zoom + 4 * zoom, row * zoom - 6 * zoom)
        box = draw.textbbox(at, text, font=font)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=0)
        draw.text(at, text, fill=_OUTLINE, font=font)
    # The outline goes on last: no text box may hide any of it.
    pixels = np.array(image)
    mask = labels > 0
    outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, zoom // 2))
    pixels[outline] = _OUTLINE
    return pixels


def _frame_lines(card: ModelCard, findings: Sequence[Finding], index: int, count: int) -> list[str]:
    lines = [_AI_MARK, f"{card.name} v{card.version}  image {index} of {count}"]
    if card.not_for_clinical_use:
        lines.append(codes.NOT_FOR_CLINICAL_USE_SHORT)
    if not findings:
        lines.append("No finding detected by the algorithm")
    for finding in findings:
        values = []
        for key in card.measurements:
            _, unit = codes.MEASUREMENTS[key]
            value = f"{measurement_value(finding, key):.1f} {unit.value}"
            values.append(value)
        lines.append(f"{tracking_identifier(card, finding)}: {', '.join(values)}")
    return lines


def build_key_images(
    source_headers: Sequence[Dataset],
    slices_hu: Mapping[int, npt.NDArray[np.float32]],
    labels: npt.NDArray[np.uint8],
    output: ModelOutputMeta,
    card: ModelCard,
    run_id: str,
    now: datetime | None = None,
) -> Dataset:
    """Build the key-image Secondary Capture of one run.

    Parameters
    ----------
    source_headers: Sequence[pydicom.Dataset]
        De-identified source slices in volume order (Patient/Study IEs already allow-listed).
    slices_hu: Mapping[int, numpy.ndarray]
        Rescaled pixels of the slices `key_slice_indices` named, by slice index.
    labels: numpy.ndarray
        uint8 label map on the source grid.
    output: imaging_ai.model_io.ModelOutputMeta
        The findings whose outlines and measurements are burned in.
    card: imaging_ai.model_card.ModelCard
        Model name and version (burned in and in the header), display window, measurements.
    run_id: str
        The run; the same run always gives the same UIDs.

    Returns
    -------
    pydicom.Dataset
        A Multi-frame Grayscale Byte SC instance, one frame per key slice.
    """
    indices = key_slice_indices(labels, output)
    missing = [k for k in indices if k not in slices_hu]
    if missing:
        raise ContractError(f"pixels of key slices {missing} were not given")
    geometry = output.input.source_geometry
    by_slice: dict[int, list[Finding]] = {k: [] for k in indices}
    for finding in _ordered(output):
        k = slice_index(geometry, finding.centroid_mm)
        by_slice[k if k in by_slice else indices[0]].append(finding)
    frames = []
    for number, k in enumerate(indices, start=1):
        hu = slices_hu[k]
        if hu.shape != labels.shape[1:]:
            raise ContractError("key slice pixels do not match the label map's rows and columns")
        lines = _frame_lines(card, by_slice[k], number, len(indices))
        markers = [
            (*in_plane_index(geometry, f.centroid_mm), tracking_identifier(card, f))
            for f in by_slice[k]
        ]
        frames.append(_frame(hu, labels[k], card.intensity_window_hu, lines, markers))
    return _dataset(source_headers, indices, frames, by_slice, card, run_id, now)


def _dataset(
    source_headers: Sequence[Dataset],
    indices: Sequence[int],
    frames: Sequence[npt.NDArray[np.uint8]],
    by_slice: Mapping[int, Sequence[Finding]],
    card: ModelCard,
    run_id: str,
    now: datetime | None,
) -> Dataset:
    now = now or datetime.now(UTC)
    first = source_headers[0]
    pseudo_study_uid = str(first.StudyInstanceUID)
    ds = Dataset()
    # Patient and Study IEs: what the SR and SEG copy (re-identification restores them).
    for keyword in sorted(RESULT_PATIENT_STUDY_ATTRIBUTES):
        if keyword in first:
            ds[keyword] = first[keyword]
    for keyword in _TYPE_2_PATIENT_STUDY:  # present, empty when unknown
        if keyword not in ds:
            setattr(ds, keyword, "")
    description = f"{card.name} key images"
    if card.not_for_clinical_use:
        description = f"{card.name} KEY - {codes.NOT_FOR_CLINICAL_USE_SHORT}"
    ds.SOPClassUID = MULTIFRAME_GRAYSCALE_BYTE_SC
    ds.SOPInstanceUID = result_uid(pseudo_study_uid, run_id, "key-images")
    ds.SeriesInstanceUID = result_uid(pseudo_study_uid, run_id, "key-images-series")
    ds.Modality = "OT"
    ds.SeriesNumber = KEY_IMAGES_SERIES_NUMBER
    ds.SeriesDescription = description[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = card.manufacturer[:64]
    ds.ManufacturerModelName = card.name[:64]
    ds.SoftwareVersions = card.version[:64]
    ds.DeviceSerialNumber = card.weights_sha256[:16]
    ds.ConversionType = "WSD"  # workstation: rendered, not digitized
    ds.SecondaryCaptureDeviceManufacturer = card.manufacturer[:64]
    ds.SecondaryCaptureDeviceManufacturerModelName = card.name[:64]
    ds.SecondaryCaptureDeviceSoftwareVersions = card.version[:64]
    ds.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    ds.TimeOfSecondaryCapture = now.strftime("%H%M%S")
    ds.ContentDate = ds.DateOfSecondaryCapture
    ds.ContentTime = ds.TimeOfSecondaryCapture
    ds.InstanceCreationDate = ds.DateOfSecondaryCapture
    ds.InstanceCreationTime = ds.TimeOfSecondaryCapture
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    # The chest as a whole is unpaired; saying so satisfies General Series Laterality (2C).
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.ImageComments = (
        f"AI output of {card.name} version {card.version}: outlines and measurements burned in;"
        " unverified, not a radiologist's read."
    )
    ds.DerivationDescription = (
        f"Source CT slices, {card.name} {card.version} segmentation outline and measurements"
        " burned in"
    )[:1024]
    ds.SourceImageSequence = []
    for k in indices:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source_headers[k].SOPClassUID
        ref.ReferencedSOPInstanceUID = source_headers[k].SOPInstanceUID
        ds.SourceImageSequence.append(ref)
    ds.add_new(0x0018A001, "SQ", [contributing_equipment(card, now)])
    if len(frames) > 1:
        # Page Number Vector: frame n is key image n (the burned-in "image n of N").
        ds.PageNumberVector = list(range(1, len(frames) + 1))
        ds.FrameIncrementPointer = pydicom.tag.Tag("PageNumberVector")
    rows, columns = frames[0].shape
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    ds.file_meta = explicit_le_file_meta(ds)
    return ds
