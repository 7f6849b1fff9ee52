"""Real public DICOM nobody here wrote (pydicom, pydicom-data, deid-data) through the de-id.

Each file must come out de-identified or be refused with a reason; nothing may crash. For a
de-identified file, no original value of an identifying attribute may remain in its header:
"identifying" is every attribute the shipped Table E.1-1 does not keep under the default
options (its non-K rows), every private attribute, and every file meta element.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import deid_data
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from edge_forwarder.deid import Action, Deidentifier, DeidError, DeidOptions, resolve_actions
from edge_forwarder.deid.codec import PIXEL_DATA, iter_elements, read_file_meta
from tests.unit.deid.conftest import SECRET

pytestmark = pytest.mark.slow

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UT"})
# Short values ("M", "CT", "1") occur everywhere by chance: a match would say nothing.
MIN_NEEDLE = 4
# Values the profile itself writes: pseudonym prefix and dummies (engine._DUMMY_TEXT).
PROFILE_WRITES = ("ANON-", "ANONYMIZED", "ANONYMOUS", "19000101000000", "000000")


def _corpora() -> dict[str, list[Path]]:
    testdata = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    deid_root = Path(deid_data.__file__).parent
    return {
        "pydicom": sorted(p for p in testdata if "data_store" not in p.parts),
        "pydicom-data": sorted(p for p in testdata if "data_store" in p.parts),
        # The two zipped ultrasound cines (100 MB each) are left out to keep this test fast;
        # their uncompressed siblings in the same folder are ultrasound too.
        "deid-data": sorted(deid_root.rglob("*.dcm")),
    }


def _walk(dataset: Dataset) -> Iterator[pydicom.DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _walk(item)


def _values(element: pydicom.DataElement) -> list[str]:
    if element.VR not in TEXT_VRS or element.value is None:
        return []
    values = element.value if element.VM > 1 else [element.value]
    return [str(v).strip() for v in values if len(str(v).strip()) >= MIN_NEEDLE]


def _identifying_and_kept(original: Dataset) -> tuple[dict[str, str], set[str]]:
    """Original values of identifying attributes (-> attribute), and values kept elsewhere."""
    actions = resolve_actions(DeidOptions().enabled_option_keys())
    identifying: dict[str, str] = {}
    kept: set[str] = set()
    for element in _walk(original):
        tag = element.tag
        action = actions.get(int(tag))
        overlay_or_curve = tag.group & 0xFF00 in (0x5000, 0x6000)
        if action is Action.KEEP or (
            action is None and not tag.is_private and not overlay_or_curve
        ):
            kept.update(_values(element))
        elif element.VR == "TM" and action is Action.CLEAN:
            kept.update(_values(element))  # the Modified Dates option shifts dates, keeps times
        else:
            identifying.update(dict.fromkeys(_values(element), element.keyword or str(tag)))
    for element in original.file_meta:
        if element.tag not in (0x00020002, 0x00020010):  # SOP class and syntax stay true
            identifying.update(dict.fromkeys(_values(element), element.keyword))
    return identifying, kept


def _header_bytes(part10: bytes) -> bytes:
    """The output without its pixel data value (passed through untouched by design)."""
    buf = memoryview(part10)
    meta, pos = read_file_meta(buf)
    implicit = meta.get(0x00020010, b"").rstrip(b"\x00 ") == b"1.2.840.10008.1.2"
    pieces = [part10[:pos]]
    for element in iter_elements(buf, pos, len(buf), implicit):
        end = element.value_start if element.tag == PIXEL_DATA else element.end
        pieces.append(part10[element.start : end])
    return b"".join(pieces)


def test_public_corpora_are_de_identified_or_refused_and_nothing_identifying_remains() -> None:
    deidentifier = Deidentifier(SECRET)
    report: dict[str, Counter[str]] = {}
    leaks: list[tuple[str, str]] = []
    checked = 0
    started = time.monotonic()
    for corpus, paths in _corpora().items():
        assert paths, f"corpus {corpus} is not installed (dev extras)"
        outcomes: Counter[str] = Counter()
        for path in paths:
            data = path.read_bytes()
            # When the file is de-identified (any exception but DeidError fails the test)
            try:
                result = deidentifier.deidentify_bytes(data)
            except DeidError as refused:
                # Then a refusal names its reason
                assert refused.reason.value and refused.detail, path.name
                outcomes[f"refused:{refused.reason.value}"] += 1
                continue
            outcomes["deidentified"] += 1
            # Then the output is DICOM that pydicom reads back
            pydicom.dcmread(io.BytesIO(result.dataset_bytes))
            try:
                original = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
                identifying, kept = _identifying_and_kept(original)
            except Exception:  # pydicom cannot read it: our walker still must have
                outcomes["deidentified_unreadable_original"] += 1
                continue
            # and no original value of an identifying attribute remains in its header
            header = _header_bytes(result.dataset_bytes)
            # A value that is part of a kept value (Manufacturer "TOSHIBA_MEC" holds an
            # InstitutionName "TOSHIBA") or of what the profile writes ("ANON" in "ANON-...")
            # cannot tell a leak from a kept attribute: it is not searched for.
            ambiguous = "\n".join([*kept, *PROFILE_WRITES])
            for value, attribute in identifying.items():
                if value in ambiguous:
                    continue
                checked += 1
                if value.encode("utf-8", "replace") in header:
                    leaks.append((f"{corpus}/{path.name}", attribute))
        report[corpus] = outcomes
    elapsed = time.monotonic() - started
    for corpus, outcomes in report.items():
        print(
            f"{corpus}: tried={sum(outcomes.values())} "
            + " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
        )
    print(f"identifying values checked={checked} found={len(leaks)} in {elapsed:.1f} s")
    assert leaks == []
    assert all(outcomes["deidentified"] for outcomes in report.values())
