"""PS3.15 Table E.1-1 as shipped data, and the action it prescribes for a tag under options."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

TABLE_EDITION = "2026d"
TABLE_RESOURCE = f"ps3.15_e1-1_{TABLE_EDITION}.tsv"


class Action(StrEnum):
    """One resolved action per attribute; combinations are resolved before use."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    REMAP_UID = "U"


# Option keys as written in the table file (see its header) for the options we implement.
OPTION_KEYS = frozenset({"uid", "dev", "inst", "pat", "full", "mod", "desc", "struct", "graph"})


@dataclass(frozen=True)
class TableRow:
    tag: str  # as printed in the standard, e.g. "(0010,0010)" or "(50xx,xxxx)"
    basic: str  # the basic profile column, e.g. "X/Z/D"
    options: dict[str, str]  # option key -> action letter
    name: str


def resolve_combination(basic: str) -> Action:
    """Resolve a combined code the way that keeps an IOD conformant without keeping a value.

    The standard picks by attribute type (1, 2 or 3), which depends on the IOD; a dummy (D)
    or an empty value (Z) carries no identifying data either, so we pick the code that also
    satisfies the strictest type, and U* (referenced-instance sequences) keeps the references
    with their UIDs remapped so derived objects still point at their sources.
    """
    codes = basic.replace("*", "").split("/")
    if "U" in codes:
        return Action.REMAP_UID
    if "D" in codes:
        return Action.DUMMY
    if "Z" in codes:
        return Action.EMPTY
    return Action(codes[0])


def _parse_tag(text: str) -> int | None:
    group, element = text.strip("()").split(",")
    if "x" in group.lower() or "x" in element.lower() or group == "gggg":
        return None  # repeating groups and private attributes are matched by rule, not by key
    return (int(group, 16) << 16) | int(element, 16)


@cache
def table_rows() -> tuple[TableRow, ...]:
    """Every row of the shipped table, in the standard's order."""
    text = (
        resources.files("edge_forwarder.deid").joinpath("data", TABLE_RESOURCE).read_text("utf-8")
    )
    rows: list[TableRow] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        tag, basic, options, name = line.split("\t")
        parsed = dict(item.split("=") for item in options.split(",") if item)
        rows.append(TableRow(tag=tag, basic=basic, options=parsed, name=name))
    return tuple(rows)


def resolve_actions(enabled_options: frozenset[str]) -> dict[int, Action]:
    """Map every plain tag of the table to the one action the enabled options give it.

    When several enabled options name an action, Clean wins over Keep: a retained date is
    still shifted under the Modified Dates option, which is the more protective reading.
    """
    unknown = enabled_options - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown de-identification options: {sorted(unknown)}")
    actions: dict[int, Action] = {}
    for row in table_rows():
        tag = _parse_tag(row.tag)
        if tag is None:
            continue
        chosen = [code for key, code in row.options.items() if key in enabled_options]
        if "C" in chosen:
            actions[tag] = Action.CLEAN
        elif "K" in chosen:
            actions[tag] = Action.KEEP
        else:
            actions[tag] = resolve_combination(row.basic)
    return actions
