"""Per-study inference time of the demo model on the demo study (CPU; on CUDA fp32 vs AMP).

Run: python benchmarks/inference.py [--model-dir containers/inference/model] [--repeats 2]
The last line is JSON: {"device", "seconds_per_study", "voxels"} for the default setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from imaging_ai.inference.evaluation import DEMO_SHAPE, DEMO_SPACING_MM, model_input_for
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from imaging_ai.synthetic import make_chest_phantom

MODEL_DIR = Path(__file__).resolve().parents[1] / "containers" / "inference" / "model"


def time_study(settings: PredictorSettings, model_dir: Path, repeats: int) -> dict[str, float]:
    predictor = Predictor(model_dir, settings)
    phantom = make_chest_phantom(7, shape=DEMO_SHAPE, spacing_mm=DEMO_SPACING_MM)
    image, meta = model_input_for(phantom, predictor.card)
    predictor.predict(image, meta)  # warm-up: cuDNN autotuning, allocator, page faults
    seconds = []
    findings = 0
    for _ in range(repeats):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        _, output = predictor.predict(image, meta)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        findings = len(output.findings)
    return {
        "seconds": statistics.median(seconds),
        "model_voxels": float(image.size),
        "findings": float(findings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu-threads", type=int, default=0)
    args = parser.parse_args()
    voxels = DEMO_SHAPE[0] * DEMO_SHAPE[1] * DEMO_SHAPE[2]
    rows: list[tuple[str, dict[str, float]]] = []
    if torch.cuda.is_available():
        for name, amp in (("cuda fp32", False), ("cuda amp", True)):
            settings = PredictorSettings(device="cuda", amp=amp)
            rows.append((name, time_study(settings, args.model_dir, args.repeats)))
    cpu = PredictorSettings(device="cpu", cpu_threads=args.cpu_threads)
    rows.append(("cpu fp32", time_study(cpu, args.model_dir, args.repeats)))
    baseline = rows[0][1]["seconds"]
    print(
        f"demo study {DEMO_SHAPE} at {DEMO_SPACING_MM} mm, model grid voxels "
        f"{int(rows[0][1]['model_voxels'])}, threads {torch.get_num_threads()}"
    )
    print(f"{'setting':<10} {'s/study':>8} {'vs first':>8} {'findings':>8}")
    for name, row in rows:
        print(
            f"{name:<10} {row['seconds']:>8.2f} {row['seconds'] / baseline:>8.2f} "
            f"{int(row['findings']):>8}"
        )
    # The headline figure: AMP on a GPU when there is one, else the deterministic CPU path.
    headline_name, headline = rows[1] if torch.cuda.is_available() else rows[-1]
    print(
        json.dumps(
            {
                "device": headline_name.split()[0],
                "setting": headline_name,
                "seconds_per_study": round(headline["seconds"], 3),
                "voxels": voxels,
            }
        )
    )


if __name__ == "__main__":
    main()
