"""Benchmark: planted identifying values left by our de-id and by its peers, on the privacy corpus.

One CT instance carries the 24 values of tests/privacy_corpus.py (descriptors holding names,
phone numbers and IDs, standard sequences sent as UN, private blocks of several creators, a
three-deep nesting, DT/TM values, file meta elements in the body). Every contender de-identifies
the same bytes with its default configuration; the table counts the planted values still found
(case-insensitive) in what it writes. Prints a table, then one JSON line.

    python -m benchmarks.privacy_corpus
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from edge_forwarder.deid import Deidentifier, DeidError, DeidOptions
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from tests.privacy_corpus import PLANTED, plant, to_part10

SITE_SECRET = b"benchmark-site-secret-0123456789"


def _ours(options: DeidOptions) -> Callable[[bytes, Path], bytes]:
    deidentifier = Deidentifier(SITE_SECRET, options)
    return lambda data, _: deidentifier.deidentify_bytes(data).dataset_bytes


def _saved(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _dicognito(data: bytes, _: Path) -> bytes:
    from dicognito.anonymizer import Anonymizer

    ds = pydicom.dcmread(io.BytesIO(data))
    Anonymizer().anonymize(ds)
    return _saved(ds)


def _dicom_anonymizer(data: bytes, _: Path) -> bytes:
    from dicomanonymizer import anonymize_dataset

    ds = pydicom.dcmread(io.BytesIO(data))
    anonymize_dataset(ds)
    return _saved(ds)


def _deid(data: bytes, work: Path) -> bytes:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    logging.getLogger("deid").setLevel(logging.ERROR)
    source = work / "in.dcm"
    source.write_bytes(data)
    out_dir = work / "deid-out"
    out_dir.mkdir(exist_ok=True)
    replace_identifiers(
        dicom_files=[str(source)],
        deid=DeidRecipe(),  # the package's default recipe
        save=True,
        overwrite=True,
        output_folder=str(out_dir),
    )
    return b"".join(path.read_bytes() for path in out_dir.rglob("*") if path.is_file())


def main() -> None:
    phantom = make_chest_phantom(3, shape=(3, 64, 64), spacing_mm=(2.0, 5.0, 5.0))
    slices = iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    data = to_part10(plant(next(iter(slices))))
    contenders: dict[str, Callable[[bytes, Path], bytes]] = {
        "ours: default profile": _ours(DeidOptions()),
        "ours: + Clean Descriptors": _ours(DeidOptions(clean_descriptors=True)),
        "dicognito 0.19 (default)": _dicognito,
        "deid 0.4.13 (default recipe)": _deid,
        "dicom-anonymizer 2.1 (default)": _dicom_anonymizer,
    }
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in contenders.items():
            try:
                output = run(data, Path(tmp))
            except DeidError as refused:
                rows[name] = {"outcome": f"refused: {refused.reason.value}", "found": None}
                continue
            except Exception as error:  # a peer failing on the corpus is itself a result
                rows[name] = {"outcome": f"error: {type(error).__name__}", "found": None}
                continue
            lowered = output.lower()
            found = [key for key, value in PLANTED.items() if value.lower().encode() in lowered]
            rows[name] = {"outcome": "written", "found": len(found), "which": found}
    print(f"{'contender':34} {'planted':>7} {'found':>5}  outcome")
    for name, row in rows.items():
        found = "-" if row["found"] is None else str(row["found"])
        print(f"{name:34} {len(PLANTED):>7} {found:>5}  {row['outcome']}")
    print(json.dumps({"planted": len(PLANTED), "results": rows}))


if __name__ == "__main__":
    main()
