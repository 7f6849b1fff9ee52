"""The HL7 v2.5.1 ORU^R01 built on-prem: identifiers, coded observations, strict validation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from edge_forwarder.oru import InvalidOru, OruParties, build_oru, control_id, escape, validate
from imaging_ai.results import codes
from imaging_ai.results.report_content import (
    ReportContent,
    ReportedFinding,
    ReportedMeasurement,
)
from tests.edge_support import JANE_DOE

WHEN = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
IDENTITY = replace(
    JANE_DOE,
    pseudo_study_uid="2.25.1",
    study_instance_uid="1.2.3.4",
    pseudo_patient_id="ANON-1",
    patient_name="DOE^JANE^Q^DR",
    accession_number="ACC|77^X",  # delimiters in a value must be escaped
    study_date="20261201",
    study_time="101500.25",
    date_shift_days=0,
)
PARTIES = OruParties(
    sending_facility="SITE-A",
    receiving_application="RIS",
    receiving_facility="HOSP",
    patient_id_authority="HOSP-MRN",
)


def sample_content(findings: int = 2) -> ReportContent:
    return ReportContent(
        sop_instance_uid="1.2.3.9",
        model_name="lung-nodule-demo",
        model_version="1.0.0",
        weights_sha256="ab" * 32,
        procedure=codes.CT_CHEST,
        findings=tuple(
            ReportedFinding(
                tracking_identifier=f"Nodule {n}",
                tracking_uid=f"1.2.3.{n}",
                finding_type=codes.Code("27925004", "SCT", "Nodule"),
                finding_site=codes.Code("39607008", "SCT", "Lung"),
                measurements=(
                    ReportedMeasurement(codes.VOLUME, 500.0 + n, codes.CUBIC_MILLIMETER),
                    ReportedMeasurement(codes.LONG_AXIS, 10.25, codes.MILLIMETER),
                ),
            )
            for n in range(1, findings + 1)
        ),
        comments=(codes.NOT_FOR_CLINICAL_USE,),
        content_date="20261202",
        content_time="080000",
    )


def _segments(message: str) -> list[list[str]]:
    return [segment.split("|") for segment in message.split("\r")]


def test_an_oru_passes_hl7apy_strict_validation_with_the_patient_and_accession() -> None:
    # When the ORU of a two-finding report is built
    message = build_oru(sample_content(), IDENTITY, "run-1", PARTIES, WHEN)
    # Then hl7apy parses it strictly into the ORU_R01 structure
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() and parsed.name == "ORU_R01"
    segments = _segments(message)
    msh, pid, orc, obr = segments[:4]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5.1"
    assert msh[9] == control_id("run-1") and len(msh[9]) <= 20
    # ... PID holds the original MRN with its authority, name, birth date and sex
    assert pid[3] == "MRN-0042^^^HOSP-MRN^MR"
    assert pid[5] == "DOE^JANE^Q^^DR" and (pid[7], pid[8]) == ("19700101", "F")
    # ... ORC / OBR carry the (escaped) accession and the coded procedure
    assert orc[1] == "RE" and orc[3] == escape(IDENTITY.accession_number) == "ACC\\F\\77\\S\\X"
    assert obr[3] == orc[3] and obr[18] == orc[3] and obr[4] == "24627-2^CT Chest^LN"
    assert obr[7] == "20261201101500" and obr[25] == "F"


def test_one_coded_obx_per_measurement_with_ucum_units_and_abnormal_flags() -> None:
    message = build_oru(sample_content(), IDENTITY, "run-1", PARTIES, WHEN)
    obx = [s for s in _segments(message) if s[0] == "OBX"]
    numeric = [s for s in obx if s[2] == "NM"]
    # Then each finding's volume and long axis is one NM OBX, SNOMED CT coded, in UCUM
    assert [(s[3], s[4], s[5], s[6], s[8]) for s in numeric] == [
        ("118565006^Volume^SCT", "1", "501", "mm3^cubic millimeter^UCUM", "A"),
        ("103339001^Long Axis^SCT", "1", "10.25", "mm^millimeter^UCUM", "A"),
        ("118565006^Volume^SCT", "2", "502", "mm3^cubic millimeter^UCUM", "A"),
        ("103339001^Long Axis^SCT", "2", "10.25", "mm^millimeter^UCUM", "A"),
    ]
    # ... each finding is coded too, and every value names the algorithm and its version
    findings = [s for s in obx if s[3] == "121071^Finding^DCM"]
    assert [s[5] for s in findings] == ["27925004^Nodule^SCT"] * 2
    assert all(s[18] == "lung-nodule-demo 1.0.0" and s[11] == "F" for s in obx)
    # ... set ids count up without a gap
    assert [int(s[1]) for s in obx] == list(range(1, len(obx) + 1))


def test_the_text_report_is_loinc_coded_lines_naming_model_and_disclaimer() -> None:
    message = build_oru(sample_content(), IDENTITY, "run-1", PARTIES, WHEN)
    text = [s for s in _segments(message) if s[2] == "TX"]
    assert {s[3] for s in text} == {"18782-3^Radiology Study observation (narrative)^LN"}
    assert all(len(s[5]) <= 199 for s in text)
    report = " ".join(s[5] for s in text)
    assert "lung-nodule-demo version 1.0.0" in report and "NOT FOR CLINICAL USE" in report
    assert "Nodule 1 (Lung): Volume 501 mm3, Long Axis 10.25 mm." in report


def test_no_finding_is_a_normal_text_only_result() -> None:
    message = build_oru(sample_content(findings=0), IDENTITY, "run-1", PARTIES, WHEN)
    obx = [s for s in _segments(message) if s[0] == "OBX"]
    assert {s[2] for s in obx} == {"TX"} and {s[8] for s in obx} == {"N"}
    assert "No finding was detected" in " ".join(s[5] for s in obx)


def test_strict_validation_refuses_a_broken_message_without_quoting_values() -> None:
    message = build_oru(sample_content(), IDENTITY, "run-1", PARTIES, WHEN)
    # A value longer than its field allows (PID-3 repeated past its limit)
    broken = message.replace("MRN-0042^^^", "MRN-0042" * 40 + "^^^")
    with pytest.raises(InvalidOru) as raised:
        validate(broken)
    assert "MRN-0042" not in str(raised.value)
    # A message without its required patient segment fields structure
    with pytest.raises(InvalidOru):
        validate(message.replace("ORU^R01^ORU_R01", "ORU^R01^XYZ_R01"))


def test_the_documented_example_passes_strict_validation() -> None:
    # docs/example-oru-r01.hl7: one segment a line for reading; CR on the wire
    example = Path(__file__).parents[3] / "docs" / "example-oru-r01.hl7"
    message = "\r".join(example.read_text().strip().splitlines())
    validate(message)
    assert "MRN-4711-0815^^^HOSP-MRN^MR" in message  # the synthetic study's fake MRN
