"""Build a volume from DICOM slices and bring it onto the model's grid as `model.json` says."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imaging_ai.dicom_policy import UNCOMPRESSED_LITTLE_ENDIAN
from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import VolumeGeometry
from imaging_ai.reslice import ResliceError, check_limits, regularize, stack_layout

FloatArray = npt.NDArray[np.float32]

# Tolerances: DICOM DS values carry rounding; real series stay far inside these.
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_RELATIVE_TOLERANCE = 0.01


class GeometryError(ContractError):
    """The slices do not form one regular volume; the message says why (no values, no PHI)."""


@dataclass
class Volume:
    """Rescaled voxels (slice, row, column) with the grid they lie on and their source slices.

    `headers` are the source datasets in volume order with their pixel data dropped.
    """

    voxels: FloatArray
    geometry: VolumeGeometry
    sop_instance_uids: list[str]
    headers: list[Dataset]

    @property
    def nbytes(self) -> int:
        return int(self.voxels.nbytes)


def _require(ds: Dataset, keyword: str) -> object:
    value = ds.get(keyword)
    if value is None or value == "":
        raise GeometryError(f"a slice lacks {keyword}")
    return value


def _floats(ds: Dataset, keyword: str, count: int) -> npt.NDArray[np.float64]:
    values = np.asarray([float(v) for v in _require(ds, keyword)], dtype=np.float64)  # type: ignore[attr-defined]
    if values.shape != (count,):
        raise GeometryError(f"{keyword} must hold {count} values")
    return values


class _Frame(Dataset):
    """One frame of an enhanced multi-frame instance, flattened into a single-slice header;
    `stored` holds its already decoded stored values."""

    stored: npt.NDArray[np.generic]


# Functional group macros whose attributes a frame needs to be placed and rescaled.
_FRAME_MACROS = (
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelMeasuresSequence",
    "PixelValueTransformationSequence",
)


_NOT_COPIED_TO_FRAMES = frozenset(
    {"PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"}
)


def split_frames(datasets: list[Dataset]) -> list[Dataset]:
    """Single-frame slices as they are; each enhanced multi-frame instance as its frames.

    Per-frame functional groups override shared ones, as PS3.3 C.7.6.16 says.
    """
    if all(int(ds.get("NumberOfFrames", 1) or 1) == 1 for ds in datasets):
        return datasets
    frames: list[Dataset] = []
    for ds in datasets:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        if count == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
            frames.append(ds)
            continue
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if len(per_frame) != count:
            raise GeometryError("a multi-frame image lacks per-frame functional groups")
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        try:
            pixels = np.asarray(ds.pixel_array).reshape(count, int(ds.Rows), int(ds.Columns))
        except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
            raise GeometryError(f"cannot decode pixel data ({type(error).__name__})") from error
        top = [element for element in ds if element.keyword not in _NOT_COPIED_TO_FRAMES]
        for index in range(count):
            frame = _Frame()
            if hasattr(ds, "file_meta"):
                frame.file_meta = ds.file_meta
            for element in top:
                frame.add(element)
            for groups in (shared, per_frame[index]):
                for macro in _FRAME_MACROS:
                    for item in groups.get(macro) or []:
                        for element in item:
                            frame[element.tag] = element
            frame.NumberOfFrames = 1
            # Which frame of its instance this is: results reference it (SEG, SR).
            frame.ReferencedFrameNumber = index + 1
            frame.stored = pixels[index]
            frames.append(frame)
        if "PixelData" in ds:
            del ds.PixelData
    return frames


def join_frames(
    frames: list[Dataset], labels: npt.NDArray[np.uint8]
) -> tuple[list[Dataset], npt.NDArray[np.uint8]]:
    """`split_frames` undone for results: frame headers of one multi-frame instance (in volume
    order, as postprocess reads them) become one header with functional groups in the
    instance's own frame order, and the label map's slices follow that order, so a SEG
    references the right frame numbers. Single-frame headers come back as they are."""
    uids = {str(ds.get("SOPInstanceUID", "")) for ds in frames}
    if len(frames) < 2 or len(uids) != 1 or not all("ReferencedFrameNumber" in ds for ds in frames):
        return frames, labels
    order = np.argsort([int(ds.get("ReferencedFrameNumber", 0)) for ds in frames], kind="stable")
    first = frames[0]
    joined = Dataset()
    for element in first:
        if element.keyword not in _PER_FRAME_KEYWORDS:
            joined.add(copy.deepcopy(element))
    if hasattr(first, "file_meta"):
        joined.file_meta = first.file_meta
    joined.NumberOfFrames = len(frames)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.get("SliceThickness") or 1.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    joined.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for index in order:
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = frames[int(index)].ImagePositionPatient
        group.PlanePositionSequence = DicomSequence([position])
        per_frame.append(group)
    joined.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return [joined], labels[order]


_PER_FRAME_KEYWORDS = frozenset(
    {
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "NumberOfFrames",
        "ReferencedFrameNumber",
    }
)


def _slice_pixels(ds: Dataset) -> npt.NDArray[np.generic]:
    """Stored values of one single-frame slice; uncompressed little endian skips the codec."""
    if isinstance(ds, _Frame):
        return ds.stored
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits, signed = int(ds.BitsAllocated), int(ds.PixelRepresentation) == 1
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    stored = int(ds.get("BitsStored", bits))
    if syntax in UNCOMPRESSED_LITTLE_ENDIAN and bits in (8, 16) and stored == bits:
        dtype = np.dtype(f"{'<i' if signed else '<u'}{bits // 8}")
        raw = ds.PixelData
        expected = rows * columns * dtype.itemsize
        if len(raw) < expected:
            raise GeometryError("pixel data is shorter than Rows x Columns")
        return np.frombuffer(raw, dtype=dtype, count=rows * columns).reshape(rows, columns)
    try:
        # pydicom's pixel handlers decode RLE, JPEG, JPEG-LS and JPEG 2000 (pylibjpeg plugins).
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
        raise GeometryError(f"cannot decode pixel data ({type(error).__name__})") from error


def build_volume(
    slices: Iterable[Dataset], max_tilt_deg: float = 0.0, max_gap_mm: float = 0.0
) -> Volume:
    """Sort slices along their normal, check they form one regular grid, apply rescale.

    A gantry tilt up to `max_tilt_deg` and uneven spacing with gaps up to `max_gap_mm` are
    resampled onto a regular grid (`imaging_ai.reslice`); the defaults (0) refuse both. An
    enhanced multi-frame instance is read as the slices its frames are.

    Pixel data is dropped from each dataset as soon as it is decoded, so peak memory is the
    float32 volume plus the still-undecoded slices.
    """
    datasets = split_frames(list(slices))
    if len(datasets) < 2:
        raise GeometryError("a volume needs at least 2 slices")
    first = datasets[0]
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise GeometryError("only single-sample (grayscale) images are supported")
    orientation = _floats(first, "ImageOrientationPatient", 6)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(float(row_dir @ col_dir)) > 1e-3:
        raise GeometryError("ImageOrientationPatient is not two orthonormal directions")
    pixel_spacing = _floats(first, "PixelSpacing", 2)
    shape2d = (int(_require(first, "Rows")), int(_require(first, "Columns")))  # type: ignore[call-overload]
    frame_of_reference = first.get("FrameOfReferenceUID")

    positions = np.empty((len(datasets), 3), dtype=np.float64)
    for index, ds in enumerate(datasets):
        if (int(ds.Rows), int(ds.Columns)) != shape2d:
            raise GeometryError("slices differ in Rows or Columns")
        if np.abs(_floats(ds, "ImageOrientationPatient", 6) - orientation).max() > (
            _ORIENTATION_TOLERANCE
        ):
            raise GeometryError("slices differ in ImageOrientationPatient")
        if np.abs(_floats(ds, "PixelSpacing", 2) - pixel_spacing).max() > (
            _SPACING_RELATIVE_TOLERANCE * pixel_spacing.min()
        ):
            raise GeometryError("slices differ in PixelSpacing")
        if ds.get("FrameOfReferenceUID") != frame_of_reference:
            raise GeometryError("slices differ in FrameOfReferenceUID")
        positions[index] = _floats(ds, "ImagePositionPatient", 3)

    along = positions @ normal
    order = np.argsort(along, kind="stable")
    try:
        layout = stack_layout(
            positions[order], row_dir, col_dir, (float(pixel_spacing[0]), float(pixel_spacing[1]))
        )
        check_limits(layout, max_tilt_deg, max_gap_mm)
    except ResliceError as error:
        raise GeometryError(str(error)) from None
    slice_spacing = float(np.median(layout.steps_mm))

    voxels = np.empty((len(datasets), *shape2d), dtype=np.float32)
    headers: list[Dataset] = []
    for k, index in enumerate(order):
        ds = datasets[int(index)]
        stored = _slice_pixels(ds)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        target = voxels[k]
        if slope == 1.0:
            # One pass instead of two (CT stores slope 1): int16 -> float32 is exact, and
            # the sum is the same float32 addition the second pass did.
            np.add(stored, np.float32(intercept), out=target, casting="unsafe")
        else:
            np.multiply(stored, slope, out=target, casting="unsafe")
            target += intercept
        del stored
        if "PixelData" in ds:
            del ds.PixelData
        headers.append(ds)
    datasets.clear()

    geometry = VolumeGeometry(
        shape=(int(voxels.shape[0]), shape2d[0], shape2d[1]),
        spacing_mm=(slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_mm=_vector(positions[order[0]]),
        row_direction=_vector(row_dir),
        column_direction=_vector(col_dir),
        slice_direction=_vector(normal),
    )
    if not layout.regular:
        # The headers stay the original slices: results are mapped back onto them.
        voxels, geometry = regularize(voxels, layout, geometry)
    return Volume(
        voxels=voxels,
        geometry=geometry,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
        headers=headers,
    )


def _vector(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def target_grid(geometry: VolumeGeometry, spacing_mm: Sequence[float]) -> VolumeGeometry:
    """The grid with the model's spacing that covers the source from voxel 0's centre on."""
    shape = tuple(
        int(np.floor((n - 1) * source / target + 1e-6)) + 1
        for n, source, target in zip(geometry.shape, geometry.spacing_mm, spacing_mm, strict=True)
    )
    return geometry.model_copy(
        update={
            "shape": shape,
            "spacing_mm": (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])),
        }
    )


def _linear_taps(
    source_count: int, source_spacing: float, target_count: int, target_spacing: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    position = np.arange(target_count, dtype=np.float64) * (target_spacing / source_spacing)
    position = np.clip(position, 0.0, source_count - 1)
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, source_count - 1)
    return lower, upper, (position - lower).astype(np.float32)


def resample_normalize(
    voxels: FloatArray,
    geometry: VolumeGeometry,
    spacing_mm: Sequence[float],
    window: tuple[float, float],
) -> tuple[FloatArray, VolumeGeometry]:
    """Trilinear resampling onto `target_grid`, then clip to `window` and scale to [0, 1].

    Works one output slice at a time (separable linear taps), so besides input and output it
    holds only a few slices: peak memory stays near input + output.
    """
    grid = target_grid(geometry, spacing_mm)
    (depth, rows, columns), source = grid.shape, geometry.shape
    slice_lo, slice_hi, slice_w = _linear_taps(
        source[0], geometry.spacing_mm[0], depth, grid.spacing_mm[0]
    )
    row_lo, row_hi, row_w = _linear_taps(
        source[1], geometry.spacing_mm[1], rows, grid.spacing_mm[1]
    )
    col_lo, col_hi, col_w = _linear_taps(
        source[2], geometry.spacing_mm[2], columns, grid.spacing_mm[2]
    )
    same_rows = rows == source[1] and grid.spacing_mm[1] == geometry.spacing_mm[1]
    same_cols = columns == source[2] and grid.spacing_mm[2] == geometry.spacing_mm[2]
    low, high = float(window[0]), float(window[1])
    if high <= low:
        raise ContractError("intensity window must have high > low")
    scale = np.float32(1.0 / (high - low))
    row_w_col, col_w_row = row_w[:, None], col_w[None, :]

    output = np.empty(grid.shape, dtype=np.float32)
    for k in range(depth):
        if slice_w[k] > 0.0:
            plane = voxels[slice_lo[k]] * (1.0 - slice_w[k])
            plane += voxels[slice_hi[k]] * slice_w[k]
        else:
            # On a source slice (every slice when the model keeps the slice spacing): x * 1.0
            # is x, so read the slice itself; it is never written, only gathered or clipped out.
            plane = voxels[slice_lo[k]]
        if not same_rows:
            upper = plane[row_hi]
            plane = plane[row_lo]
            plane += (upper - plane) * row_w_col
        if not same_cols:
            upper = plane[:, col_hi]
            plane = plane[:, col_lo]
            plane += (upper - plane) * col_w_row
        target = output[k]
        np.clip(plane, low, high, out=target)
        target -= low
        target *= scale
    return output, grid


def prepare_model_input(volume: Volume, card: ModelCard) -> tuple[FloatArray, VolumeGeometry]:
    """The model's input image and grid, as its `model.json` asks."""
    return resample_normalize(
        volume.voxels, volume.geometry, card.input_spacing_mm, card.intensity_window_hu
    )
