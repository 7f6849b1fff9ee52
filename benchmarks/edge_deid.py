"""Benchmark: edge de-identification (+ encryption) against dicognito, deid and a pydicom floor.

Runs every contender on the same synthetic study in one process. Prints a table, then one JSON
line. C-STORE ingest against DCMTK storescp is `benchmarks/intake.py`.
`ours_mb_s` is what the forwarder does with a completed study: de-identify every spooled
instance, tar each series, encrypt each tar with one KMS data key (1 MiB frames, committing
suite without signing) and hash it; the other `ours_*` figures leave steps out.

    python -m benchmarks.edge_deid [--slices 200] [--size 512]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from edge_forwarder.deid import Deidentifier
from edge_forwarder.transport.packaging import pack_series, seal
from imaging_ai import envelope
from imaging_ai.aws import client, reset_clients
from imaging_ai.contracts import encryption_context
from imaging_ai.local.moto_server import start_moto_server
from imaging_ai.synthetic import write_ct_study

SITE_SECRET = b"benchmark-site-secret-0123456789"
FORWARDER = "ours: de-id + tar + KMS envelope encryption, per series"
FORWARDER_NO_ENCRYPTION = "ours: de-id + tar per series (no encryption)"
DEID_ONLY = "ours: de-id only, in memory"


def _timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _ours_deid_only(files: list[bytes]) -> Callable[[], None]:
    deidentifier = Deidentifier(SITE_SECRET)

    def run() -> None:
        for data in files:
            deidentifier.deidentify_bytes(data)

    return run


def _ours_forwarder(
    series: dict[str, list[Path]], out_dir: Path, key_arn: str | None
) -> Callable[[], None]:
    """What the forwarder's outbound step does with a completed study, per series, through
    its own functions: `pack_series` (read each spooled instance, de-identify, tar) and, with a
    key, `seal` (one KMS data key, 1 MiB frames, SHA-256 taken while encrypting)."""
    deidentifier = Deidentifier(SITE_SECRET)
    out_dir.mkdir(parents=True, exist_ok=True)

    def pseudo_ids(result: Any) -> tuple[str, str, str]:
        pseudo = result.pseudo
        return pseudo.study_instance_uid, pseudo.series_instance_uid, pseudo.sop_instance_uid

    def run() -> None:
        for index, paths in enumerate(series.values()):
            tar_path = out_dir / f"series-{index:03d}.tar"
            packed = pack_series(paths, deidentifier.deidentify_bytes, pseudo_ids, tar_path)
            if key_arn is not None:
                context = encryption_context("bench-site", packed.pseudo_study_uid)
                seal(tar_path, tar_path.with_suffix(".tar.enc"), key_arn, context)
            tar_path.unlink()

    return run


def _dicognito(files: list[bytes]) -> Callable[[], None]:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def run() -> None:
        for data in files:
            ds = pydicom.dcmread(io.BytesIO(data))
            anonymizer.anonymize(ds)
            ds.save_as(io.BytesIO(), enforce_file_format=True)

    return run


def _deid(paths: list[Path], out_dir: Path) -> Callable[[], None]:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    logging.getLogger("deid").setLevel(logging.ERROR)
    recipe = DeidRecipe()  # the package's default recipe
    out_dir.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        replace_identifiers(
            dicom_files=[str(p) for p in paths],
            deid=recipe,
            save=True,
            overwrite=True,
            output_folder=str(out_dir),
        )

    return run


def _pydicom_floor(files: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for data in files:
            pydicom.dcmread(io.BytesIO(data)).save_as(io.BytesIO(), enforce_file_format=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        study = write_ct_study(tmp / "study", shape=(args.slices, args.size, args.size))
        paths = study.paths
        files = [p.read_bytes() for p in paths]
        megabytes = sum(len(f) for f in files) / 1e6
        elements = len(pydicom.dcmread(paths[0], stop_before_pixels=True))

        moto = start_moto_server()
        os.environ.update(moto.environment())
        reset_clients()
        envelope.reset_providers()
        try:
            key_arn = client("kms").create_key(Description="benchmark")["KeyMetadata"]["Arn"]
            series: dict[str, list[Path]] = {}
            for path in paths:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
                series.setdefault(uid, []).append(path)
            # Warm caches (KMS data key provider, pydicom dictionaries) outside the timings.
            _ours_forwarder({"warm": paths[:2]}, tmp / "warm", key_arn)()
            seconds = {
                FORWARDER: _timed(_ours_forwarder(series, tmp / "outbox", key_arn)),
                FORWARDER_NO_ENCRYPTION: _timed(_ours_forwarder(series, tmp / "outbox", None)),
                DEID_ONLY: _timed(_ours_deid_only(files)),
                "dicognito 0.19": _timed(_dicognito(files)),
                "deid 0.4 default recipe": _timed(_deid(paths, tmp / "deid-out")),
                "pydicom read + write (floor)": _timed(_pydicom_floor(files)),
            }
        finally:
            moto.stop()

    rates = {name: megabytes / s for name, s in seconds.items()}
    print(f"study: {len(paths)} CT slices of {args.size}², {megabytes:.1f} MB in "
          f"{len(series)} series, {elements} header elements per slice; one process, one core; "
          f"only the first row includes encryption (one KMS data key per series)")  # fmt: skip
    print(f"{'contender':56} {'seconds':>8} {'MB/s':>8}")
    for name, s in seconds.items():
        print(f"{name:56} {s:8.2f} {rates[name]:8.1f}")
    ours = rates[FORWARDER]
    summary = {
        "ours_mb_s": round(ours, 1),  # de-id + tar + encryption per series, as the forwarder
        "ours_includes_encryption": True,
        "ours_no_encryption_mb_s": round(rates[FORWARDER_NO_ENCRYPTION], 1),
        "ours_deid_only_mb_s": round(rates[DEID_ONLY], 1),
        "dicognito_mb_s": round(rates["dicognito 0.19"], 1),
        "deid_mb_s": round(rates["deid 0.4 default recipe"], 1),
        "pydicom_rw_mb_s": round(rates["pydicom read + write (floor)"], 1),
        "ratio_vs_dicognito": round(ours / rates["dicognito 0.19"], 2),
    }
    sys.stdout.flush()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
