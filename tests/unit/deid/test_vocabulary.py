"""Clean Descriptors' allow-list: what it keeps, what it replaces, and that it ships its sources."""

from __future__ import annotations

from importlib import resources

import pytest

from edge_forwarder.deid.vocabulary import VOCABULARY_RESOURCE, vocabulary


def test_every_vocabulary_row_names_its_source() -> None:
    text = (
        resources.files("edge_forwarder.deid")
        .joinpath("data", VOCABULARY_RESOURCE)
        .read_text("utf-8")
    )
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    assert len(rows) > 300
    assert all(len(row) == 4 and row[3].strip() for row in rows)
    assert {row[0] for row in rows} == {"term", "unit", "pattern"}
    # Single letters are initials as often as they are terms: none is a term on its own
    assert not [row[1] for row in rows if row[0] == "term" and len(row[1]) == 1]


@pytest.mark.parametrize(
    ("descriptor", "cleaned"),
    [
        ("CT CHEST W/O CONTRAST 1.5MM", "CT CHEST WITHOUT CONTRAST 1.5MM"),
        ("AX T1 POST GAD 5 mm", "AX T1 POST GAD 5 mm"),
        ("Thorax B30f 120 kV 50%", "Thorax B30f 120 kV 50%"),
        ("CHEST/ABDOMEN/PELVIS", "CHEST/ABDOMEN/PELVIS"),
        ("LEFT KNEE SAG PD FS", "LEFT KNEE SAG PD FS"),
        # a name, a phone number, an MRN, a date: none is a term, all are replaced
        ("CT HEAD NOWAK ANNA", "CT HEAD *"),
        ("CALL 617-555-0199", "*"),
        ("MRN 00412345 CHEST", "* CHEST"),
        ("BRAIN 2024-03-15", "BRAIN *"),
        ("BRAIN 15.03.2024", "BRAIN *"),
        ("Dr. Müller LUNG", "Dr * LUNG"),  # DR is a modality term
        ("ŁUKASZ", "*"),
        ("1.2.840.113619.2.55", "*"),
        ("12345 mm", "*"),  # too many digits to be a measurement
    ],
)
def test_only_allow_listed_tokens_survive(descriptor: str, cleaned: str) -> None:
    assert vocabulary().clean(descriptor) == cleaned
