"""MONAI bundles: a Model Zoo-shaped bundle maps onto the model contract, or is refused by field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle.config_parser import ConfigParser
from monai.data.meta_tensor import MetaTensor
from monai.transforms.spatial.array import Orientation

from imaging_ai.errors import ContractError
from imaging_ai.inference.bundle import (
    BundleError,
    Reorientation,
    read_bundle,
)
from imaging_ai.inference.predictor import ModelLoadError, Predictor, PredictorSettings
from imaging_ai.model_io import VolumeGeometry

SPLEEN = {
    "category": {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"},
    "finding_site": {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"},
    "min_volume_mm3": 1000.0,
}
# MONAI's default letters for a RAS world; named so its deprecation warning stays quiet.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle laid out and configured as the Model Zoo's CT segmentation bundles are (RAS,
    anisotropic Spacingd, ScaleIntensityRanged, a UNet state dict in models/model.pt), with
    random weights and the site's codes; Zoo metadata of that era has no "name"."""
    bundle = tmp_path_factory.mktemp("spleen_ct_segmentation")
    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16],
        "strides": [2],
        "num_res_units": 1,
        "norm": "batch",
    }
    output = {"type": "image", "format": "segmentation", "num_channels": 2}
    _write(
        bundle / "configs/metadata.json",
        {
            "version": "0.2.0",
            "description": "volumetric segmentation of the spleen from CT",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1}},
                "outputs": {"pred": {**output, "channel_def": {"0": "background", "1": "spleen"}}},
            },
        },
    )
    _write(
        bundle / "configs/inference.json",
        {
            "imports": ["$import glob"],
            "bundle_root": ".",
            "device": "$torch.device('cpu')",
            "network_def": network_def,
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "LoadImaged", "keys": "image"},
                    {"_target_": "EnsureChannelFirstd", "keys": "image"},
                    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
                    {
                        "_target_": "ScaleIntensityRanged",
                        **{"keys": "image", "a_min": -57, "a_max": 164},
                        **{"b_min": 0, "b_max": 1, "clip": True},
                    },
                ],
            },
            "inferer": {
                "_target_": "SlidingWindowInferer",
                "roi_size": [32, 24, 16],
                "overlap": 0.5,
            },
        },
    )
    _write(bundle / "configs/imaging_ai.json", {"name": "spleen-ct", "labels": {"spleen": SPLEEN}})
    torch.manual_seed(7)
    (bundle / "models").mkdir()
    parser = ConfigParser({"network_def": network_def})
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models/model.pt")
    return bundle


def test_a_zoo_style_bundle_maps_onto_the_model_contract(zoo_bundle: Path) -> None:
    # Given a bundle in the Zoo layout plus the site's codes
    # When it is read
    card = read_bundle(zoo_bundle).card
    # Then RAS (x, y, z) spacing and ROI become (slice, row, column), the window and labels hold
    assert card.name == "spleen-ct" and card.version == "0.2.0"
    assert card.input_spacing_mm == (2.0, 1.5, 1.5)
    assert card.roi_size == (16, 24, 32) and card.overlap == 0.5
    assert card.intensity_window_hu == (-57.0, 164.0)
    assert [(label.value, label.name, label.type.value) for label in card.labels] == [
        (1, "spleen", "78961009")
    ]
    assert card.weights_file == "models/model.pt" and card.weights_format == "pytorch-state-dict"


def _axial(slice_direction: tuple[float, float, float]) -> VolumeGeometry:
    return VolumeGeometry(
        shape=(6, 5, 4),
        spacing_mm=(2.0, 1.5, 1.5),
        origin_mm=(-3.0, 4.0, 10.0),
        slice_direction=slice_direction,
    )


