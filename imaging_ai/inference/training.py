"""Train the demo nodule model on synthetic chest phantoms and write a model directory.

Run: python -m imaging_ai.inference.training \
     --out containers/inference/models/lung-nodule-demo/1.0.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.losses.dice import DiceCELoss

from imaging_ai.inference.grid import model_geometry_for, resample_linear
from imaging_ai.inference.network import build_network, export_torchscript
from imaging_ai.inference.predictor import normalise_hu
from imaging_ai.logs import configure_json_logging, get_logger
from imaging_ai.model_card import MODEL_CARD_NAME, Code, Label, ModelCard
from imaging_ai.synthetic import make_chest_phantom

logger = get_logger(__name__)

MODEL_NAME = "lung-nodule-demo"
WEIGHTS_FILE = "model.ts"
MODEL_SPACING_MM = (1.5, 1.5, 1.5)
INTENSITY_WINDOW_HU = (-1000.0, 400.0)
ROI_SIZE = (112, 128, 240)
PATCH_SIZE = (64, 64, 64)
# Training draws phantom seeds from here upward; evaluation refuses seeds in this range.
TRAINING_SEED_BASE = 100_000

NODULE_LABEL = Label(
    value=1,
    name="Nodule",
    category=Code(scheme="SCT", value="49755003", meaning="Morphologically abnormal structure"),
    type=Code(scheme="SCT", value="27925004", meaning="Nodule"),
    finding_site=Code(scheme="SCT", value="39607008", meaning="Lung structure"),
    radlex=Code(scheme="RADLEX", value="RID50149", meaning="pulmonary nodule"),
    # A 6 mm sphere is 113 mm3; smaller components are noise for this model.
    min_volume_mm3=50.0,
)


@dataclass(frozen=True)
class TrainingCase:
    """One phantom on the model grid: image in HU and the nodule fraction of each voxel."""

    image: npt.NDArray[np.float32]
    nodule_fraction: npt.NDArray[np.float32]
    nodule_voxels: list[tuple[int, int, int]]


def make_training_case(seed: int) -> TrainingCase:
    """A phantom at a random source spacing, resampled to the model grid as preprocessing does.

    Resampling from a finer source (instead of generating at model spacing) teaches the network
    the partial-volume edges it will see at inference, which is what keeps volumes accurate.
    """
    rng = np.random.default_rng(seed)
    slice_mm = float(rng.choice([1.0, 1.25, 1.5, 2.0]))
    pixel_mm = float(rng.uniform(0.6, 0.9))
    extent_z = float(rng.uniform(110.0, 220.0))
    shape = (int(extent_z / slice_mm), int(358 / pixel_mm), int(358 / pixel_mm))
    phantom = make_chest_phantom(
        seed,
        shape=shape,
        spacing_mm=(slice_mm, pixel_mm, pixel_mm),
        nodule_count=int(rng.integers(2, 6)),
        nodule_diameters_mm=(4.5, 22.0),
        noise_hu=float(rng.uniform(10.0, 20.0)),
    )
    source = phantom.geometry()
    model = model_geometry_for(source, MODEL_SPACING_MM)
    image = resample_linear(phantom.hu, source, model)
    fraction = resample_linear((phantom.nodule_mask > 0).astype(np.float32), source, model)
    # Both grids start at the same voxel, so a source index scales straight onto the model grid.
    centres = [
        tuple(
            round(index * s / m)
            for index, s, m in zip(
                n.center_voxel, phantom.spacing_mm, MODEL_SPACING_MM, strict=True
            )
        )
        for n in phantom.nodules
    ]
    return TrainingCase(image, fraction, [(c[0], c[1], c[2]) for c in centres])


def _crop(
    volume: npt.NDArray[np.float32], start: tuple[int, ...], fill: float
) -> npt.NDArray[np.float32]:
    patch = np.full(PATCH_SIZE, fill, dtype=np.float32)
    src = tuple(
        slice(max(0, s), min(n, s + p))
        for s, n, p in zip(start, volume.shape, PATCH_SIZE, strict=True)
    )
    dst = tuple(slice(r.start - s, r.stop - s) for r, s in zip(src, start, strict=True))
    patch[dst] = volume[src]
    return patch


def sample_patches(
    case: TrainingCase, count: int, rng: np.random.Generator
) -> Iterator[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """Half the patches around nodules, half anywhere: the chest wall and mediastinum are the
    same HU as a nodule, so the network must see plenty of them as negatives."""
    for index in range(count):
        if case.nodule_voxels and index % 2 == 0:
            centre = case.nodule_voxels[int(rng.integers(len(case.nodule_voxels)))]
            jitter = rng.integers(-PATCH_SIZE[0] // 3, PATCH_SIZE[0] // 3 + 1, size=3)
            start = tuple(
                int(c + j - p // 2) for c, j, p in zip(centre, jitter, PATCH_SIZE, strict=True)
            )
        else:
            start = tuple(
                int(rng.integers(0, max(1, n - p + 1)))
                for n, p in zip(case.image.shape, PATCH_SIZE, strict=True)
            )
        image = _crop(case.image, start, INTENSITY_WINDOW_HU[0])
        target = _crop(case.nodule_fraction, start, 0.0)
        # Augment what varies between scanners: noise, a small HU offset, left-right/AP flips.
        image = image + rng.normal(0.0, rng.uniform(0.0, 8.0), size=image.shape).astype(np.float32)
        image = image + np.float32(rng.uniform(-25.0, 25.0))
        for axis in (1, 2):
            if rng.random() < 0.5:
                image, target = np.flip(image, axis), np.flip(target, axis)
        yield image, target


def train(
    out_dir: Path,
    max_steps: int,
    max_minutes: float,
    batch_size: int = 2,
    patches_per_case: int = 8,
    learning_rate: float = 2e-3,
    threads: int = 2,
    seed_base: int = TRAINING_SEED_BASE,
) -> dict[str, float | int | str]:
    """Train until `max_steps` or `max_minutes`, whichever comes first; write the model dir."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    network = build_network(out_channels=2)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    loss_function = DiceCELoss(softmax=True, lambda_dice=0.5, lambda_ce=1.0)
    started = time.monotonic()
    budget_s = max_minutes * 60.0
    step, cases, running = 0, 0, 0.0
    pending: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    while step < max_steps and time.monotonic() - started < budget_s:
        if len(pending) < batch_size:
            case = make_training_case(seed_base + cases)
            cases += 1
            pending.extend(sample_patches(case, patches_per_case, rng))
            continue
        batch, pending = pending[:batch_size], pending[batch_size:]
        images = torch.stack(
            [normalise_hu(np.ascontiguousarray(i), INTENSITY_WINDOW_HU) for i, _ in batch]
        )
        fractions = torch.stack([torch.from_numpy(np.ascontiguousarray(t)) for _, t in batch])
        targets = torch.stack([1.0 - fractions, fractions], dim=1)
        progress = max(step / max_steps, (time.monotonic() - started) / budget_s)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        network.train()
        optimiser.zero_grad()
        loss = loss_function(network(images[:, None]), targets)
        loss.backward()
        optimiser.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        step += 1
        if step % 50 == 0:
            logger.info(
                "training_progress",
                step=step,
                phantoms=cases,
                loss=round(running, 4),
                minutes=round((time.monotonic() - started) / 60, 2),
            )
    minutes = (time.monotonic() - started) / 60.0
    summary: dict[str, float | int | str] = {
        "steps": step,
        "phantoms": cases,
        "minutes": round(minutes, 2),
        "final_loss": round(running, 4),
        "seed_range": f"{seed_base}..{seed_base + cases - 1}",
        "threads": threads,
    }
    write_model_dir(network, out_dir, summary)
    return summary


def write_model_dir(
    network: torch.nn.Module, out_dir: Path, training: dict[str, float | int | str]
) -> ModelCard:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    export_torchscript(network, weights)
    card = ModelCard(
        name=MODEL_NAME,
        version="1.0.0",
        description=(
            "DEMO MODEL, NOT FOR CLINICAL USE. Lung nodule segmentation trained only on the "
            "project's synthetic chest CT phantoms (imaging_ai.synthetic); it has never seen "
            "a real patient."
        ),
        weights_file=WEIGHTS_FILE,
        weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        labels=[NODULE_LABEL],
        input_spacing_mm=MODEL_SPACING_MM,
        intensity_window_hu=INTENSITY_WINDOW_HU,
        roi_size=ROI_SIZE,
        overlap=0.125,
        not_for_clinical_use=True,
    )
    document = json.loads(card.model_dump_json())
    # Extra keys are ignored by ModelCard but keep the provenance next to the weights.
    document["training"] = {**training, "script": "python -m imaging_ai.inference.training"}
    (out_dir / MODEL_CARD_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    configure_json_logging()
    summary = train(args.out, args.steps, args.minutes, args.batch_size, threads=args.threads)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
