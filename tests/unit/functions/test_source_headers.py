"""Source headers: each file cut before its pixels, packed in volume order, read back whole."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from functions.common.source_headers import (
    header_bytes,
    pack_source_headers,
    unpack_source_headers,
)
from imaging_ai.errors import ContractError

# pydicom's own files: explicit VR little endian, implicit VR, explicit VR big endian.
FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]


def _read(name: str) -> tuple[bytes, pydicom.Dataset]:
    path = get_testdata_file(name)
    assert path is not None
    file_bytes = open(path, "rb").read()  # noqa: SIM115 - small test file
    return file_bytes, pydicom.dcmread(io.BytesIO(file_bytes))


@pytest.mark.parametrize("name", FILES)
def test_header_keeps_every_element_but_the_pixels(name: str) -> None:
    # Given a real DICOM file with pixel data, read as preprocess reads it
    file_bytes, dataset = _read(name)
    # When its header is cut out, packed and unpacked
    header = header_bytes(file_bytes, dataset)
    (reread,) = unpack_source_headers(pack_source_headers([header]))
    # Then it is smaller than the file, has no pixel data and every element before the pixels
    # is equal (after them come only trailing padding or a signature over the original)
    assert len(header) < len(file_bytes) - len(dataset.PixelData) + 200
    assert "PixelData" not in reread
    expected = {e.tag: e.value for e in dataset if e.tag < 0x7FE00010}
    assert {e.tag: e.value for e in reread} == expected


def test_headers_come_back_in_volume_order() -> None:
    # Given three slices' headers in the order the volume put them
    file_bytes, _ = _read("CT_small.dcm")
    headers = []
    for number in (3, 1, 2):
        ds = pydicom.dcmread(io.BytesIO(file_bytes))
        ds.InstanceNumber = number
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        raw = buffer.getvalue()
        headers.append(header_bytes(raw, pydicom.dcmread(io.BytesIO(raw))))
    # When packed and unpacked, Then the order is kept
    numbers = [int(ds.InstanceNumber) for ds in unpack_source_headers(pack_source_headers(headers))]
    assert numbers == [3, 1, 2]


def test_a_payload_that_is_not_a_tar_of_dicom_is_refused() -> None:
    with pytest.raises(ContractError, match="not a tar of DICOM"):
        unpack_source_headers(pack_source_headers([b"not dicom at all"]))
