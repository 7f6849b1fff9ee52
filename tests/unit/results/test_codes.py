"""Our own code checks: SNOMED CT Verhoeff, LOINC mod 10, UCUM units, R4 required bindings."""

from __future__ import annotations

import pytest

from imaging_ai.errors import ContractError
from imaging_ai.results import codes


@pytest.mark.parametrize(
    ("scheme", "value"),
    [
        ("SCT", "27925004"),  # Nodule
        ("SCT", "39607008"),  # Lung
        ("SCT", "118565006"),  # Volume
        ("SCT", "103339001"),  # Long axis
        ("SCT", "77477000"),  # CT
        ("LN", "24627-2"),  # CT Chest
        ("LN", "LP29684-5"),  # Radiology (LOINC part)
        ("DCM", "121071"),
        ("DCM", "CT"),
        ("UCUM", "mm3"),
        ("RADLEX", "RID50149"),
        ("99IHE", "1630"),
    ],
)
def test_real_codes_pass(scheme: str, value: str) -> None:
    assert codes.code_value_problem(scheme, value) is None


@pytest.mark.parametrize(
    ("scheme", "value", "reason"),
    [
        ("SCT", "27925005", "Verhoeff"),  # one digit off
        ("SCT", "27925024", "partition"),
        ("LN", "24627-3", "check digit"),
        ("LN", "CT-CHEST", "look like"),
        ("UCUM", "ml", "UCUM"),
        ("XYZ", "1", "unknown"),
    ],
)
def test_wrong_codes_are_named(scheme: str, value: str, reason: str) -> None:
    problem = codes.code_value_problem(scheme, value)
    assert problem is not None and reason in problem


def test_ucum_meaning_must_match() -> None:
    with pytest.raises(ContractError):
        codes.check_code("UCUM", "mm3", "cubic centimeter")


def test_every_constant_we_emit_passes_our_checks() -> None:
    for code in (
        codes.VOLUME,
        codes.LONG_AXIS,
        codes.CUBIC_MILLIMETER,
        codes.MILLIMETER,
        codes.PROCESSING_ALGORITHM,
        codes.FINDING,
        codes.COMMENT,
        codes.QUALITATIVE_EVALUATIONS,
        codes.ARTIFICIAL_INTELLIGENCE,
        codes.RADIOLOGY_CATEGORY,
        codes.CT_CHEST,
        codes.CT_PROCEDURE,
    ):
        codes.check_code(code.scheme_designator, code.value, code.meaning)


def test_bundle_checks_catch_a_bogus_status_fhir_resources_accepts() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "status": "bogus"},
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    assert codes.bundle_code_problems(bundle) == [
        "Observation.status: 'bogus' is not in the R4 required value set"
    ]
