"""A privacy corpus that is not the generator's: identifying values where imaging_ai.synthetic
never puts them, in the encodings that hide them (UN sequences, private blocks, deep nesting,
DT/TM, file meta elements inside the data set body).

Every planted value is unique and occurs nowhere else in the instance, so finding it anywhere
downstream is a leak, whatever the patient identity the crosswalk puts back.
"""

from __future__ import annotations

import copy
import struct
from io import BytesIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

# name -> value; the needle a test searches for (case-insensitively) in every byte downstream.
PLANTED: dict[str, str] = {
    "study_description_name": "KOWALCZYK",
    "study_description_given_name": "ZBIGNIEW",
    "series_description_phone": "617-555-0199",
    "image_comments_id": "Q7731905",
    "protocol_name_surname": "BRZECZYSZCZYKIEWICZ",
    "patient_history_physician": "WOJCIECHOWSKA",
    "reason_for_study_phone": "555-0142",
    "requested_procedure_text": "PRZYBYSZEWSKI",
    "performed_step_description_mrn": "MRN88231077",
    "un_defined_length_person": "WISNIEWSKI^TOMASZ",
    "un_defined_length_comment": "LEWANDOWSKA",
    "un_undefined_length_comment": "ZIELINSKA-ONE",
    "un_unknown_tag_text": "SZYMANOWSKI",
    "private_creator_a_value": "DABROWSKI-77",
    "private_creator_b_value": "ins-9940-2231",
    "private_nested_value": "KAMINSKA^EWA",
    "nested_three_deep_comment": "GRABOWSKA",
    "nested_three_deep_person": "PAWLOWSKI^JERZY",
    "acquisition_datetime": "20240229235959.123456",
    "negative_offset_datetime": "20231231120000.000000-0500",
    "birth_time": "031415.926535",
    "body_meta_source_ae": "PLANTEDAE91",
    "body_meta_private_information": "METAPRIV-8812",
    "nested_meta_source_ae": "NESTEDAE47",
}

# Identifying attributes the generator already writes: absent from the cloud, but the crosswalk
# puts them back into what the PACS and the EHR receive.
UN_VR = "UN"


def _encode_implicit(dataset: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, dataset)
    return bytes(buffer.getvalue())


def implicit_sequence_value(items: list[Dataset], undefined_length: bool) -> bytes:
    """The value of a sequence as an implicit VR little endian UN element carries it."""
    out = b""
    for item in items:
        body = _encode_implicit(item)
        if undefined_length:
            out += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
            out += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        else:
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return out


def _un(tag: int, value: bytes, undefined_length: bool = False) -> RawDataElement:
    # A raw element: pydicom would otherwise turn a UN of a known sequence tag into a Sequence.
    length = 0xFFFFFFFF if undefined_length else len(value)
    return RawDataElement(BaseTag(tag), UN_VR, length, value, 0, False, True)


def _raw_un(tag: int, value: bytes, length: int, implicit: bool) -> bytes:
    undefined = length == 0xFFFFFFFF
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not implicit:
        header += b"UN\x00\x00"
    header += struct.pack("<I", 0xFFFFFFFF if undefined else len(value))
    tail = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) if undefined else b""
    return header + value + tail


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def plant(source: Dataset) -> Dataset:
    """A copy of `source` with every PLANTED value put where the generator puts none."""
    ds = copy.deepcopy(source)
    p = PLANTED
    # Free text the Basic Profile removes, at the top level ...
    ds.StudyDescription = f"CT CHEST FOLLOW UP {p['study_description_name']} "
    ds.StudyDescription += p["study_description_given_name"]
    ds.SeriesDescription = f"LUNG 1.5MM CALL {p['series_description_phone']}"
    ds.ImageComments = f"see ID {p['image_comments_id']} in chart"
    ds.ProtocolName = f"CHEST ROUTINE {p['protocol_name_surname']}"
    ds.AdditionalPatientHistory = f"referred by DR {p['patient_history_physician']}"
    ds.ReasonForStudy = f"R/O nodule, call {p['reason_for_study_phone']}"
    ds.PerformedProcedureStepDescription = f"CT CHEST {p['performed_step_description_mrn']}"
    # ... and in sequences: a removed one, and a kept one nested three deep.
    request = Dataset()
    request.RequestedProcedureDescription = f"CHEST CT {p['requested_procedure_text']}"
    ds.RequestAttributesSequence = Sequence([request])
    third = _code("39607008", "Lung structure")
    third.ImageComments = f"third level {p['nested_three_deep_comment']}"
    third.PersonName = p["nested_three_deep_person"]
    third.DateTime = p["negative_offset_datetime"]
    third.add_new(0x00020016, "AE", p["nested_meta_source_ae"])  # file meta inside an item
    second = _code("24028007", "Right")
    second.PrimaryAnatomicStructureSequence = Sequence([third])
    first = _code("51185008", "Thoracic structure")
    first.AnatomicRegionModifierSequence = Sequence([second])
    ds.AnatomicRegionSequence = Sequence([first])
    # DT and TM values the profile shifts or removes.
    ds.AcquisitionDateTime = p["acquisition_datetime"]
    ds.PatientBirthTime = p["birth_time"]
    # Standard sequences sent as UN, with defined length and with undefined length.
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = str(ds.SOPClassUID)
    referenced.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
    referenced.PersonName = p["un_defined_length_person"]
    referenced.ImageComments = f"see {p['un_defined_length_comment']}"
    ds[0x00081140] = _un(0x00081140, implicit_sequence_value([referenced], False))
    procedure = _code("418394005", "CT of chest")
    procedure.ImageComments = f"by {p['un_undefined_length_comment']}"
    procedure.PatientBirthTime = p["birth_time"]
    ds[0x00081032] = _un(0x00081032, implicit_sequence_value([procedure], True), True)
    # A tag no dictionary knows, sent as UN: neither a sequence nor readable, so it must go.
    ds[0x00089990] = _un(0x00089990, f"NOTE {p['un_unknown_tag_text']} ".encode())
    # Private blocks of several creators, one holding a private sequence.
    ds.add_new(0x00090010, "LO", "ACME IMAGING 1.0")
    ds.add_new(0x00090011, "LO", "HOSPITAL RIS NOTES")
    ds.add_new(0x00091001, "LO", p["private_creator_a_value"])
    ds.add_new(0x00091101, "LO", p["private_creator_b_value"])
    inner = Dataset()
    inner.add_new(0x00290010, "LO", "ACME IMAGING 1.0")
    inner.add_new(0x00291001, "PN", p["private_nested_value"])
    ds.add_new(0x00091102, "SQ", Sequence([inner]))
    # File meta elements inside the data set body.
    ds.add_new(0x00020016, "AE", p["body_meta_source_ae"])
    ds.add_new(0x00020100, "UI", "1.2.826.0.1.3680043.10.1445.99")
    ds.add_new(0x00020102, "OB", p["body_meta_private_information"].encode())
    return ds


def to_part10(ds: Dataset, implicit: bool = False) -> bytes:
    """Part 10 bytes written by hand: pydicom's file writer refuses group 0002 in the body."""
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1445.98"
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    encodings = ds.get("SpecificCharacterSet")
    for tag in sorted(ds.keys()):
        element = ds.get_item(tag)
        if isinstance(element, RawDataElement) and element.VR == UN_VR:
            # Written as is: pydicom's writer would parse a UN of a known sequence tag.
            body.write(_raw_un(int(tag), element.value or b"", element.length, implicit))
        else:
            write_data_element(body, ds[tag], encodings)
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    out.write(head.getvalue())
    out.write(body.getvalue())
    return out.getvalue()
