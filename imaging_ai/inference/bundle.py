"""MONAI Model Zoo bundles: read one through `monai.bundle` and map it onto our model contract.

A bundle (`configs/metadata.json`, `configs/inference.json`, `models/model.ts` or
`models/model.pt`) says how its network was fed; Zoo metadata has no SNOMED / RadLex codes and
no intended use, so the site adds those in `configs/imaging_ai.json`. Anything that cannot be
mapped is refused with the field to fix, never guessed.

Run: python -m imaging_ai.inference.bundle card BUNDLE_DIR
     python -m imaging_ai.inference.bundle export --model-dir MODEL_DIR --out BUNDLE_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import numpy.typing as npt
import torch
from monai.bundle.config_parser import ConfigParser

from imaging_ai.errors import ContractError
from imaging_ai.inference.network import CHANNELS, STRIDES
from imaging_ai.model_card import MODEL_CARD_NAME, ModelCard, load_model_card
from imaging_ai.model_io import Vector3, VolumeGeometry
from imaging_ai.model_registry import ModelRegistry

METADATA_FILE = Path("configs/metadata.json")
INFERENCE_FILE = Path("configs/inference.json")
# Ours, not MONAI's: what Zoo metadata cannot say (codes, intended use, critical findings).
SITE_CARD_FILE = Path("configs/imaging_ai.json")
TORCHSCRIPT_FILE = Path("models/model.ts")
STATE_DICT_FILE = Path("models/model.pt")
BUNDLE_WEIGHTS_FORMATS = {TORCHSCRIPT_FILE: "torchscript", STATE_DICT_FILE: "pytorch-state-dict"}
META_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json"
)
# Read from the bundle itself; a site card that also sets one would contradict the network.
_FROM_THE_BUNDLE = frozenset(
    {"version", "weights_file", "weights_format", "input_spacing_mm", "intensity_window_hu"}
    | {"roi_size", "overlap"}
)
# Orientation letters: the LPS patient axis each names and whether the index runs along it.
_AXIS_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_TILT_TOLERANCE = 1e-3  # a patient axis within this of a grid axis is the same axis


class BundleError(ContractError):
    """A MONAI bundle that cannot be mapped onto the model contract; the message names the field."""


def is_bundle(model_dir: Path) -> bool:
    return (model_dir / METADATA_FILE).is_file()


@dataclass(frozen=True)
class BundleAxes:
    """How the bundle's network sees an image: its Orientationd axcodes, in that axis order."""

    axcodes: str  # e.g. "RAS": array axis i runs towards letter i
    pixdim_mm: Vector3  # Spacingd pixdim, bundle axis order
    roi_size: tuple[int, int, int]  # SlidingWindowInferer roi_size, bundle axis order

    def patient_axes(self) -> tuple[int, int, int]:
        """The LPS patient axis (0 x, 1 y, 2 z) each bundle array axis runs along."""
        axes = tuple(_AXIS_LETTERS[letter][0] for letter in self.axcodes)
        return axes[0], axes[1], axes[2]

    def in_card_order(self, values: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        """Bundle-order values as (slice, row, column) of an axial series (z, y, x)."""
        by_patient_axis = dict(zip(self.patient_axes(), values, strict=True))
        return by_patient_axis[2], by_patient_axis[1], by_patient_axis[0]


@dataclass(frozen=True)
class Reorientation:
    """From our (slice, row, column) arrays to the bundle's axis order, and back."""

    permutation: tuple[int, int, int]  # bundle axis i is our array axis permutation[i]
    flips: tuple[int, ...]  # bundle axes reversed after the permutation

    @classmethod
    def for_geometry(cls, geometry: VolumeGeometry, axes: BundleAxes) -> Reorientation:
        # Our array axis 0 walks slices, 1 rows (down a column), 2 columns.
        directions = (geometry.slice_direction, geometry.column_direction, geometry.row_direction)
        ours: dict[int, tuple[int, int]] = {}  # patient axis -> (our array axis, sign)
        for array_axis, direction in enumerate(directions):
            patient_axis = int(np.argmax(np.abs(direction)))
            if abs(abs(direction[patient_axis]) - 1.0) > _TILT_TOLERANCE:
                raise ContractError(
                    "bundle models need a grid aligned with the patient axes "
                    "(this series is oblique)"
                )
            ours[patient_axis] = (array_axis, 1 if direction[patient_axis] > 0 else -1)
        permutation, flips = [], []
        for bundle_axis, letter in enumerate(axes.axcodes):
            patient_axis, sign = _AXIS_LETTERS[letter]
            array_axis, our_sign = ours[patient_axis]
            permutation.append(array_axis)
            if our_sign != sign:
                flips.append(bundle_axis)
        spacing = tuple(geometry.spacing_mm[axis] for axis in permutation)
        if not np.allclose(spacing, axes.pixdim_mm, atol=0.01):
            raise ContractError(
                f"image spacing {spacing} mm in the bundle's {axes.axcodes} order is not its "
                f"Spacingd pixdim {axes.pixdim_mm} mm (an anisotropic bundle takes axial series)"
            )
        return cls((permutation[0], permutation[1], permutation[2]), tuple(flips))

    def to_bundle(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        oriented = np.transpose(image, self.permutation)
        return np.ascontiguousarray(np.flip(oriented, self.flips) if self.flips else oriented)

    def from_bundle(self, channels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(classes, *bundle shape) back to (classes, slice, row, column)."""
        if self.flips:
            channels = np.flip(channels, tuple(axis + 1 for axis in self.flips))
        inverse = np.argsort(self.permutation)
        return np.ascontiguousarray(np.transpose(channels, (0, *(int(a) + 1 for a in inverse))))


@dataclass(frozen=True)
class Bundle:
    """A bundle mapped onto the model contract, with what the predictor needs to run it."""

    directory: Path
    card: ModelCard
    axes: BundleAxes
    parser: ConfigParser

    def load_network(self, device: torch.device) -> torch.nn.Module:
        weights = self.directory / self.card.weights_file
        if self.card.weights_format == "torchscript":
            module: torch.nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(weights), map_location=device
            )
            return module
        network = self.parser.get_parsed_content("network_def")
        if not isinstance(network, torch.nn.Module):
            raise BundleError("inference.json 'network_def' does not build a torch module")
        checkpoint = torch.load(weights, map_location=device, weights_only=True)
        # Zoo checkpoints are a bare state dict or a CheckpointSaver dict with a "model" entry.
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise BundleError(f"{STATE_DICT_FILE} holds no state dict")
        network.load_state_dict(state)
        return network.to(device)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path.name} cannot be read: {type(error).__name__}") from error
    if not isinstance(document, dict):
        raise BundleError(f"{path.name} is not a JSON object")
    return document


def _transform(parser: ConfigParser, suffix: str) -> str:
    """The config id of the preprocessing transform whose `_target_` ends with `suffix`."""
    transforms = parser.get("preprocessing#transforms")
    if not isinstance(transforms, list):
        raise BundleError("inference.json has no 'preprocessing' Compose with 'transforms'")
    for index, transform in enumerate(transforms):
        target = transform.get("_target_", "") if isinstance(transform, dict) else ""
        if isinstance(target, str) and target.split(".")[-1] in (suffix, suffix.rstrip("d")):
            return f"preprocessing#transforms#{index}"
    raise BundleError(f"inference.json preprocessing has no {suffix}: {_WHY[suffix]}")


_WHY = {
    "Orientationd": "without it the axis order of the network's input is unknown",
    "Spacingd": "without it the model's input spacing is unknown",
    "ScaleIntensityRanged": "our preprocessing applies an HU window scaled to [0, 1] only",
}


def _three(value: Any, field: str) -> tuple[Any, Any, Any]:
    values = [value] * 3 if isinstance(value, int | float) else list(value)
    if len(values) != 3:
        raise BundleError(f"inference.json {field} must have three values")
    return values[0], values[1], values[2]


def _axes(parser: ConfigParser) -> BundleAxes:
    axcodes = str(parser.get_parsed_content(f"{_transform(parser, 'Orientationd')}#axcodes"))
    if not set(axcodes) <= _AXIS_LETTERS.keys() or sorted(
        _AXIS_LETTERS[letter][0] for letter in axcodes
    ) != [0, 1, 2]:
        raise BundleError(f"Orientationd axcodes {axcodes!r} do not name three patient axes")
    pixdim = _three(parser.get_parsed_content(f"{_transform(parser, 'Spacingd')}#pixdim"), "pixdim")
    if parser.get("inferer#_target_", "").split(".")[-1] != "SlidingWindowInferer":
        raise BundleError("inference.json 'inferer' must be a SlidingWindowInferer")
    roi = _three(parser.get_parsed_content("inferer#roi_size"), "inferer roi_size")
    if any(int(size) < 1 for size in roi):
        raise BundleError("inference.json inferer roi_size must be positive in every axis")
    return BundleAxes(
        axcodes=axcodes,
        pixdim_mm=(float(pixdim[0]), float(pixdim[1]), float(pixdim[2])),
        roi_size=(int(roi[0]), int(roi[1]), int(roi[2])),
    )


def _window(parser: ConfigParser) -> tuple[float, float]:
    scale = _transform(parser, "ScaleIntensityRanged")
    arguments = {
        name: parser.get_parsed_content(f"{scale}#{name}")
        for name in ("a_min", "a_max", "b_min", "b_max", "clip")
        if f"{scale}#{name}" in parser
    }
    if arguments.get("b_min", 0.0) != 0.0 or arguments.get("b_max", 1.0) != 1.0:
        raise BundleError("ScaleIntensityRanged must scale to b_min 0, b_max 1")
    if not arguments.get("clip", False) or "a_min" not in arguments or "a_max" not in arguments:
        raise BundleError("ScaleIntensityRanged must clip to an HU window a_min..a_max")
    return float(arguments["a_min"]), float(arguments["a_max"])


def _channel_names(metadata: dict[str, Any]) -> list[str]:
    """Output channel names, background first, from network_data_format.outputs."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if not isinstance(outputs, dict) or len(outputs) != 1:
        raise BundleError("metadata.json network_data_format.outputs must hold one output")
    (output,) = outputs.values()
    channel_def = output.get("channel_def") if isinstance(output, dict) else None
    if not isinstance(channel_def, dict) or not channel_def:
        raise BundleError("metadata.json output has no channel_def: the labels are unknown")
    names = [str(channel_def.get(str(index), "")) for index in range(len(channel_def))]
    if output.get("num_channels", len(names)) != len(names) or "" in names:
        raise BundleError("metadata.json channel_def must name channels 0..num_channels-1")
    if len(names) < 2 or names[0].lower() != "background":
        raise BundleError(
            "metadata.json channel_def must start with a 'background' channel (softmax output)"
        )
    return names


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def read_bundle(bundle_dir: Path) -> Bundle:
    """Map a bundle onto a ModelCard; refuse what cannot be mapped with the field to fix."""
    for required in (METADATA_FILE, INFERENCE_FILE, SITE_CARD_FILE):
        if not (bundle_dir / required).is_file():
            raise BundleError(f"bundle has no {required}")
    metadata = _read_json(bundle_dir / METADATA_FILE)
    site_card = _read_json(bundle_dir / SITE_CARD_FILE)
    contradicting = sorted(_FROM_THE_BUNDLE & site_card.keys())
    if contradicting:
        raise BundleError(f"{SITE_CARD_FILE} sets {contradicting}: those come from the bundle")
    parser = ConfigParser()
    parser.read_meta(str(bundle_dir / METADATA_FILE))
    parser.read_config(str(bundle_dir / INFERENCE_FILE))
    parser["bundle_root"] = str(bundle_dir)
    weights = next((w for w in BUNDLE_WEIGHTS_FORMATS if (bundle_dir / w).is_file()), None)
    if weights is None:
        raise BundleError(f"bundle has neither {TORCHSCRIPT_FILE} nor {STATE_DICT_FILE}")
    digest = hashlib.sha256((bundle_dir / weights).read_bytes()).hexdigest()
    if site_card.get("weights_sha256", digest) != digest:
        raise BundleError(f"{weights} does not match the SHA-256 pinned in {SITE_CARD_FILE}")
    axes = _axes(parser)
    codes = site_card.get("labels", {})
    labels = []
    for value, name in enumerate(_channel_names(metadata)[1:], start=1):
        if not isinstance(codes, dict) or name not in codes:
            raise BundleError(f"label {name!r} has no codes in {SITE_CARD_FILE} 'labels'")
        labels.append({**codes[name], "value": value, "name": name})
    if "version" not in metadata or ("name" not in metadata and "name" not in site_card):
        raise BundleError("metadata.json must give the bundle's name and version")
    overlap = parser.get_parsed_content("inferer#overlap") if "inferer#overlap" in parser else 0.25
    try:
        card = ModelCard.model_validate(
            {
                "name": _slug(str(metadata.get("name", ""))),
                "description": str(metadata.get("description", "")),
                **site_card,
                "labels": labels,
                "version": str(metadata["version"]),
                "weights_file": str(weights),
                "weights_sha256": digest,
                "weights_format": BUNDLE_WEIGHTS_FORMATS[weights],
                "input_spacing_mm": axes.in_card_order(axes.pixdim_mm),
                "intensity_window_hu": _window(parser),
                "roi_size": axes.in_card_order(axes.roi_size),
                "overlap": float(_three(overlap, "inferer overlap")[0]),
            }
        )
    except ValueError as error:
        raise BundleError(f"bundle does not map onto the model contract: {error}") from error
    return Bundle(directory=bundle_dir, card=card, axes=axes, parser=parser)


def read_model_card(model_dir: Path) -> ModelCard:
    """The contract of a model directory: our `model.json`, or a bundle's mapped card."""
    return read_bundle(model_dir).card if is_bundle(model_dir) else load_model_card(model_dir)


def is_model_dir(path: Path) -> bool:
    """Our model directory (`model.json`) or a MONAI bundle."""
    return (path / MODEL_CARD_NAME).is_file() or is_bundle(path)


def read_card_version(model_dir: Path) -> str:
    """The version a model directory holds, without loading its weights."""
    if is_bundle(model_dir):
        return str(_read_json(model_dir / METADATA_FILE).get("version", ""))
    return load_model_card(model_dir, verify_weights=False).version


def model_versions(model_dir: Path) -> dict[str, Path]:
    """Version -> model directory, oldest first: one model directory (`model.json` + weights,
    or a MONAI bundle), or a model's folder of the model registry (one folder per kept
    version, `imaging_ai.model_registry`)."""
    if is_model_dir(model_dir):
        return {read_card_version(model_dir): model_dir}
    registry = ModelRegistry(model_dir.parent)
    return {version: model_dir / version for version in registry.versions(model_dir.name)}


def export_bundle(model_dir: Path, out_dir: Path) -> ModelCard:
    """Package one of our model directories in the Model Zoo layout.

    The network is the same TorchScript (`models/model.ts`) plus its state dict for
    `network_def` (`models/model.pt`); `Orientationd` "SPL" hands it the (slice, row, column)
    arrays it was trained on, so any MONAI consumer feeds it as our predictor does.
    """
    card = load_model_card(model_dir)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / card.weights_file, out_dir / TORCHSCRIPT_FILE)
    scripted = torch.jit.load(str(model_dir / card.weights_file), map_location="cpu")  # type: ignore[no-untyped-call]
    torch.save(scripted.state_dict(), out_dir / STATE_DICT_FILE)
    axcodes, names = "SPL", ["background"] + [label.name for label in card.labels]
    metadata = {
        "schema": META_SCHEMA,
        "version": card.version,
        "changelog": {card.version: "exported from model.json by imaging_ai.inference.bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "name": card.name,
        "task": card.description,
        "description": card.description,
        "authors": card.manufacturer,
        "copyright": card.manufacturer,
        "intended_use": "DEMO, not for clinical use" if card.not_for_clinical_use else "",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": ",".join(card.intended_use.modality),
                    "num_channels": 1,
                    "spatial_shape": list(card.roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(names),
                    "spatial_shape": list(card.roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(i): name for i, name in enumerate(names)},
                }
            },
        },
    }
    low, high = card.intensity_window_hu
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": len(names),
            "channels": list(CHANNELS),
            "strides": list(STRIDES),
            "num_res_units": 1,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": axcodes},
                {"_target_": "Spacingd", "keys": "image", "pixdim": list(card.input_spacing_mm)},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": low,
                    "a_max": high,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
            ],
        },
        # SPL is (slice, row, column) on an axial series: the card's order unchanged.
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(card.roi_size),
            "sw_batch_size": 1,
            "overlap": card.overlap,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    site_card = card.model_dump(
        mode="json", exclude=set(_FROM_THE_BUNDLE | {"labels", "weights_sha256", "description"})
    )
    site_card["labels"] = {
        label.name: label.model_dump(mode="json", exclude={"value", "name"})
        for label in card.labels
    }
    for path, document in (
        (METADATA_FILE, metadata),
        (INFERENCE_FILE, inference),
        (SITE_CARD_FILE, site_card),
    ):
        (out_dir / path).write_text(json.dumps(document, indent=2) + "\n")
    return read_bundle(out_dir).card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    card_command = commands.add_parser("card", help=f"print the {MODEL_CARD_NAME} a bundle maps to")
    card_command.add_argument("bundle_dir", type=Path)
    card_command.add_argument(
        "--write",
        action="store_true",
        help=f"also write it as the bundle's {MODEL_CARD_NAME} (a model registry entry needs it)",
    )
    export_command = commands.add_parser("export", help="package a model.json model as a bundle")
    export_command.add_argument("--model-dir", type=Path, required=True)
    export_command.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "card":
            card = read_bundle(args.bundle_dir).card
            if args.write:
                (args.bundle_dir / MODEL_CARD_NAME).write_text(card.model_dump_json(indent=2))
        else:
            card = export_bundle(args.model_dir, args.out)
    except ContractError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(card.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
