"""Read the few attributes the intake needs from a received instance, without pydicom's full parse.

A received CT slice has ~270 elements; the intake needs ~15 of them. Walking the element
headers and handing only those raw values to pydicom (which still decodes them: character
sets, value representations) costs a quarter of `dcmread(stop_before_pixels=True)`, and the
walk checks the structure of the whole data set, pixel data length included, on the way.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from edge_forwarder.deid.codec import iter_elements
from imaging_ai.dicom_policy import IMPLICIT_VR_LITTLE_ENDIAN

_SPECIFIC_CHARACTER_SET = 0x00080005
_PIXEL_GROUP = 0x7FE0
# Attributes the intake reads are UIDs, codes and short texts: anything larger is an attack
# or garbage, and is never copied into memory.
MAX_VALUE_BYTES = 64 * 1024


class HeaderError(ValueError):
    """The data set's structure is broken, or a wanted value is absurdly large."""


def tags_for(keywords: Iterable[str]) -> frozenset[int]:
    tags = {_SPECIFIC_CHARACTER_SET}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"not a DICOM keyword: {keyword}")
        tags.add(int(tag))
    return frozenset(tags)


def read_header(
    path: Path, offset: int, syntax: str, wanted: frozenset[int]
) -> tuple[Dataset, int | None]:
    """The wanted top-level attributes as a pydicom Dataset, and the pixel data length
    (None when the instance has no pixel data element).

    `offset` is where the data set starts in the Part 10 file; `syntax` must be little endian.
    """
    implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    raw: dict[BaseTag, DataElement | RawDataElement] = {}
    pixel_length = None
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            for element in iter_elements(view, offset, len(view), implicit):
                if element.tag >> 16 == _PIXEL_GROUP:
                    pixel_length = element.length
                elif element.tag in wanted:
                    if element.length > MAX_VALUE_BYTES:
                        raise HeaderError("oversized_value")
                    vr = element.vr.decode("ascii") if element.vr is not None else None
                    value = bytes(view[element.value_start : element.end])
                    tag = Tag(element.tag)
                    raw[tag] = RawDataElement(tag, vr, element.length, value, 0, implicit, True)
        except HeaderError:
            raise
        except Exception as error:  # CodecError, or a header pydicom's types cannot hold
            raise HeaderError("undecodable_dataset") from error
        finally:
            view.release()
    dataset = Dataset(raw)
    dataset.set_original_encoding(implicit, True)
    return dataset, pixel_length
