"""The coded concepts our results use, and our own checks of code values (no library does them)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from pydicom.sr.coding import Code

from imaging_ai.errors import ContractError
from imaging_ai.model_card import Code as CardCode

# Coding scheme designator (DICOM PS3.16 Table 8-1) -> FHIR code system URI.
FHIR_SYSTEMS: Final[dict[str, str]] = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://www.radlex.org",
}
SCHEMES_BY_SYSTEM: Final[dict[str, str]] = {uri: scheme for scheme, uri in FHIR_SYSTEMS.items()}

# The UCUM units our measurements may carry, with their DICOM code meanings.
UCUM_UNITS: Final[dict[str, str]] = {
    "mm3": "cubic millimeter",
    "mm": "millimeter",
    "%": "percent",  # a triage flag's probability in the FHIR report
}

# ---- Concepts ------------------------------------------------------------------------------

VOLUME: Final = Code("118565006", "SCT", "Volume")
LONG_AXIS: Final = Code("103339001", "SCT", "Long Axis")
CUBIC_MILLIMETER: Final = Code("mm3", "UCUM", UCUM_UNITS["mm3"])
MILLIMETER: Final = Code("mm", "UCUM", UCUM_UNITS["mm"])
# Which finding measurement maps to which concept and unit: the SR and the Bundle share it.
MEASUREMENTS: Final[dict[str, tuple[Code, Code]]] = {
    "volume_mm3": (VOLUME, CUBIC_MILLIMETER),
    "longest_diameter_mm": (LONG_AXIS, MILLIMETER),
}

# IHE AI Results: Purpose of Reference of the algorithm's Contributing Equipment item
# (published in the IHE AIR trial implementation as Newcode1, since assigned 1630).
PROCESSING_ALGORITHM: Final = Code("1630", "99IHE", "Processing Algorithm")
FINDING: Final = Code("121071", "DCM", "Finding")
COMMENT: Final = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS: Final = Code("126010", "DCM", "Qualitative Evaluations")
ARTIFICIAL_INTELLIGENCE: Final = Code("123110", "DCM", "Artificial Intelligence")

RADIOLOGY_CATEGORY: Final = Code("LP29684-5", "LN", "Radiology")
CT_CHEST: Final = Code("24627-2", "LN", "CT Chest")
CT_HEAD: Final = Code("30799-1", "LN", "CT Head WO contrast")
CT_PROCEDURE: Final = Code("77477000", "SCT", "Computerized axial tomography")
# Imaging procedure reported, by (Modality, BodyPartExamined) of the source series.
PROCEDURES: Final[dict[tuple[str, str], Code]] = {
    ("CT", "CHEST"): CT_CHEST,
    ("CT", "HEAD"): CT_HEAD,
    ("CT", "BRAIN"): CT_HEAD,
}
# A triage flag's answer (SR qualitative evaluation value, FHIR Observation value).
PRESENT: Final = Code("52101004", "SCT", "Present")
ABSENT: Final = Code("2667000", "SCT", "Absent")
# FHIR Observation.interpretation of a triage answer: critical when the card says so.
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CRITICAL_ABNORMAL: Final = {
    "system": INTERPRETATION_SYSTEM,
    "code": "AA",
    "display": "Critical abnormal",
}
ABNORMAL: Final = {"system": INTERPRETATION_SYSTEM, "code": "A", "display": "Abnormal"}
NORMAL: Final = {"system": INTERPRETATION_SYSTEM, "code": "N", "display": "Normal"}
PROCEDURES_BY_MODALITY: Final[dict[str, Code]] = {"CT": CT_PROCEDURE}

OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"

NOT_FOR_CLINICAL_USE: Final = (
    "NOT FOR CLINICAL USE: produced by a demonstration model on a research pipeline; "
    "it must not inform diagnosis or treatment."
)
NOT_FOR_CLINICAL_USE_SHORT: Final = "DEMO AI - NOT FOR CLINICAL USE"

# ---- FHIR R4 required bindings we emit (fhir.resources accepts any string here) -------------

R4_REQUIRED_CODES: Final[dict[str, frozenset[str]]] = {
    "Bundle.type": frozenset(
        {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        }
    ),
    "Bundle.entry.request.method": frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}),
    "DiagnosticReport.status": frozenset(
        {
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    "Observation.status": frozenset(
        {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    "ImagingStudy.status": frozenset(
        {"registered", "available", "cancelled", "entered-in-error", "unknown"}
    ),
    "Device.deviceName.type": frozenset(
        {
            "udi-label-name",
            "user-friendly-name",
            "patient-reported-name",
            "manufacturer-name",
            "model-name",
            "other",
        }
    ),
    "Device.status": frozenset({"active", "inactive", "entered-in-error", "unknown"}),
}

# ---- Code value checks ---------------------------------------------------------------------

_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
# Verhoeff's position permutations: row i applies the base permutation i times.
_VERHOEFF_BASE = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _permutation_powers(base: tuple[int, ...], count: int) -> tuple[tuple[int, ...], ...]:
    rows = [tuple(range(len(base)))]
    while len(rows) < count:
        rows.append(tuple(base[digit] for digit in rows[-1]))
    return tuple(rows)


_VERHOEFF_P = _permutation_powers(_VERHOEFF_BASE, 8)


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit is the Verhoeff check digit of the others (SNOMED CT SCTIDs)."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def loinc_check_digit(number: str) -> int:
    """The LOINC mod-10 check digit of a LOINC code's number part (Luhn, as LOINC specifies)."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 0:  # rightmost digit and every second one leftwards are doubled
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return (10 - total % 10) % 10


