"""Benchmark: whole studies through the whole local pipeline, per stage and per process memory.

Starts the embedded default once (moto, the inference server, one process per Lambda
function, Orthanc, the FHIR server, the edge forwarder's own CLI), then sends, one after
another and in ascending size, single-series chest CTs of 200, 500 and 1,000 slices of 512²
at 1.5 mm (the 1,000-slice one is ~525 MB) and, after the first, a 5-series study whose
largest (model) series has as many slices as it, each with DCMTK storescu,
and waits until each is delivered to the PACS and the EHR. It prints:
- seconds per timeline stage per study, and per 100 slices (linear growth keeps that flat;
  the quiet timer and polling make the early stages a constant);
- the peak resident memory (VmHWM) of each process after each study: a high-water mark, so
  with sizes ascending each column is what that study needed.
The last line is JSON. This is a heavy run (minutes; several GB of memory): run it by hand.

    python -m benchmarks.pipeline [--slices 200,500,1000] [--no-five-series] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from imaging_ai.local.processes import peak_rss_bytes
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.local.timeline import STAGES, Timeline
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom, write_ct_study

SPACING_MM = (1.5, 0.7, 0.7)
# The 5-series study: the model's series (the largest, 1.5 mm) and four thicker reconstructions
# of the same anatomy, as (fraction of its slices, slice spacing mm, description).
OTHER_SERIES = (
    (0.6, 2.5, "CHEST 2.5MM"),
    (0.5, 3.0, "CHEST 3MM"),
    (0.3, 5.0, "CHEST 5MM"),
    (0.2, 7.5, "CHEST 7.5MM"),
)


@dataclass
class StudyRun:
    name: str
    slices: int
    instances: int
    megabytes: float
    stages: dict[str, float]
    total_s: float
    delivered: bool
    peak_rss_mib: dict[str, float]
    load: float


def write_five_series(folder: Path, slices: int, size: int) -> tuple[int, float]:
    """One study, five CT series of the same patient: `slices` at 1.5 mm and four thicker."""
    # One folder: the runtime's storescu scans a directory, not its subdirectories.
    study = write_ct_study(folder, seed=2026, shape=(slices, size, size))
    count = len(study.paths)
    for number, (fraction, thickness, description) in enumerate(OTHER_SERIES, start=3):
        depth = max(2, int(slices * fraction))
        phantom = make_chest_phantom(
            2026 + number, shape=(depth, size, size), spacing_mm=(thickness, 0.7, 0.7)
        )
        for ds in iter_ct_slices(
            phantom,
            study.patient,
            study.study_instance_uid,
            generate_uid(),
            study.frame_of_reference_uid,
            series_number=number,
            series_description=description,
        ):
            path = folder / f"S{number}_{int(ds.InstanceNumber):04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            count += 1
    return count, _megabytes(folder)


def _megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.dcm")) / 1e6


def run_study(
    pipeline: LocalPipeline, folder: Path, name: str, slices: int, instances: int, timeout_s: float
) -> StudyRun:
    # A fresh timeline per study: stages are recorded once, the first time they are seen.
    pipeline.pseudo_study_uids.clear()
    pipeline.timeline = Timeline(printer=None)
    started = time.monotonic()
    pipeline.timeline.started = started
    pipeline.send_study(folder)
    delivered = pipeline.wait_until_delivered(timeout_s)
    return StudyRun(
        name=name,
        slices=slices,
        instances=instances,
        megabytes=_megabytes(folder),
        stages=dict(pipeline.timeline.durations()),
        total_s=time.monotonic() - started,
        delivered=delivered,
        peak_rss_mib={k: v / 2**20 for k, v in _peaks(pipeline).items()},
        load=os.getloadavg()[0],
    )


def _peaks(pipeline: LocalPipeline) -> dict[str, int]:
    peaks = pipeline.peak_rss()
    if pipeline.moto is not None:  # context: moto keeps every S3 object in its memory
        peaks["moto (S3 etc.)"] = peak_rss_bytes(pipeline.moto.process.pid)
    return peaks


def print_report(runs: list[StudyRun]) -> None:
    print(f"{'stage (s since previous)':<18}" + "".join(f"{r.name:>14}" for r in runs))
    for stage in STAGES:
        cells = [f"{r.stages[stage]:14.1f}" if stage in r.stages else f"{'-':>14}" for r in runs]
        print(f"{stage:<18}" + "".join(cells))
    print(f"{'total':<18}" + "".join(f"{r.total_s:14.1f}" for r in runs))
    print(f"{'delivered':<18}" + "".join(f"{r.delivered!s:>14}" for r in runs))
    print(f"{'instances':<18}" + "".join(f"{r.instances:14d}" for r in runs))
    print(f"{'MB':<18}" + "".join(f"{r.megabytes:14.0f}" for r in runs))
    print(f"{'load average':<18}" + "".join(f"{r.load:14.1f}" for r in runs))
    print()
    single = [r for r in runs if r.name.startswith("1x")]
    if len(single) > 1:
        print("seconds per 100 slices of the model's series (flat = linear in size):")
        print(f"{'stage':<18}" + "".join(f"{r.name:>14}" for r in single))
        for stage in ("uploaded", "preprocessed", "inferred", "results_received"):
            cells = [
                f"{100 * r.stages[stage] / r.slices:14.2f}" if stage in r.stages else f"{'-':>14}"
                for r in single
            ]
            print(f"{stage:<18}" + "".join(cells))
        print()
    print("peak resident memory, MiB (high-water mark after each study):")
    names = list(runs[-1].peak_rss_mib)
    print(f"{'process':<18}" + "".join(f"{r.name:>14}" for r in runs))
    for name in names:
        print(f"{name:<18}" + "".join(f"{r.peak_rss_mib.get(name, 0):14.0f}" for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", default="200,500,1000", help="comma-separated sizes")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--no-five-series", action="store_true")
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.slices.split(","))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    studies = work / "studies"
    runs: list[StudyRun] = []
    try:
        with LocalPipeline(
            work_dir=work / "run", quiet_seconds=args.quiet_seconds, printer=None
        ) as pipeline:
            plan: list[tuple[str, int]] = [(f"1x{n}", n) for n in sizes]
            if not args.no_five_series:
                # Right after the single series its model series matches: peaks are
                # high-water marks, so a later, larger study would hide its own.
                plan.insert(1, ("5-series", sizes[0]))
            for name, slices in plan:
                folder = studies / name
                if name == "5-series":
                    instances, _ = write_five_series(folder, slices, args.size)
                else:
                    study = write_ct_study(
                        folder, seed=2026, shape=(slices, args.size, args.size),
                        spacing_mm=SPACING_MM, patient=FakePatient(),
                    )  # fmt: skip
                    instances = len(study.paths)
                    del study
                print(f"sending {name}: {instances} instances", file=sys.stderr, flush=True)
                runs.append(run_study(pipeline, folder, name, slices, instances, args.timeout))
                shutil.rmtree(folder)  # the forwarder's spool holds its own copy
                if not runs[-1].delivered:
                    print(f"{name} was not delivered: {pipeline.failures}", file=sys.stderr)
                    break
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs; inference on CPU; quiet timer {args.quiet_seconds} s")
    print_report(runs)
    print(
        json.dumps(
            {
                r.name: {
                    "total_s": round(r.total_s, 1),
                    "delivered": r.delivered,
                    "peak_rss_mib": {k: round(v) for k, v in r.peak_rss_mib.items()},
                }
                for r in runs
            }
        )
    )


if __name__ == "__main__":
    main()
