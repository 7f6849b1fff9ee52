"""HL7 v2.5.1 ORU^R01 of a re-identified result, for RIS and EHR interface engines.

Built on-prem only: PID carries the original identifiers. The content is read from the
re-identified SR (`imaging_ai.results.report_content`), the same tree the PACS and the PDF
show; every message is validated with hl7apy at its strict level before it is queued.
"""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from pydicom.sr.coding import Code

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.transport.errors import PermanentError
from imaging_ai.results import codes
from imaging_ai.results.report_content import ReportContent, ReportedFinding, format_value

HL7_VERSION = "2.5.1"
# LOINC 18782-3 "Radiology Study observation (narrative)": the text report's OBX.
NARRATIVE_REPORT = Code("18782-3", "LN", "Radiology Study observation (narrative)")
# HL7 table 0078 abnormal flags: a detected abnormal structure is "A"; no finding is "N".
ABNORMAL, NORMAL = "A", "N"
FINDING_SITE = Code("363698007", "SCT", "Finding site")
# HL7 table 0396 names DICOM's coding schemes as they are, except UCUM and SNOMED CT.
_HL7_CODING_SYSTEMS = {"SCT": "SCT", "LN": "LN", "DCM": "DCM", "UCUM": "UCUM", "RADLEX": "RADLEX"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
SEGMENT_SEPARATOR = "\r"
# Escaping can triple a character: 66 x 3 stays under the 199-character cap of a TX line.
TX_LINE_LENGTH = 66


class InvalidOru(PermanentError):
    """The ORU we built does not pass hl7apy's strict validation (a defect, not a peer fault)."""


@dataclass(frozen=True)
class OruParties:
    """MSH sender and receiver, and the assigning authority of the patient identifier."""

    sending_application: str = "EDGEFWD"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    patient_id_authority: str = ""
    processing_id: str = "P"  # P production, T training, D debugging (table 0103)


def escape(text: str) -> str:
    """Escape the HL7 delimiters in a value; line breaks become spaces (one-line fields)."""
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return " ".join(text.splitlines())


def _coded(code: Code) -> str:
    system = _HL7_CODING_SYSTEMS.get(code.scheme_designator)
    if system is None:
        raise InvalidOru(f"no HL7 coding system for scheme {code.scheme_designator}")
    codes.check_code(code.scheme_designator, code.value, code.meaning)
    return f"{escape(code.value)}^{escape(code.meaning)}^{system}"


def _person_name(dicom_name: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix -> XPN family^given^middle^suffix^prefix."""
    parts = [*dicom_name.split("=")[0].split("^"), "", "", "", "", ""][:5]
    family, given, middle, prefix, suffix = parts
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def report_lines(content: ReportContent, width: int = TX_LINE_LENGTH) -> list[str]:
    """The text report as lines of at most `width` characters, sentences kept whole if short."""
    lines: list[str] = []
    for sentence in content.conclusion_sentences():
        lines += textwrap.wrap(sentence, width=width) or [""]
    return lines


def control_id(run_id: str) -> str:
    """MSH-10, the same for every send of a run: a receiver can drop a duplicate by it."""
    return hashlib.sha256(f"oru|{run_id}".encode()).hexdigest()[:20]


def segment(name: str, fields: dict[int, str]) -> str:
    """One segment from its fields by number (1-based, as the standard numbers them)."""
    # MSH-1 is the field separator itself: MSH's first written value is MSH-2.
    first = 2 if name == "MSH" else 1
    values = [""] * (max(fields) - first + 1)
    for number, value in fields.items():
        values[number - first] = value
    return "|".join([name, *values])


def _obx(
    set_id: int, value_type: str, concept: str, sub_id: str, value: str, when: str, **extra: str
) -> str:
    fields = {1: str(set_id), 2: value_type, 3: concept, 4: sub_id, 5: value, 11: "F", 14: when}
    fields[6] = extra.get("units", "")
    fields[8] = extra.get("flag", "")
    # OBX-18 Equipment Instance Identifier: the algorithm and version that made the value.
    fields[18] = extra.get("equipment", "")
    return segment("OBX", fields)


def _finding_segments(
    number: int, finding: ReportedFinding, first_set_id: int, when: str, equipment: str
) -> list[str]:
    sub_id = str(number)  # OBX-4 groups one finding's observations
    rows: list[tuple[str, str, str, dict[str, str]]] = []
    if finding.finding_type is not None:
        rows.append(
            ("CWE", _coded(codes.FINDING), _coded(finding.finding_type), {"flag": ABNORMAL})
        )
    if finding.finding_site is not None:
        rows.append(("CWE", _coded(FINDING_SITE), _coded(finding.finding_site), {}))
    for measurement in finding.measurements:
        rows.append(
            (
                "NM",
                _coded(measurement.concept),
                format_value(measurement.value),
                {"units": _coded(measurement.unit), "flag": ABNORMAL},
            )
        )
    return [
        _obx(first_set_id + n, kind, concept, sub_id, value, when, equipment=equipment, **extra)
        for n, (kind, concept, value, extra) in enumerate(rows)
    ]


def build_oru(
    content: ReportContent,
    identity: StudyIdentity,
    run_id: str,
    parties: OruParties,
    now: datetime | None = None,
) -> str:
    """The ORU^R01 (segments joined by CR) of one re-identified result, strictly validated."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%d%H%M%S")
    study_time = f"{identity.study_date}{identity.study_time.split('.')[0]}"[:14]
    accession = escape(identity.accession_number)
    procedure = content.procedure or codes.CT_PROCEDURE
    equipment = escape(f"{content.model_name} {content.model_version}")[:199]
    sex = identity.patient_sex if identity.patient_sex in ("F", "M", "O", "U") else "U"
    segments = [
        segment(
            "MSH",
            {
                2: "^~\\&",
                3: escape(parties.sending_application),
                4: escape(parties.sending_facility),
                5: escape(parties.receiving_application),
                6: escape(parties.receiving_facility),
                7: stamp,
                9: "ORU^R01^ORU_R01",
                10: control_id(run_id),
                11: parties.processing_id,
                12: HL7_VERSION,
                15: "AL",
                16: "NE",
                18: "UNICODE UTF-8",
            },
        ),
        segment(
            "PID",
            {
                1: "1",
                3: f"{escape(identity.patient_id)}^^^{escape(parties.patient_id_authority)}^MR",
                5: _person_name(identity.patient_name),
                7: identity.patient_birth_date,
                8: sex,
            },
        ),
        # RE: observations to follow; the accession is the filler (RIS) order number.
        segment("ORC", {1: "RE", 3: accession, 5: "CM"}),
        segment(
            "OBR",
            {
                1: "1",
                3: accession,
                4: _coded(procedure),
                7: study_time,
                18: accession,
                22: stamp,
                24: "CT",
                25: "F",
            },
        ),
    ]
    set_id = 1
    for number, finding in enumerate(content.findings, start=1):
        observations = _finding_segments(number, finding, set_id, stamp, equipment)
        segments += observations
        set_id += len(observations)
    # The text report, one OBX per line: strict 2.5.1 caps a TX value at 199 characters, and
    # interface engines show consecutive TX OBX as the lines of one report.
    flag = ABNORMAL if content.findings else NORMAL
    for line in report_lines(content):
        segments.append(
            _obx(
                set_id,
                "TX",
                _coded(NARRATIVE_REPORT),
                "",
                escape(line),
                stamp,
                flag=flag,
                equipment=equipment,
            )
        )
        set_id += 1
    message = SEGMENT_SEPARATOR.join(segments)
    validate(message)
    return message


def validate(message: str) -> None:
    """Raise InvalidOru unless hl7apy accepts the message at its strict validation level."""
    try:
        parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        parsed.validate()
    except (HL7apyException, ValueError) as error:
        # The type only: hl7apy's messages quote the offending value, which may be PHI.
        raise InvalidOru(
            f"ORU fails strict HL7 v2.5.1 validation: {type(error).__name__}"
        ) from None
