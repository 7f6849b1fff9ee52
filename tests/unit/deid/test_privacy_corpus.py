"""The engine against a corpus the generator never makes: hidden encodings and planted free text."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from edge_forwarder.deid import Deidentifier, DeidError, DeidOptions, QuarantineReason
from edge_forwarder.deid.engine import _shift_dates
from edge_forwarder.deid.table import _parse_tag, table_rows
from tests.privacy_corpus import PLANTED, _un, implicit_sequence_value, plant, to_part10
from tests.unit.deid.conftest import SECRET

FREE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})


def _leaks(output: bytes, planted: dict[str, str]) -> list[str]:
    lowered = output.lower()
    return [name for name, value in planted.items() if value.lower().encode() in lowered]


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("clean", [False, True], ids=["default", "clean-descriptors"])
def test_no_planted_value_survives_any_encoding(ct: Dataset, implicit: bool, clean: bool) -> None:
    # Given an instance with identifying values in descriptors, UN sequences (defined and
    # undefined length), an unknown UN tag, private blocks of two creators, a private sequence,
    # three-deep nesting, DT/TM values and file meta elements in the body
    data = to_part10(plant(ct), implicit=implicit)
    assert all(value.lower().encode() in data.lower() for value in PLANTED.values())
    # When it is de-identified
    options = DeidOptions(clean_descriptors=clean)
    result = Deidentifier(SECRET, options).deidentify_bytes(data)
    # Then none of the planted values is anywhere in the output bytes
    leaks = _leaks(result.dataset_bytes, PLANTED)
    print(f"planted={len(PLANTED)} found={len(leaks)} implicit={implicit} clean={clean}")
    assert leaks == []
    assert ct.SOPInstanceUID.encode() not in result.dataset_bytes


def test_un_sequences_are_de_identified_as_sequences_not_dropped(ct: Dataset) -> None:
    # Given standard sequences sent as UN (defined and undefined length)
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(plant(ct)))
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    # Then the reference inside the defined-length one points at the pseudonymous instance
    referenced = out.ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == result.pseudo.sop_instance_uid
    assert referenced.ReferencedSOPClassUID == ct.SOPClassUID
    assert "ImageComments" not in referenced
    # and the undefined-length one keeps its codes but not the comment or the birth time
    procedure = out.ProcedureCodeSequence[0]
    assert procedure.CodeMeaning == "CT of chest"
    assert "ImageComments" not in procedure and "PatientBirthTime" not in procedure
    # and the three-deep nesting keeps its codes, with the DateTime shifted, offset intact
    third = out.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]
    third = third.PrimaryAnatomicStructureSequence[0]
    assert third.CodeMeaning == "Lung structure"
    shift = result.pseudo.date_shift_days
    assert third.DateTime == _shift_dates(b"20231231120000.000000-0500", shift, b"DT").decode()
    assert third.DateTime.endswith("120000.000000-0500")
    # and no file meta element, no unknown UN tag, no private element is left in the body
    assert not [e for e in out if e.tag.group in (0x0002,) or e.tag.is_private]
    assert 0x00089990 not in out


def test_un_value_that_is_not_a_sequence_is_removed(ct: Dataset) -> None:
    # Given a kept standard sequence sent as UN whose bytes are not items at all
    ds = plant(ct)
    ds[0x00081032] = _un(0x00081032, b"\xfe\xff\x00\xe0\x10\x00\x00\x00WISNIEWSKI\x00\x00")
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    # Then it is removed, not copied through
    assert b"WISNIEWSKI" not in result.dataset_bytes
    assert "ProcedureCodeSequence" not in pydicom.dcmread(io.BytesIO(result.dataset_bytes))


def test_kept_attribute_sent_as_un_is_written_with_its_dictionary_vr(ct: Dataset) -> None:
    # Given a kept (non-identifying) attribute sent as UN
    ds = plant(ct)
    ds[0x00180015] = _un(0x00180015, b"CHEST ")
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    # Then it keeps its value under its real VR
    assert out["BodyPartExamined"].VR == "CS" and out.BodyPartExamined == "CHEST"


def test_retained_private_sequence_is_walked_with_its_own_creators(ct: Dataset) -> None:
    # Given a site that keeps one private sequence of creator B
    options = DeidOptions(
        retain_safe_private=True, safe_private_allow_list=(("HOSPITAL RIS NOTES", 0x02),)
    )
    result = Deidentifier(SECRET, options).deidentify_bytes(to_part10(plant(ct)))
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    # Then the sequence stays, but the item's own private block (creator A) does not, and
    # neither does creator B's element that is not on the list
    assert 0x00091102 in out
    assert [e.tag for e in out[0x00091102].value[0]] == []
    for name in ("private_nested_value", "private_creator_a_value", "private_creator_b_value"):
        assert PLANTED[name].lower().encode() not in result.dataset_bytes.lower()


def test_group_0002_after_the_file_meta_does_not_override_it(ct: Dataset) -> None:
    # Given a body whose first element claims another transfer syntax
    ds = plant(ct)
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.2")  # big endian: would garble the walk
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    out = pydicom.dcmread(io.BytesIO(result.dataset_bytes))
    # Then the file meta's own transfer syntax is used and the body element is dropped
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.PixelData == ct.PixelData


def _free_text_rows() -> list[tuple[int, str]]:
    """Free-text rows of the table, less those a default option keeps on purpose.

    The default options retain patient characteristics (e.g. Ethnic Group, `pat=K`); no
    default option other than those may keep a free-text attribute.
    """
    default_keys = DeidOptions().enabled_option_keys()
    assert "desc" not in default_keys  # Clean Descriptors is opt-in
    rows = []
    for row in table_rows():
        tag = _parse_tag(row.tag)
        if tag is None or tag in (0x00100010, 0x00100020):  # pseudonymised, checked elsewhere
            continue
        if any(row.options.get(key) == "K" for key in default_keys):
            assert row.options.get("pat") == "K", row.name
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in FREE_TEXT_VRS:
            rows.append((tag, vr))
    return rows


def test_default_profile_removes_every_free_text_attribute_of_the_table(ct: Dataset) -> None:
    # Given every free-text attribute of Table E.1-1, at the top level and inside a sequence,
    # each holding a value unique to it
    rows = _free_text_rows()
    assert len(rows) > 150
    ds = Dataset()
    ds.update(ct)
    ds.file_meta = ct.file_meta
    item = Dataset()
    planted: dict[str, str] = {}
    for tag, vr in rows:
        value = f"ZQ{tag:08X}X"
        nested = f"ZN{tag:08X}X"
        planted[keyword_for_tag(tag) or hex(tag)] = value
        planted[f"nested {keyword_for_tag(tag) or hex(tag)}"] = nested
        ds.add_new(tag, vr, value)
        item.add_new(tag, vr, nested)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "1", "99X", "x"
    code.PurposeOfReferenceCodeSequence = Sequence([item])
    ds.AnatomicRegionSequence = Sequence([code])
    # When the default profile runs (Clean Descriptors off)
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    # Then not one of those values is left
    leaks = _leaks(result.dataset_bytes, planted)
    print(f"free-text attributes checked={len(rows)} planted={len(planted)} found={len(leaks)}")
    assert leaks == []


@pytest.mark.parametrize(
    ("value", "shifted"),
    [
        (b"20231231120000.000000-0500", b"20231230120000.000000-0500"),
        (b"20231231120000+0100", b"20231230120000+0100"),
        (b"20200101-20201231", b"20191231-20201230"),
        (b"2020010112-2020010212", b"2019123112-2020010112"),
    ],
)
def test_datetime_offsets_are_not_read_as_ranges(value: bytes, shifted: bytes) -> None:
    assert _shift_dates(value, -1, b"DT") == shifted


def test_implicit_sequence_helper_round_trips() -> None:
    # The corpus builder's UN value parses back as the items it was built from
    item = Dataset()
    item.CodeValue = "1"
    value = implicit_sequence_value([item], undefined_length=False)
    ds = Dataset()
    ds[0x00081032] = _un(0x00081032, value)
    assert ds.ProcedureCodeSequence[0].CodeValue == "1"


def test_sequence_declared_with_another_vr_is_removed(ct: Dataset) -> None:
    # Given a kept standard sequence declared as OB, its items holding a name
    ds = plant(ct)
    item = Dataset()
    item.PersonName = "NOWAKOWSKA^IRENA"
    ds[0x00081032] = RawDataElement(
        BaseTag(0x00081032), "OB", 0, implicit_sequence_value([item], False), 0, False, True
    )
    result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    # Then it is removed rather than copied as opaque bytes
    assert b"NOWAKOWSKA" not in result.dataset_bytes
    assert "ProcedureCodeSequence" not in pydicom.dcmread(io.BytesIO(result.dataset_bytes))


MARKER = b"ZQMARKERZQ"


@settings(max_examples=120, derandomize=True, database=None, deadline=None)
@given(
    prefix=st.binary(max_size=24),
    suffix=st.binary(max_size=24),
    tag=st.sampled_from([0x00081032, 0x00081140, 0x00089990, 0x00180015, 0x00400275]),
    undefined=st.booleans(),
)
def test_any_un_value_is_parsed_or_removed_never_copied(
    ct_slices: list[Dataset], prefix: bytes, suffix: bytes, tag: int, undefined: bool
) -> None:
    # Given a UN value of arbitrary bytes around a marker, on a sequence, an unknown tag, a
    # kept attribute or a removed sequence, with defined or undefined length
    ds = Dataset()
    ds.update(ct_slices[1])
    ds.file_meta = ct_slices[1].file_meta
    item = Dataset()
    item.PersonName = MARKER.decode()
    value = prefix + implicit_sequence_value([item], undefined) + MARKER + suffix
    if undefined:
        value = implicit_sequence_value([item], True)  # the walker must find the delimiter
    ds[tag] = _un(tag, value, undefined)
    # When it is de-identified, it either comes out without the marker or is refused
    try:
        result = Deidentifier(SECRET).deidentify_bytes(to_part10(ds))
    except DeidError as refused:
        assert refused.reason is QuarantineReason.UNDECODABLE
        return
    if tag == 0x00180015:
        return  # a kept CS attribute keeps its (non-identifying) value under its real VR
    assert MARKER not in result.dataset_bytes


def test_trailing_padding_and_stray_items_are_not_copied(ct: Dataset) -> None:
    # Given bytes after the pixel data: trailing padding and a stray item, both holding text
    padding = b"PADDING NOWICKA-4471 "
    stray = b"STRAY ITEM CZERWINSKI!"
    data = to_part10(plant(ct))
    data += struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, len(padding) + 1) + padding + b"\0"
    data += struct.pack("<HHI", 0xFFFE, 0xE000, len(stray)) + stray
    # When de-identified
    result = Deidentifier(SECRET).deidentify_bytes(data)
    # Then neither comes out
    assert b"NOWICKA" not in result.dataset_bytes and b"CZERWINSKI" not in result.dataset_bytes
    assert pydicom.dcmread(io.BytesIO(result.dataset_bytes)).PixelData == ct.PixelData
