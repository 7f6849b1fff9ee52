"""The shipped Table E.1-1: complete, pinned, and at least as wide as an independent extraction."""

from __future__ import annotations

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

from edge_forwarder.deid import TABLE_EDITION, Action, resolve_actions, table_rows
from edge_forwarder.deid.table import resolve_combination


def test_table_is_the_pinned_edition_with_every_action_code() -> None:
    rows = table_rows()
    assert TABLE_EDITION == "2026d"
    assert len(rows) == 657
    codes = {code for row in rows for code in row.basic.replace("*", "").split("/")}
    assert codes == {"D", "Z", "X", "U"}  # basic profile column
    option_codes = {code for row in rows for code in row.options.values()}
    assert option_codes == {"K", "C"}
    combos = {row.basic for row in rows if "/" in row.basic}
    assert combos == {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}


def test_combinations_resolve_to_a_value_free_choice() -> None:
    assert resolve_combination("X/Z") is Action.EMPTY
    assert resolve_combination("X/Z/D") is Action.DUMMY
    assert resolve_combination("X/Z/U*") is Action.REMAP_UID
    assert resolve_combination("X") is Action.REMOVE


def test_every_basic_profile_tag_of_dicom_anonymizer_is_acted_on() -> None:
    # Given dicom-anonymizer's independent Basic Profile extraction (Kitware, 2026c)
    theirs = dicom_anonymization_database_selector("dicomfields_2026c")
    ours = resolve_actions(frozenset())
    plain = [
        (t[0] << 16) | t[1]
        for category, tags in theirs.items()
        if category != "ALL_TAGS"
        for t in tags
        if len(t) == 2
    ]
    # Then every plain tag it lists has a non-retaining action in our table
    assert len(plain) > 600
    missing = [hex(tag) for tag in plain if ours.get(tag, Action.KEEP) is Action.KEEP]
    assert missing == []
