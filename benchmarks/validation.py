"""`edge-forwarder validate` on N demo-size annotated studies: how long a site's validation takes.

Each study is the demo's chest CT (200 x 512^2, 1.5 x 0.7 x 0.7 mm) with its nodules as a truth
SEG; a tenth of them have 5 mm slices, outside the demo model's intended use (not analyzed).
The scanners alternate between two profiles. The peer is the bare model on the same phantoms
in this process (`imaging_ai.inference.evaluation`'s path: resample, predict, score): what the
production path through the whole local pipeline costs on top of the model itself.

    python -m benchmarks.validation [--studies 20] [--out .local-run/validation-benchmark]
        [--no-peer] [--write-only]

Studies already written under `--out` (CT and truth) are kept: writing 20 takes minutes.

Prints a table, then one JSON line. The report it writes (HTML + PDF) is the docs sample.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edge_forwarder.validation.command import validate
from imaging_ai.inference.evaluation import DEMO_SHAPE, DEMO_SPACING_MM, model_input_for
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import ScannerProfile, write_ct_study, write_truth_segmentation

SEED_BASE = 1000  # evaluation seeds: never trained on
THICK_MM = 5.0
SCANNERS = (
    ScannerProfile(),
    ScannerProfile(manufacturer="SIEMENS", model_name="SOMATOM DEMO", software_version="VB20",
                   convolution_kernel="Br40", noise_hu=18.0),
)  # fmt: skip


def write_studies(folder: Path, count: int) -> list[tuple[int, tuple[float, float, float]]]:
    """The annotated studies (CT + truth SEG); returns each one's seed and spacing."""
    written = []
    for index in range(count):
        seed = SEED_BASE + index
        thick = index % 10 == 9
        spacing = (THICK_MM, *DEMO_SPACING_MM[1:]) if thick else DEMO_SPACING_MM
        shape = (DEMO_SHAPE[0] // 4, *DEMO_SHAPE[1:]) if thick else DEMO_SHAPE
        written.append((seed, spacing))
        truth = folder / "truth" / f"study-{index:02d}.dcm"
        if truth.exists():
            continue
        shutil.rmtree(folder / f"study-{index:02d}", ignore_errors=True)  # a partial one
        study = write_ct_study(folder / f"study-{index:02d}", seed=seed, shape=shape,
                               spacing_mm=spacing, scanner=SCANNERS[index % 2])  # fmt: skip
        write_truth_segmentation(study, truth)
    return written


def bare_model_seconds(seeds: list[int]) -> float:
    """The peer: the model alone on the same analyzable phantoms, in this process."""
    from imaging_ai.synthetic import make_chest_phantom

    predictor = Predictor(DEMO_MODEL_DIR, PredictorSettings())
    started = time.perf_counter()
    for seed in seeds:
        phantom = make_chest_phantom(seed, shape=DEMO_SHAPE, spacing_mm=DEMO_SPACING_MM)
        image, meta = model_input_for(phantom, predictor.card, seed)
        predictor.predict(image, meta)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(".local-run/validation-benchmark"))
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--write-only", action="store_true", help="write the studies, stop")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out / "report", ignore_errors=True)
    started = time.perf_counter()
    written = write_studies(args.out / "studies", args.studies)
    generated_s = time.perf_counter() - started
    if args.write_only:
        return 0
    started = time.perf_counter()
    report = validate(args.out / "studies", DEMO_MODEL_DIR, args.out / "report")
    validate_s = time.perf_counter() - started
    print(f"validate: {args.studies} studies in {validate_s:.1f} s", flush=True)
    analyzable = [seed for seed, spacing in written if spacing == DEMO_SPACING_MM]
    peer_s = None if args.no_peer else bare_model_seconds(analyzable)
    print(f"{'what':<52} {'seconds':>9} {'per study':>10}")
    print(f"{'write the annotated studies (not timed by a site)':<52} {generated_s:>9.1f}")
    rows = [("edge-forwarder validate (whole local pipeline)", validate_s, args.studies)]
    if peer_s is not None:
        rows.append(("peer: bare model in-process, analyzable studies", peer_s, len(analyzable)))
    for name, seconds, count in rows:
        print(f"{name:<52} {seconds:>9.1f} {seconds / count:>10.1f}")
    if peer_s:
        print(f"validate / bare model, per analyzable study: "
              f"{(validate_s / args.studies) / (peer_s / len(analyzable)):.1f}x")  # fmt: skip
    summary = report.summary()
    print(json.dumps({"studies": args.studies, "validate_seconds": round(validate_s, 1),
                      "peer_seconds": peer_s and round(peer_s, 1), **summary}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
