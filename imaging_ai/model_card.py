"""The model contract: a directory with weights and `model.json` saying how to feed and read it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from imaging_ai.errors import ContractError

MODEL_CARD_NAME = "model.json"


class Code(BaseModel):
    """A coded concept (DICOM code sequence item / FHIR Coding)."""

    model_config = ConfigDict(frozen=True)
    scheme: str  # coding scheme designator: SCT, RADLEX, DCM, 99IHE ...
    value: str
    meaning: str


class Label(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: int = Field(ge=1, le=255)  # voxel value in the label map
    name: str
    category: Code  # SEG Segmented Property Category, e.g. SCT 49755003 (abnormal structure)
    type: Code  # SEG Segmented Property Type / SR Finding, e.g. SCT 27925004 Nodule
    finding_site: Code  # SR Finding Site / FHIR bodySite, e.g. SCT 39607008 Lung
    radlex: Code | None = None
    min_volume_mm3: float = 0.0  # smaller connected components are dropped as noise


class SeriesSelection(BaseModel):
    """Which de-identified series the preprocessing feeds to the model."""

    model_config = ConfigDict(frozen=True)
    modality: str = "CT"
    min_slices: int = 16
    sop_class_uids: list[str] = Field(default_factory=lambda: ["1.2.840.10008.5.1.4.1.1.2"])


class ModelCard(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    version: str
    description: str
    weights_file: str
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    weights_format: str = "torchscript"
    labels: list[Label]
    input_spacing_mm: tuple[float, float, float]  # (slice, row, column) the model was trained at
    intensity_window_hu: tuple[float, float]  # clipped, then scaled to [0, 1]
    roi_size: tuple[int, int, int]  # sliding-window patch, voxels (slice, row, column)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    series_selection: SeriesSelection = SeriesSelection()
    measurements: list[str] = Field(default_factory=lambda: ["volume_mm3", "longest_diameter_mm"])
    # Findings reported per run, largest first: a noisy model's dozens of components would
    # push the FHIR transaction past what EHR servers accept (FHIR Works refuses > 100 entries).
    max_findings: int = Field(default=20, ge=1)
    not_for_clinical_use: bool = True
    manufacturer: str = "imaging-ai-pipeline project"

    def label(self, value: int) -> Label:
        for label in self.labels:
            if label.value == value:
                return label
        raise ContractError(f"model has no label value {value}")


def load_model_card(model_dir: Path, verify_weights: bool = True) -> ModelCard:
    """Read `model.json` and, by default, check the weights file against its SHA-256."""
    card_path = model_dir / MODEL_CARD_NAME
    if not card_path.is_file():
        raise ContractError(f"no {MODEL_CARD_NAME} in the model directory")
    card = ModelCard.model_validate_json(card_path.read_bytes())
    if verify_weights:
        weights = model_dir / card.weights_file
        if not weights.is_file():
            raise ContractError(f"weights file {card.weights_file!r} is missing")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != card.weights_sha256:
            raise ContractError("weights SHA-256 does not match model.json")
    return card
