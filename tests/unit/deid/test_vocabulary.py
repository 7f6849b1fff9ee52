"""Clean Descriptors' allow-list: what it keeps, what it replaces, and that it ships its sources."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# Frequent family names in several languages (typed here): none may be a vocabulary term.
COMMON_SURNAMES = [
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "MILLER",
    "DAVIS",
    "GARCIA",
    "RODRIGUEZ",
    "WILSON",
    "MARTINEZ",
    "ANDERSON",
    "TAYLOR",
    "THOMAS",
    "MOORE",
    "MARTIN",
    "JACKSON",
    "WHITE",
    "LEE",
    "HARRIS",
    "CLARK",
    "LEWIS",
    "WALKER",
    "YOUNG",
    "ALLEN",
    "KING",
    "WRIGHT",
    "SCOTT",
    "GREEN",
    "BAKER",
    "ADAMS",
    "NELSON",
    "HILL",
    "NOWAK",
    "KOWALSKI",
    "WISNIEWSKI",
    "MULLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "BECKER",
    "LOPEZ",
    "GONZALEZ",
    "HERNANDEZ",
    "PEREZ",
    "SANCHEZ",
    "ROSSI",
    "RUSSO",
    "WANG",
    "LI",
    "ZHANG",
    "LIU",
    "CHEN",
    "YANG",
    "KIM",
    "PARK",
    "NGUYEN",
    "TRAN",
    "WILLIS",
    "DIXON",
]


def test_no_common_surname_is_a_term() -> None:
    words = vocabulary()
    assert [name for name in COMMON_SURNAMES if words.allows_word(name)] == []


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


# Tokens built from letters and digits that can never be a vocabulary entry: every word here
# holds a Q followed by a consonant cluster no imaging term has, or at least five digits.
_NAMES = st.from_regex(r"[A-Z]{2,6}Q[XZJ][A-Z]{0,6}", fullmatch=True)
_IDS = st.from_regex(r"[0-9]{5,10}", fullmatch=True)
_SEPARATORS = st.sampled_from([" ", "-", "/", "^", ", ", ".", ":", "  "])
_TERMS = st.sampled_from(["CT", "CHEST", "AXIAL", "5 mm", "1.25MM", "T2", "LEFT", "B30f", "MIP"])


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(
    parts=st.lists(st.one_of(_NAMES, _IDS, _TERMS), min_size=1, max_size=10),
    separators=st.lists(_SEPARATORS, min_size=10, max_size=10),
)
def test_no_identifier_survives_whatever_surrounds_it(
    parts: list[str], separators: list[str]
) -> None:
    # Given a descriptor mixing names, long numbers and imaging terms with any separators
    text = "".join(part + separator for part, separator in zip(parts, separators, strict=False))
    # When it is cleaned
    cleaned = vocabulary().clean(text)
    # Then no name and no long number is left, in whole or in part
    for part in parts:
        if part not in ("CT", "CHEST", "AXIAL", "5 mm", "1.25MM", "T2", "LEFT", "B30f", "MIP"):
            assert part not in cleaned
            assert not re.search(r"[0-9]{5}", cleaned)
            assert not re.search(r"Q[XZJ]", cleaned)