@pytest.mark.parametrize("slice_direction", [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0)])
def test_the_bundle_sees_the_image_as_monai_orientation_hands_it(
    zoo_bundle: Path, slice_direction: tuple[float, float, float]
) -> None:
    # Given an axial grid (feet-first or head-first) and its LPS geometry as a RAS affine
    geometry = _axial(slice_direction)
    image = np.arange(np.prod(geometry.shape), dtype=np.float32).reshape(geometry.shape)
    columns = [
        np.multiply(geometry.slice_direction, geometry.spacing_mm[0]),
        np.multiply(geometry.column_direction, geometry.spacing_mm[1]),
        np.multiply(geometry.row_direction, geometry.spacing_mm[2]),
    ]
    affine = np.eye(4)
    affine[:3, :3] = np.stack(columns, axis=1)
    affine[:3, 3] = geometry.origin_mm
    affine[:2] *= -1  # LPS -> RAS
    # When MONAI's own Orientation and our reorientation turn it to the bundle's RAS
    monai_view = Orientation(axcodes="RAS", labels=_RAS_LABELS)(
        MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(affine))
    )
    reorientation = Reorientation.for_geometry(geometry, read_bundle(zoo_bundle).axes)
    ours = reorientation.to_bundle(image)
    # Then the network sees the same array, and its answer comes back on our grid
    np.testing.assert_array_equal(ours, np.asarray(monai_view)[0])
    np.testing.assert_array_equal(reorientation.from_bundle(ours[None])[0], image)


def test_an_oblique_or_mis_spaced_grid_is_refused_for_a_bundle(zoo_bundle: Path) -> None:
    axes = read_bundle(zoo_bundle).axes
    tilted = _axial((0.0, 0.5, 0.866))
    with pytest.raises(ContractError, match="oblique"):
        Reorientation.for_geometry(tilted, axes)
    isotropic = _axial((0.0, 0.0, 1.0)).model_copy(update={"spacing_mm": (1.5, 1.5, 1.5)})
    with pytest.raises(ContractError, match="pixdim"):
        Reorientation.for_geometry(isotropic, axes)


def test_the_predictor_runs_the_bundle_network_in_its_axes(zoo_bundle: Path) -> None:
    # Given the bundle loaded by the inference container's predictor
    predictor = Predictor(zoo_bundle, PredictorSettings(device="cpu", cpu_threads=1))
    geometry = _axial((0.0, 0.0, 1.0)).model_copy(update={"shape": (20, 30, 40)})
    image = np.random.default_rng(1).random(geometry.shape, dtype=np.float32)
    # When it computes probabilities
    probabilities = predictor.probabilities(image, geometry)
    # Then they are on our grid, and are the bundle network's answer on the RAS view
    assert probabilities.shape == (2, *geometry.shape)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert predictor.card.weights_sha256 != "" and predictor.bundle is not None


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _no_channel_def(metadata: dict[str, Any]) -> None:
    del metadata["network_data_format"]["outputs"]["pred"]["channel_def"]


def _no_spacing(inference: dict[str, Any]) -> None:
    del inference["preprocessing"]["transforms"][3]


def _twice_anterior(inference: dict[str, Any]) -> None:
    inference["preprocessing"]["transforms"][2]["axcodes"] = "RAA"


def _sigmoid_output(metadata: dict[str, Any]) -> None:
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "spleen"}
    metadata["network_data_format"]["outputs"]["pred"]["num_channels"] = 1


@pytest.mark.parametrize(
    ("config", "change", "reason"),
    [
        ("metadata.json", _no_channel_def, "channel_def"),
        ("metadata.json", _sigmoid_output, "background"),
        ("inference.json", _no_spacing, "Spacingd"),
        ("inference.json", _twice_anterior, "three patient axes"),
        ("imaging_ai.json", lambda card: card["labels"].clear(), "'spleen' has no codes"),
        ("imaging_ai.json", lambda card: card.update(roi_size=[8, 8, 8]), "come from the bundle"),
        ("imaging_ai.json", lambda card: card.update(weights_sha256="0" * 64), "SHA-256"),
        ("imaging_ai.json", lambda card: card.pop("name"), "name and version"),
    ],
)
def test_a_bundle_that_cannot_be_mapped_is_refused_naming_the_field(
    zoo_bundle: Path,
    tmp_path: Path,
    config: str,
    change: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    # Given a bundle missing something the model contract needs
    broken = tmp_path / "bundle"
    shutil.copytree(zoo_bundle, broken)
    _edit(broken / "configs" / config, change)
    # Then reading it says what, and the container refuses to serve it (ping 500 + reason)
    with pytest.raises(BundleError, match=reason):
        read_bundle(broken)
    with pytest.raises(ModelLoadError, match=reason):
        Predictor(broken, PredictorSettings(device="cpu"))
