"""Benchmark: our preprocess path against MONAI's loader + transforms on one synthetic CT series.

Both sides start from the same DICOM files (written in shuffled order under random names),
sort them, apply rescale, resample to the model spacing and scale the intensity window to
[0, 1]. MONAI runs LoadImage(reader="PydicomReader") + Orientation + Spacing +
ScaleIntensityRange on the same output grid. The last line is JSON for scripts.

    python benchmarks/preprocess.py [--slices 300] [--size 512] [--repeat 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
from monai.transforms import Compose, LoadImage, Orientation, ScaleIntensityRange, Spacing
from pydicom.uid import generate_uid

from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from imaging_ai.volume import build_volume, resample_normalize

SOURCE_SPACING = (1.25, 0.7, 0.7)  # (slice, row, column) mm
TARGET_SPACING = (2.0, 1.0, 1.0)  # what a model.json would ask for
WINDOW = (-1000.0, 400.0)


def write_series(directory: Path, slices: int, size: int) -> None:
    phantom = make_chest_phantom(
        seed=11, shape=(slices, size, size), spacing_mm=SOURCE_SPACING, nodule_count=2
    )
    datasets = list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )
    order = np.random.default_rng(5).permutation(len(datasets))
    for index in order:  # random names and shuffled write order: no help from the file system
        datasets[index].save_as(directory / f"{uuid.uuid4().hex}.dcm", enforce_file_format=True)


def ours(directory: Path) -> np.ndarray:
    volume = build_volume(pydicom.dcmread(path) for path in sorted(directory.iterdir()))
    image, _ = resample_normalize(volume.voxels, volume.geometry, TARGET_SPACING, WINDOW)
    return image


def monai(directory: Path) -> np.ndarray:
    # LPS axis codes put the array in (column, row, slice) order for axial CT.
    pipeline = Compose(
        [
            LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
            Orientation(axcodes="LPS"),
            Spacing(pixdim=TARGET_SPACING[::-1], mode="bilinear", padding_mode="border"),
            ScaleIntensityRange(a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    output = pipeline(str(directory))
    return np.asarray(output[0].numpy()).transpose(2, 1, 0)


def timed(function, directory: Path, repeat: int) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = function(directory)
        best = min(best, time.perf_counter() - start)
    return best, result  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # both sides single-threaded: a fair, reproducible comparison
    workdir = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        # Written by a child process, so the peak RSS below is the preprocess path's alone.
        writer = multiprocessing.get_context("spawn").Process(
            target=write_series, args=(workdir, args.slices, args.size)
        )
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit("writing the synthetic series failed")
        ours_s, ours_image = timed(ours, workdir, args.repeat)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        monai_s, monai_image = timed(monai, workdir, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    common = tuple(min(a, b) for a, b in zip(ours_image.shape, monai_image.shape, strict=True))
    region = tuple(slice(0, n) for n in common)
    difference = np.abs(ours_image[region] - monai_image[region])
    ratio = monai_s / ours_s
    rows = [
        ("series", f"{args.slices} x {args.size}^2 CT, shuffled files"),
        ("grid", f"{SOURCE_SPACING} mm -> {TARGET_SPACING} mm"),
        ("ours output shape", str(ours_image.shape)),
        ("MONAI output shape", str(monai_image.shape)),
        ("ours (s)", f"{ours_s:.2f}"),
        ("MONAI LoadImage+Orientation+Spacing+Scale (s)", f"{monai_s:.2f}"),
        ("ratio MONAI / ours", f"{ratio:.2f}"),
        ("max abs difference", f"{float(difference.max()):.2e}"),
        ("mean abs difference", f"{float(difference.mean()):.2e}"),
        ("peak RSS after ours (MB)", f"{peak_rss_mb:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(
        json.dumps(
            {
                "ours_s": round(ours_s, 3),
                "monai_s": round(monai_s, 3),
                "ratio": round(ratio, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "max_abs_diff": float(difference.max()),
            }
        )
    )


if __name__ == "__main__":
    main()
