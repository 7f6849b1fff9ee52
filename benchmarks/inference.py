"""Per-study inference of the demo model: fp32 vs AMP, sliding-window batch size, torch.compile.

On a GPU machine, one command runs the whole grid on the demo study (200 x 512^2 CT):

    python benchmarks/inference.py

that is fp32 and AMP, sliding-window batch sizes 1, 4 and 8, each with torch.compile off and
on. Here (CPU) it runs the production fp32 eager setting (the model's default windows a pass)
and the other of 1 or 2 beside it; `--small` shrinks the study so a smoke run takes seconds.
Every row is measured after a warm-up run (cuDNN autotuning, allocator, compilation) and
checked against the first row's findings: a faster setting that finds something else is
printed as such. The peer is the first row: our production setting's fp32 eager path on the
same device and study. The last line is JSON.

    python benchmarks/inference.py [--amp off|on|both] [--sw-batch 1,4,8]
        [--compile off|on|both] [--repeats 2] [--small] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imaging_ai.inference.evaluation import DEMO_SHAPE, DEMO_SPACING_MM, model_input_for
from imaging_ai.inference.network import build_network
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from imaging_ai.model_io import Finding
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import make_chest_phantom

MODEL_DIR = DEMO_MODEL_DIR
# A small study that still holds nodules: a CPU smoke run of every code path in seconds.
SMALL_SHAPE = (64, 192, 192)
SMALL_SPACING_MM = (1.5, 1.5, 1.5)  # the model's own grid: no resampling


@dataclass(frozen=True)
class Setting:
    amp: bool
    sw_batch_size: int
    compiled: bool

    @property
    def name(self) -> str:
        precision = "amp" if self.amp else "fp32"
        mode = "compile" if self.compiled else "eager"
        return f"{precision} batch {self.sw_batch_size} {mode}"


@dataclass
class Row:
    setting: Setting
    seconds: float
    warmup_seconds: float
    findings: list[Finding]
    peak_gpu_mib: float


def eager_network(predictor: Predictor) -> torch.nn.Module:
    """torch.compile cannot take TorchScript: the demo architecture with the same weights."""
    network = build_network(out_channels=len(predictor.card.labels) + 1)
    network.load_state_dict(predictor.network.state_dict(), strict=True)
    return network.to(predictor.device).eval()


def measure(
    setting: Setting, device: str, model_dir: Path, image: np.ndarray, meta: object, repeats: int
) -> Row:
    predictor = Predictor(
        model_dir,
        PredictorSettings(device=device, amp=setting.amp, sw_batch_size=setting.sw_batch_size),
    )
    if setting.compiled:
        predictor.network = torch.compile(eager_network(predictor))  # type: ignore[assignment]
    cuda = predictor.device.type == "cuda"

    def once() -> tuple[float, list[Finding]]:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        _, output = predictor.predict(image, meta)  # type: ignore[arg-type]
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, output.findings

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_seconds, _ = once()
    seconds: list[float] = []
    findings: list[Finding] = []
    for _ in range(repeats):
        elapsed, findings = once()
        seconds.append(elapsed)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return Row(setting, statistics.median(seconds), warmup_seconds, findings, peak)


def same_findings(a: list[Finding], b: list[Finding], tolerance_mm: float = 0.5) -> bool:
    """Same count, and diameters and volumes within rounding of the reference's."""
    if len(a) != len(b):
        return False
    key = lambda f: (f.label_value, f.component)  # noqa: E731
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        if abs(x.longest_diameter_mm - y.longest_diameter_mm) > tolerance_mm:
            return False
        if abs(x.volume_mm3 - y.volume_mm3) > 0.05 * max(y.volume_mm3, 1.0):
            return False
    return True


def choices(value: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[value]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:n]")
    parser.add_argument("--amp", choices=["off", "on", "both"], default=None)
    parser.add_argument("--sw-batch", default=None, help="comma-separated batch sizes")
    parser.add_argument("--compile", choices=["off", "on", "both"], default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small", action="store_true", help=f"a {SMALL_SHAPE} study")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device.startswith("cuda")
    # Defaults: the whole grid on a GPU; production's CPU setting here, then the other batch
    # (compile on CPU takes minutes on 2 cores and AMP is GPU-only in the predictor).
    amps = choices(args.amp or ("both" if gpu else "off"))
    reference = Predictor(args.model_dir, PredictorSettings(device="cpu"))
    production = reference.sw_batch_size  # the CPU default for this model's windows
    cpu_batches = f"{production},{1 if production > 1 else 2}"
    batches = [int(b) for b in (args.sw_batch or ("1,4,8" if gpu else cpu_batches)).split(",")]
    compiles = choices(args.compile or ("both" if gpu else "off"))
    shape, spacing = DEMO_SHAPE, DEMO_SPACING_MM
    if args.small:
        shape, spacing = SMALL_SHAPE, SMALL_SPACING_MM

    phantom = make_chest_phantom(7, shape=shape, spacing_mm=spacing)
    image, meta = model_input_for(phantom, reference.card)
    del reference
    settings = [Setting(a, b, c) for c in compiles for a in amps for b in batches]
    rows = [measure(s, device, args.model_dir, image, meta, args.repeats) for s in settings]

    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0]
    print(
        f"study {shape} at {spacing} mm, model grid {image.shape}; {name}; torch "
        f"{torch.__version__}; load average {load:.1f}; {len(phantom.nodules)} true nodule(s)"
    )
    first = rows[0]
    print(
        f"{'setting':<24} {'s/study':>8} {'vs first':>8} {'warm-up s':>9} {'GPU MiB':>8} "
        f"{'findings':>8} {'same as first':>13}"
    )
    for row in rows:
        print(
            f"{row.setting.name:<24} {row.seconds:8.2f} {row.seconds / first.seconds:8.2f} "
            f"{row.warmup_seconds:9.1f} {row.peak_gpu_mib:8.0f} {len(row.findings):8d} "
            f"{'yes' if same_findings(row.findings, first.findings) else 'NO':>13}"
        )
    fastest = min(
        (row for row in rows if same_findings(row.findings, first.findings)),
        key=lambda row: row.seconds,
    )
    print(
        json.dumps(
            {
                "device": name,
                "first": first.setting.name,
                "first_seconds": round(first.seconds, 3),
                "fastest_same_findings": fastest.setting.name,
                "fastest_seconds": round(fastest.seconds, 3),
                "speedup": round(first.seconds / fastest.seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
