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
from collections.abc import Callable, Iterator
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


ModelDirWriter = Callable[[torch.nn.Module, Path, dict[str, float | int | str]], ModelCard]


@dataclass(frozen=True)
class TrainingRecipe:
    """What differs between the demo models: their phantoms, window, network and card."""

    make_case: Callable[[int], TrainingCase]
    intensity_window_hu: tuple[float, float]
    write_model_dir: ModelDirWriter
    seed_base: int
    channels: tuple[int, ...] | None = None  # None: the network module's default
    hu_offset: float = 25.0  # augmentation: a global HU shift of up to this, either way
    extra_noise_hu: float = 8.0  # augmentation: added noise of a random sigma up to this
    learning_rate: float = 2e-3
    patch_size: tuple[int, int, int] = PATCH_SIZE
    script: str = "python -m imaging_ai.inference.training"


def _crop(
    volume: npt.NDArray[np.float32],
    start: tuple[int, ...],
    fill: float,
    size: tuple[int, int, int] = PATCH_SIZE,
) -> npt.NDArray[np.float32]:
    patch = np.full(size, fill, dtype=np.float32)
    src = tuple(
        slice(max(0, s), min(n, s + p)) for s, n, p in zip(start, volume.shape, size, strict=True)
    )
    dst = tuple(slice(r.start - s, r.stop - s) for r, s in zip(src, start, strict=True))
    patch[dst] = volume[src]
    return patch


def sample_patches(
    case: TrainingCase,
    count: int,
    rng: np.random.Generator,
    fill_hu: float = INTENSITY_WINDOW_HU[0],
    hu_offset: float = 25.0,
    size: tuple[int, int, int] = PATCH_SIZE,
    extra_noise_hu: float = 8.0,
) -> Iterator[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """Half the patches around lesions, half anywhere: the chest wall and mediastinum are the
    same HU as a nodule (the skull's inner edge blurs to the HU of blood), so the network must
    see plenty of them as negatives."""
    for index in range(count):
        if case.nodule_voxels and index % 2 == 0:
            centre = case.nodule_voxels[int(rng.integers(len(case.nodule_voxels)))]
            jitter = rng.integers(-size[0] // 3, size[0] // 3 + 1, size=3)
            start = tuple(int(c + j - p // 2) for c, j, p in zip(centre, jitter, size, strict=True))
        else:
            start = tuple(
                int(rng.integers(0, max(1, n - p + 1)))
                for n, p in zip(case.image.shape, size, strict=True)
            )
        image = _crop(case.image, start, fill_hu, size)
        target = _crop(case.nodule_fraction, start, 0.0, size)
        # Augment what varies between scanners: noise, a small HU offset, left-right/AP flips.
        image = image + rng.normal(0.0, rng.uniform(0.0, extra_noise_hu), size=image.shape).astype(
            np.float32
        )
        image = image + np.float32(rng.uniform(-hu_offset, hu_offset))
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
    learning_rate: float | None = None,
    threads: int = 2,
    recipe: TrainingRecipe | None = None,
    max_cpu_minutes: float | None = None,
) -> dict[str, float | int | str]:
    """Train until `max_steps`, `max_minutes` of wall time or `max_cpu_minutes` of this
    process's CPU time, whichever comes first; write the model dir.

    On a shared machine wall time says little: the CPU budget is what makes a run repeatable.
    """
    recipe = recipe or LUNG_NODULE_RECIPE
    window = recipe.intensity_window_hu
    learning_rate = learning_rate or recipe.learning_rate
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    network = build_network(out_channels=2, channels=recipe.channels)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    loss_function = DiceCELoss(softmax=True, lambda_dice=0.5, lambda_ce=1.0)
    started, cpu_started = time.monotonic(), time.process_time()
    budget_s = max_minutes * 60.0
    cpu_budget_s = math.inf if max_cpu_minutes is None else max_cpu_minutes * 60.0
    step, cases, running = 0, 0, 0.0
    pending: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    while (
        step < max_steps
        and time.monotonic() - started < budget_s
        and time.process_time() - cpu_started < cpu_budget_s
    ):
        if len(pending) < batch_size:
            case = recipe.make_case(recipe.seed_base + cases)
            cases += 1
            pending.extend(
                sample_patches(
                    case,
                    patches_per_case,
                    rng,
                    window[0],
                    recipe.hu_offset,
                    recipe.patch_size,
                    recipe.extra_noise_hu,
                )
            )
            continue
        batch, pending = pending[:batch_size], pending[batch_size:]
        images = torch.stack([normalise_hu(np.ascontiguousarray(i), window) for i, _ in batch])
        fractions = torch.stack([torch.from_numpy(np.ascontiguousarray(t)) for _, t in batch])
        targets = torch.stack([1.0 - fractions, fractions], dim=1)
        progress = max(
            step / max_steps,
            (time.monotonic() - started) / budget_s,
            (time.process_time() - cpu_started) / cpu_budget_s,
        )
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
                cpu_minutes=round((time.process_time() - cpu_started) / 60, 2),
            )
    minutes = (time.monotonic() - started) / 60.0
    summary: dict[str, float | int | str] = {
        "steps": step,
        "phantoms": cases,
        "minutes": round(minutes, 2),
        # Wall minutes on a shared machine; CPU minutes are what the training itself took.
        "cpu_minutes": round((time.process_time() - cpu_started) / 60.0, 2),
        "final_loss": round(running, 4),
        "seed_range": f"{recipe.seed_base}..{recipe.seed_base + cases - 1}",
        "threads": threads,
        "script": recipe.script,
    }
    recipe.write_model_dir(network, out_dir, summary)
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


LUNG_NODULE_RECIPE = TrainingRecipe(
    make_case=make_training_case,
    intensity_window_hu=INTENSITY_WINDOW_HU,
    write_model_dir=write_model_dir,
    seed_base=TRAINING_SEED_BASE,
)


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
