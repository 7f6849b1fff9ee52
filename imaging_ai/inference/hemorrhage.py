"""The head-CT intracranial hemorrhage triage demo model: its card, phantoms and training.

Run: python -m imaging_ai.inference.hemorrhage --out containers/inference/hemorrhage_model
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from imaging_ai.inference.grid import model_geometry_for, resample_linear
from imaging_ai.inference.network import export_torchscript
from imaging_ai.inference.training import TrainingCase, TrainingRecipe, train
from imaging_ai.logs import configure_json_logging
from imaging_ai.model_card import (
    MODEL_CARD_NAME,
    Code,
    IntendedUse,
    Label,
    ModelCard,
    Range,
    TriageFlag,
)
from imaging_ai.synthetic_head import make_head_ct_phantom

MODEL_NAME = "head-ct-hemorrhage-demo"
MODEL_VERSION = "1.0.0"
WEIGHTS_FILE = "model.ts"
MODEL_SPACING_MM = (1.5, 1.5, 1.5)
# Brain window: CSF (~5 HU) to well above acute blood (50-90 HU); bone saturates.
INTENSITY_WINDOW_HU = (-15.0, 115.0)
# The network normalises each window on its own (instance norm): windows near the 40^3
# training patches keep the statistics it learned. Whole-head windows (96x160x160) were
# measured to miss most of a 12 mL bleed and to add 0.3-0.8 mL false positives.
ROI_SIZE = (64, 64, 64)
CHANNELS = (8, 16, 32, 64)  # a quarter of the lung model's width: a few hundred kB of weights
# Training draws phantom seeds from here upward; evaluation refuses seeds from here on.
TRAINING_SEED_BASE = 200_000
SCRIPT = "python -m imaging_ai.inference.hemorrhage"

INTRACRANIAL_HEMORRHAGE = Code(scheme="SCT", value="1386000", meaning="Intracranial hemorrhage")
HEMORRHAGE_LABEL = Label(
    value=1,
    name="Hemorrhage",
    category=Code(scheme="SCT", value="49755003", meaning="Morphologically abnormal structure"),
    type=Code(scheme="SCT", value="50960005", meaning="Hemorrhage"),
    finding_site=Code(scheme="SCT", value="12738006", meaning="Brain structure"),
    # Components under 0.1 mL are noise at 1.5 mm (30 model voxels).
    min_volume_mm3=100.0,
)
TRIAGE = TriageFlag(
    name="Intracranial hemorrhage suspected",
    finding=INTRACRANIAL_HEMORRHAGE,
    label_value=HEMORRHAGE_LABEL.value,
    threshold=0.5,
    # Half a millilitre of confident voxels flags a study; the target is bleeds of 1 mL on.
    min_volume_mm3=500.0,
)
INTENDED_USE = IntendedUse(
    modality=["CT"],
    anatomic_regions=[
        Code(scheme="SCT", value="69536005", meaning="Head structure"),
        Code(scheme="SCT", value="12738006", meaning="Brain structure"),
    ],
    body_part_examined=["HEAD", "BRAIN", "SKULL", "HEADNECK"],
    series_description=r"\b(head|brain|cranial|cranium|skull|neuro)\b",
    slice_thickness_mm=Range(min=0.5, max=5.0),
    pixel_spacing_mm=Range(min=0.3, max=1.2),
    min_coverage_mm=80.0,
    min_slices=16,
    max_gantry_tilt_deg=30.0,
    max_slice_gap_mm=6.0,
)


def make_training_case(seed: int) -> TrainingCase:
    """A head phantom at a random scanner grid, resampled to the model grid as preprocessing
    does; its bleed mask becomes a partial-volume fraction (what keeps volumes honest)."""
    rng = np.random.default_rng(seed)
    slice_mm = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5]))
    pixel_mm = float(rng.uniform(0.85, 1.15))
    extent_z = float(rng.uniform(120.0, 160.0))
    side = int(220 / pixel_mm)
    head = make_head_ct_phantom(
        seed,
        shape=(int(extent_z / slice_mm), side, side),
        spacing_mm=(slice_mm, pixel_mm, pixel_mm),
        bleed_count=int(rng.choice([0, 1, 1, 2, 2, 3])),
        bleed_volume_ml=(0.3, 40.0),
        noise_hu=float(rng.uniform(3.0, 10.0)),
        max_pitch_deg=25.0,
    )
    phantom = head.phantom
    source = phantom.geometry()
    model = model_geometry_for(source, MODEL_SPACING_MM)
    image = resample_linear(phantom.hu, source, model)
    fraction = resample_linear((phantom.nodule_mask > 0).astype(np.float32), source, model)
    centres = [
        (
            round(bleed.centroid_voxel[0] * phantom.spacing_mm[0] / MODEL_SPACING_MM[0]),
            round(bleed.centroid_voxel[1] * phantom.spacing_mm[1] / MODEL_SPACING_MM[1]),
            round(bleed.centroid_voxel[2] * phantom.spacing_mm[2] / MODEL_SPACING_MM[2]),
        )
        for bleed in head.bleeds
    ]
    return TrainingCase(image, fraction, centres)


def model_card(weights_sha256: str) -> ModelCard:
    return ModelCard(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description=(
            "DEMO MODEL, NOT FOR CLINICAL USE. Intracranial hemorrhage segmentation and "
            "triage flag for non-contrast head CT, trained only on the project's synthetic "
            "head phantoms (imaging_ai.synthetic_head); it has never seen a real patient."
        ),
        weights_file=WEIGHTS_FILE,
        weights_sha256=weights_sha256,
        labels=[HEMORRHAGE_LABEL],
        input_spacing_mm=MODEL_SPACING_MM,
        intensity_window_hu=INTENSITY_WINDOW_HU,
        roi_size=ROI_SIZE,
        overlap=0.25,
        intended_use=INTENDED_USE,
        not_for_clinical_use=True,
        triage=TRIAGE,
        critical_findings=[INTRACRANIAL_HEMORRHAGE],
    )


def write_model_dir(
    network: torch.nn.Module, out_dir: Path, training: dict[str, float | int | str]
) -> ModelCard:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    export_torchscript(network, weights)
    card = model_card(hashlib.sha256(weights.read_bytes()).hexdigest())
    document = json.loads(card.model_dump_json())
    # Extra keys are ignored by ModelCard but keep the provenance next to the weights.
    document["training"] = training
    (out_dir / MODEL_CARD_NAME).write_text(json.dumps(document, indent=2) + "\n")
    return card


HEMORRHAGE_RECIPE = TrainingRecipe(
    make_case=make_training_case,
    intensity_window_hu=INTENSITY_WINDOW_HU,
    write_model_dir=write_model_dir,
    seed_base=TRAINING_SEED_BASE,
    channels=CHANNELS,
    # Blood is told from brain by 20-60 HU; a larger shift would blur that line.
    hu_offset=6.0,
    # 60 mm cubes: the skull edge and a bleed's rim in one view, at a quarter of 64^3's cost;
    # the convolutional network reads whole heads at inference all the same.
    patch_size=(40, 40, 40),
    extra_noise_hu=3.0,
    learning_rate=3e-3,
    script=SCRIPT,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget")
    parser.add_argument(
        "--cpu-minutes", type=float, default=15.0, help="CPU-time budget (one thread: one core)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patches-per-case", type=int, default=32)
    args = parser.parse_args(argv)
    configure_json_logging()
    summary = train(
        args.out,
        args.steps,
        args.minutes,
        args.batch_size,
        patches_per_case=args.patches_per_case,
        threads=args.threads,
        recipe=HEMORRHAGE_RECIPE,
        max_cpu_minutes=args.cpu_minutes,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