_SCTID = re.compile(r"^[1-9][0-9]{5,17}$")
_LOINC = re.compile(r"^([1-9][0-9]{0,6})-([0-9])$")
_LOINC_PART = re.compile(r"^LP[1-9][0-9]{0,7}-[0-9]$")
_DCM = re.compile(r"^[0-9]{3,9}$")
# DCM also codes modalities (CID 29 Acquisition Modality) by their Modality (0008,0060) value.
DICOM_MODALITIES: Final = frozenset({"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "OT"})
_RADLEX = re.compile(r"^RID[1-9][0-9]*$")
_99IHE = re.compile(r"^[0-9]{1,9}$")


def code_value_problem(scheme: str, value: str) -> str | None:
    """Why `value` cannot be a code of `scheme` (a DICOM coding scheme designator), or None."""
    if scheme == "SCT":
        if not _SCTID.match(value):
            return "SNOMED CT identifier must be 6-18 digits"
        # Partition identifier (2nd and 3rd from the right): 00 or 10 mark a concept.
        if value[-3:-1] not in ("00", "10"):
            return "SNOMED CT identifier is not a concept id (partition)"
        if not verhoeff_valid(value):
            return "SNOMED CT identifier fails its Verhoeff check digit"
        return None
    if scheme == "LN":
        if _LOINC_PART.match(value):
            return None
        match = _LOINC.match(value)
        if not match:
            return "LOINC code must look like 12345-6 or LP12345-6"
        if loinc_check_digit(match.group(1)) != int(match.group(2)):
            return "LOINC code fails its mod-10 check digit"
        return None
    if scheme == "UCUM":
        return None if value in UCUM_UNITS else "unit is not one of the UCUM units we emit"
    if scheme == "DCM":
        if _DCM.match(value) or value in DICOM_MODALITIES:
            return None
        return "DCM code must be 3-9 digits or an acquisition modality"
    if scheme == "RADLEX":
        return None if _RADLEX.match(value) else "RadLex code must look like RID1234"
    if scheme == "99IHE":
        return None if _99IHE.match(value) else "99IHE code must be digits"
    return "unknown coding scheme designator"


def check_code(scheme: str, value: str, meaning: str) -> None:
    """Raise ContractError when a (scheme, value, meaning) triple is not a well-formed code."""
    problem = code_value_problem(scheme, value)
    if problem is not None:
        raise ContractError(f"code {scheme} {value!r}: {problem}")
    if not meaning.strip() or len(meaning) > 64:
        raise ContractError(f"code {scheme} {value!r}: meaning must be 1-64 characters")
    if scheme == "UCUM" and meaning != UCUM_UNITS[value]:
        raise ContractError(f"code UCUM {value!r}: meaning must be {UCUM_UNITS[value]!r}")


def check_card_code(code: CardCode) -> Code:
    """Check a model card's code and return it as a pydicom Code."""
    check_code(code.scheme, code.value, code.meaning)
    return Code(code.value, code.scheme, code.meaning)


def fhir_coding(code: Code) -> dict[str, str]:
    """The FHIR Coding of a DICOM code (same value, the scheme's FHIR system URI)."""
    check_code(code.scheme_designator, code.value, code.meaning)
    return {
        "system": FHIR_SYSTEMS[code.scheme_designator],
        "code": code.value,
        "display": code.meaning,
    }


def _codings(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            yield path, node
        for key, child in node.items():
            yield from _codings(child, f"{path}.{key}")
    elif isinstance(node, list):
        for child in node:
            yield from _codings(child, path)


def bundle_code_problems(bundle: dict[str, Any]) -> list[str]:
    """Every code in a FHIR Bundle that our checks reject, as 'path: reason' lines."""
    problems: list[str] = []

    def require(binding: str, value: Any) -> None:
        if value not in R4_REQUIRED_CODES[binding]:
            problems.append(f"{binding}: {value!r} is not in the R4 required value set")

    require("Bundle.type", bundle.get("type"))
    for entry in bundle.get("entry", []):
        require("Bundle.entry.request.method", entry.get("request", {}).get("method"))
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        if f"{kind}.status" in R4_REQUIRED_CODES:
            require(f"{kind}.status", resource.get("status"))
        if kind == "Device":
            for name in resource.get("deviceName", []):
                require("Device.deviceName.type", name.get("type"))
        for path, coding in _codings(resource, str(kind)):
            scheme = SCHEMES_BY_SYSTEM.get(coding["system"])
            if scheme is None:
                continue  # HL7 terminology systems: checked by the R4 server's value sets
            problem = code_value_problem(scheme, str(coding["code"]))
            if problem is not None:
                problems.append(f"{path}: {coding['code']!r}: {problem}")
        for path, quantity in _quantities(resource, str(kind)):
            if quantity.get("system") != FHIR_SYSTEMS["UCUM"] or quantity.get("code") not in (
                UCUM_UNITS
            ):
                problems.append(f"{path}: quantity unit is not one of our UCUM units")
    return problems


def _quantities(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "valueQuantity" and isinstance(child, dict):
                yield f"{path}.{key}", child
            else:
                yield from _quantities(child, f"{path}.{key}")
    elif isinstance(node, list):
        for child in node:
            yield from _quantities(child, path)
