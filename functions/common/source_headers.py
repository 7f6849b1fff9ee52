"""The source headers preprocess hands to postprocess: each slice's DICOM file up to its pixels.

A tar of Part 10 files, one per source slice in volume order, each cut just before its Pixel
Data element. Cutting the bytes preprocess already holds costs nothing, and pydicom reads a
file lazily: for a 200-slice series this is ~0.1 s each way, where DICOM JSON took ~0.2 s to
write and 0.4-0.9 s to read (`Dataset.from_json` converts every element).
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from imaging_ai.errors import ContractError
from imaging_ai.volume import Volume

_PIXEL_DATA = 0x7FE00010
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"


def header_bytes(file_bytes: bytes, dataset: Dataset) -> bytes:
    """`file_bytes` (the file `dataset` was just read from) up to its Pixel Data element.

    Falls back to writing the dataset without pixels where the element's place cannot be
    confirmed in the bytes (big endian, or pixel data already converted). Elements after the
    pixels (trailing padding, a digital signature over the original) are not kept: results
    reference their source, they do not re-sign it.
    """
    element = dataset.get_item(_PIXEL_DATA) if _PIXEL_DATA in dataset else None
    value_tell = getattr(element, "value_tell", None)
    if element is None:
        return file_bytes
    if value_tell is not None:
        # Explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length; implicit: tag, length.
        for header_length in (12, 8):
            start = int(value_tell) - header_length
            if start > 0 and file_bytes[start : start + 4] == _PIXEL_DATA_TAG_LE:
                return file_bytes[:start]
    # A new dataset: `Dataset.copy()` shares its elements, so a deletion would reach ours.
    stripped = FileDataset(
        "", {e.tag: e for e in dataset if e.tag < _PIXEL_DATA}, file_meta=dataset.file_meta
    )
    buffer = io.BytesIO()
    dcmwrite(buffer, stripped, enforce_file_format=True)
    return buffer.getvalue()


def volume_header_bytes(volume: Volume, header_bytes_by_uid: dict[str, bytes]) -> list[bytes]:
    """The header of each volume slice, in volume order.

    A single-frame slice is its file's own bytes up to the pixels. The frames of an enhanced
    multi-frame instance share one SOP Instance UID: each is written from its per-frame header
    (frame number, position), which `join_frames` needs to rebuild the instance for the SEG.
    """
    counts = Counter(volume.sop_instance_uids)
    return [
        header_bytes_by_uid[uid] if counts[uid] == 1 else _dataset_bytes(header)
        for uid, header in zip(volume.sop_instance_uids, volume.headers, strict=True)
    ]


def _dataset_bytes(dataset: Dataset) -> bytes:
    file_meta = FileMetaDataset()
    # The frames share their instance's file meta object: copy before filling it in.
    file_meta.update(getattr(dataset, "file_meta", None) or FileMetaDataset())
    if "TransferSyntaxUID" not in file_meta:
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    stripped = FileDataset(
        "", {e.tag: e for e in dataset if e.tag < _PIXEL_DATA}, file_meta=file_meta
    )
    buffer = io.BytesIO()
    dcmwrite(buffer, stripped, enforce_file_format=True)
    return buffer.getvalue()


def pack_source_headers(headers: Sequence[bytes]) -> bytes:
    """One tar of the headers, members named by their place in the volume."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index, header in enumerate(headers):
            info = tarfile.TarInfo(name=f"{index:06d}.dcm")
            info.size = len(header)
            archive.addfile(info, io.BytesIO(header))
    return buffer.getvalue()


def unpack_source_headers(payload: bytes) -> list[Dataset]:
    """The headers in volume order (no pixel data)."""
    datasets: list[Dataset] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise ContractError("source headers hold a non-file member")
                datasets.append(pydicom.dcmread(io.BytesIO(extracted.read())))
    except (tarfile.TarError, InvalidDicomError, EOFError) as error:
        raise ContractError(
            f"source headers are not a tar of DICOM files ({type(error).__name__})"
        ) from None
    return datasets
