"""A minimal DICOM little-endian element walker and encoder, so headers are rewritten in place."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from imaging_ai.errors import PipelineError

UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Explicit VR elements whose header carries a 4-byte length after two reserved bytes.
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
TEXT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"ST",
        b"TM",
        b"UC",
        b"UI",
        b"UR",
        b"UT",
    }
)

_U16 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_SHORT_LEN = struct.Struct("<H")
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 32-bit length
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length


class CodecError(PipelineError):
    """The bytes are not a DICOM data set this walker can follow (truncated or malformed)."""


@dataclass(slots=True)
class Element:
    """Where one element sits in the buffer; values are read only when an action needs them."""

    tag: int
    vr: bytes | None  # None when the transfer syntax is implicit VR
    start: int
    value_start: int
    length: int  # value length, or UNDEFINED_LENGTH
    end: int  # first byte after the element, delimiters included


def _header(
    buf: memoryview, pos: int, limit: int, implicit: bool
) -> tuple[int, bytes | None, int, int]:
    # One struct call per header: this runs ~270 times per CT instance (the de-id hot path).
    if pos + 8 > limit:
        raise CodecError("truncated element header")
    if implicit:
        group, element, length = _IMPLICIT_HEADER.unpack_from(buf, pos)
        return (group << 16) | element, None, length, pos + 8
    group, element, vr, short_length = _EXPLICIT_HEADER.unpack_from(buf, pos)
    tag = (group << 16) | element
    if group == 0xFFFE:
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if vr in LONG_VRS:
        if pos + 12 > limit:
            raise CodecError("truncated element header")
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise CodecError("invalid value representation")
    return tag, vr, short_length, pos + 8


def _skip_items(buf: memoryview, pos: int, limit: int, implicit: bool) -> int:
    """Return the offset after the sequence delimiter of an undefined-length value."""
    while True:
        tag, _, length, value_start = _header(buf, pos, limit, True)
        if tag == SEQUENCE_END:
            return value_start
        if tag != ITEM:
            raise CodecError("expected an item in an undefined-length value")
        if length == UNDEFINED_LENGTH:
            pos = _skip_dataset(buf, value_start, limit, implicit)
        else:
            pos = value_start + length
            if pos > limit:
                raise CodecError("item runs past the end of its container")


def _skip_dataset(buf: memoryview, pos: int, limit: int, implicit: bool) -> int:
    """Return the offset after the item delimiter closing an undefined-length item."""
    while True:
        group, element = _U16.unpack_from(buf, pos) if pos + 4 <= limit else (None, None)
        if group is None:
            raise CodecError("undefined-length item is not closed")
        if ((group << 16) | (element or 0)) == ITEM_END:
            return pos + 8
        pos = next(iter_elements(buf, pos, limit, implicit)).end


def iter_elements(buf: memoryview, pos: int, limit: int, implicit: bool) -> Iterator[Element]:
    """Yield the elements of a data set between `pos` and `limit`, stopping at an item end."""
    while pos < limit:
        tag, vr, length, value_start = _header(buf, pos, limit, implicit)
        if tag == ITEM_END:
            return
        if length == UNDEFINED_LENGTH:
            # Undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2).
            end = _skip_items(buf, value_start, limit, implicit or vr == b"UN")
        else:
            end = value_start + length
            if end > limit:
                raise CodecError("element value runs past the end of its container")
        yield Element(tag, vr, pos, value_start, length, end)
        pos = end


def iter_items(buf: memoryview, element: Element, implicit: bool) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of each item's data set inside a sequence element."""
    limit = element.end
    pos = element.value_start
    while pos < limit:
        tag, _, length, value_start = _header(buf, pos, limit, True)
        if tag == SEQUENCE_END:
            return
        if tag != ITEM:
            raise CodecError("expected an item in a sequence")
        if length == UNDEFINED_LENGTH:
            end = _skip_dataset(buf, value_start, limit, implicit)
            yield value_start, end - 8
        else:
            end = value_start + length
            if end > limit:
                raise CodecError("item runs past the end of its sequence")
            yield value_start, end
        pos = end


def pad(value: bytes, vr: bytes) -> bytes:
    if len(value) % 2:
        return value + (b"\x00" if vr in (b"UI", b"OB", b"UN") else b" ")
    return value


def encode_element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    value = pad(value, vr)
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _U16.pack(group, element) + _U32.pack(len(value)) + value
    if vr in LONG_VRS:
        return _U16.pack(group, element) + vr + b"\x00\x00" + _U32.pack(len(value)) + value
    if len(value) > 0xFFFF:
        raise CodecError("value too long for its value representation")
    return _U16.pack(group, element) + vr + _SHORT_LEN.pack(len(value)) + value


def sequence_header(tag: int, vr: bytes, implicit: bool, length: int = UNDEFINED_LENGTH) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _U16.pack(group, element) + _U32.pack(length)
    return _U16.pack(group, element) + vr + b"\x00\x00" + _U32.pack(length)


ITEM_START_UNDEFINED = _U16.pack(0xFFFE, 0xE000) + _U32.pack(UNDEFINED_LENGTH)
ITEM_DELIMITER = _U16.pack(0xFFFE, 0xE00D) + _U32.pack(0)
SEQUENCE_DELIMITER = _U16.pack(0xFFFE, 0xE0DD) + _U32.pack(0)


def read_file_meta(buf: memoryview) -> tuple[dict[int, bytes], int]:
    """Values of the file meta elements after the preamble, and where the data set starts.

    The group is always explicit VR little endian. Its group length (0002,0000) bounds it
    when it agrees with the elements: group 0002 elements after that point belong to the
    data set body (they are misplaced there, and de-identification drops them), so they can
    neither override the transfer syntax nor be parsed with the wrong VR rules. Without a
    usable group length, a peek at each group number finds the end.
    """
    bounded = _bounded_file_meta(buf)
    if bounded is not None:
        return bounded
    meta: dict[int, bytes] = {}
    pos = 132
    while pos + 4 <= len(buf) and _U16.unpack_from(buf, pos)[0] == 0x0002:
        tag, _, length, value_start = _header(buf, pos, len(buf), False)
        end = value_start + length
        if length == UNDEFINED_LENGTH or end > len(buf):
            raise CodecError("malformed file meta information")
        meta.setdefault(tag, bytes(buf[value_start:end]))
        pos = end
    return meta, pos


def _bounded_file_meta(buf: memoryview) -> tuple[dict[int, bytes], int] | None:
    if len(buf) < 144 or bytes(buf[132:138]) != b"\x02\x00\x00\x00UL":
        return None
    if _SHORT_LEN.unpack_from(buf, 138)[0] != 4:
        return None
    meta_end = 144 + _U32.unpack_from(buf, 140)[0]
    if meta_end > len(buf):
        return None
    meta: dict[int, bytes] = {}
    pos = 144
    while pos < meta_end:
        tag, _, length, value_start = _header(buf, pos, meta_end, False)
        end = value_start + length
        if tag >> 16 != 0x0002 or length == UNDEFINED_LENGTH or end > meta_end:
            return None
        meta[tag] = bytes(buf[value_start:end])
        pos = end
    return meta, meta_end
