"""Clean Descriptors by allow-list: a descriptor keeps only shipped imaging terms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

VOCABULARY_VERSION = "1"
VOCABULARY_RESOURCE = f"descriptor_vocabulary_v{VOCABULARY_VERSION}.tsv"
REPLACEMENT = "*"

# A number with an optional decimal part and an optional fused unit ("1.25mm", "120kV", "50%"),
# or any other run of letters and digits. Unicode letters stay inside a token, so a name with
# accents is one token (and replaced whole), never split into ASCII pieces that might match.
_TOKEN = re.compile(r"([0-9]+(?:[.,][0-9]+)?)(%|[A-Za-z]+)?(?![^\W_])|[^\W_]+")
# At most four integer and three decimal digits: slice thickness, kV, mAs, TR and TE fit; an
# MRN, a phone number or a date does not.
_NUMBER = re.compile(r"[0-9]{1,4}(?:[.,][0-9]{1,3})?")
# Separators a cleaned value may keep between two kept tokens; anything else becomes a space.
_SAFE_SEPARATORS = frozenset(" /-+,.:()")
# "W/O" is the usual spelling of "without contrast"; its letters alone would read as initials.
_WITHOUT = re.compile(r"\bW/O\b", re.IGNORECASE)


@dataclass(frozen=True)
class Vocabulary:
    """The allow-list: terms and units (upper-cased) and whole-token patterns."""

    terms: frozenset[str]
    units: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    def allows_word(self, token: str) -> bool:
        upper = token.upper()
        return upper in self.terms or any(p.fullmatch(token) for p in self.patterns)

    def is_unit(self, token: str) -> bool:
        return token.upper() in self.units

    def clean(self, text: str) -> str:
        """Keep allowed tokens, replace every other token (and runs of them) by one `*`."""
        text = _WITHOUT.sub("WITHOUT", text)
        matches = list(_TOKEN.finditer(text))
        kept: list[tuple[int, int, bool]] = []  # (start, end, allowed) per token
        for index, match in enumerate(matches):
            token = match.group(0)
            number, unit = match.group(1), match.group(2)
            if self.allows_word(token):
                allowed = True
            elif (
                kept and kept[-1][2] and matches[index - 1].group(2) is None and self.is_unit(token)
            ):
                # The unit of a kept bare number ("5 mm"); a unit alone may be an initial.
                allowed = matches[index - 1].group(1) is not None
            elif number is not None and _NUMBER.fullmatch(number):
                if unit is not None:
                    allowed = self.is_unit(unit)
                else:
                    # "5 mm": a bare number is kept only when a unit token follows it.
                    following = matches[index + 1].group(0) if index + 1 < len(matches) else ""
                    between = text[match.end() : matches[index + 1].start()] if following else ""
                    allowed = self.is_unit(following) and between.strip() == ""
            else:
                allowed = False
            kept.append((match.start(), match.end(), allowed))
        out: list[str] = []
        previous_end = 0
        for start, end, allowed in kept:
            separator = text[previous_end:start]
            previous_end = end
            if not allowed:
                if not out or out[-1] != REPLACEMENT:
                    out.extend([" ", REPLACEMENT])
                continue
            if out and out[-1] != REPLACEMENT and set(separator) <= _SAFE_SEPARATORS:
                out.append(" ".join(separator.split(" ")) if separator.strip() else " ")
            else:
                out.append(" ")
            out.append(text[start:end])
        return re.sub(r" {2,}", " ", "".join(out)).strip()


@cache
def vocabulary() -> Vocabulary:
    """The shipped allow-list (`data/descriptor_vocabulary_v1.tsv`)."""
    text = (
        resources.files("edge_forwarder.deid")
        .joinpath("data", VOCABULARY_RESOURCE)
        .read_text("utf-8")
    )
    terms: set[str] = set()
    units: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        kind, value, _category, _source = line.split("\t")
        if kind == "term":
            terms.add(value.upper())
        elif kind == "unit":
            units.add(value.upper())
        elif kind == "pattern":
            patterns.append(re.compile(value, re.IGNORECASE))
        else:
            raise ValueError(f"unknown vocabulary row kind {kind!r}")
    return Vocabulary(frozenset(terms), frozenset(units), tuple(patterns))
