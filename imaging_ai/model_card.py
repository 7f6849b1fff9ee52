"""The model contract: a directory with weights and `model.json` saying how to feed and read it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imaging_ai.contracts import model_card_key
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


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


class Range(BaseModel):
    """A closed interval of millimetres."""

    model_config = ConfigDict(frozen=True)
    min: float = Field(ge=0.0)
    max: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.max < self.min:
            raise ValueError("range max must not be below min")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.min <= value <= self.max


class LungDensityCheck(BaseModel):
    """Image-based check of a chest CT: enough lung-density tissue inside the body.

    Header attributes can lie (a head CT labelled CHEST) or be missing; lungs cannot be faked.
    """

    model_config = ConfigDict(frozen=True)
    kind: Literal["lung_density_volume"] = "lung_density_volume"
    min_volume_ml: float = Field(default=500.0, gt=0.0)
    # Aerated lung parenchyma; air outside the body and in large airways is below -950 HU.
    lung_hu: tuple[float, float] = (-950.0, -500.0)
    # Everything denser than this is body (or table); holes inside it are lungs, airways, gut.
    body_threshold_hu: float = -400.0


class IntendedUse(BaseModel):
    """Which series the model is valid for; preprocessing checks each candidate against it.

    Defaults accept any CT volume; a deployed model's `model.json` narrows them.
    """

    model_config = ConfigDict(frozen=True)
    modality: list[str] = Field(default_factory=lambda: ["CT"])
    # Anatomic region: SNOMED codes (Anatomic Region Sequence) and Body Part Examined values.
    # Empty lists accept any region; an absent attribute is left to the image-based check.
    anatomic_regions: list[Code] = Field(default_factory=list)
    body_part_examined: list[str] = Field(default_factory=list)
    # For routing at the edge only: de-identification removes Series Description, so the
    # cloud cannot check it. A case-insensitive regex, searched.
    series_description: str | None = None
    sop_class_uids: list[str] = Field(
        default_factory=lambda: [CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE]
    )
    photometric_interpretations: list[str] = Field(
        default_factory=lambda: ["MONOCHROME2", "MONOCHROME1"]
    )
    slice_thickness_mm: Range = Range(min=0.0, max=10.0)
    pixel_spacing_mm: Range = Range(min=0.1, max=5.0)
    min_coverage_mm: float = Field(default=0.0, ge=0.0)  # along the slice axis
    min_slices: int = Field(default=16, ge=2)
    # Geometry the preprocessing corrects (resampling onto a regular grid, as dcm2niix does);
    # beyond these the series is refused rather than distorted.
    max_gantry_tilt_deg: float = Field(default=30.0, ge=0.0, lt=60.0)
    max_slice_gap_mm: float = Field(default=10.0, gt=0.0)
    image_check: LungDensityCheck | None = None


class TriageFlag(BaseModel):
    """A per-study yes / no the model answers with a probability (e.g. hemorrhage suspected).

    The probability is the mean foreground probability of the label's most likely voxels
    that together make `min_volume_mm3`: one confident voxel does not flag a study, a
    bleed of that size does.
    """

    model_config = ConfigDict(frozen=True)
    name: str  # what a site reads, e.g. "Intracranial hemorrhage suspected"
    finding: Code  # e.g. SCT 1386000 Intracranial hemorrhage
    label_value: int = Field(ge=1, le=255)  # the label whose probability map decides
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_volume_mm3: float = Field(gt=0.0)


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
    intended_use: IntendedUse = IntendedUse()
    measurements: list[str] = Field(default_factory=lambda: ["volume_mm3", "longest_diameter_mm"])
    # Findings reported per run, largest first: a noisy model's dozens of components would
    # push the FHIR transaction past what EHR servers accept (100 entries is a common limit).
    max_findings: int = Field(default=20, ge=1)
    not_for_clinical_use: bool = True
    manufacturer: str = "imaging-ai-pipeline project"
    triage: TriageFlag | None = None
    # Findings a site must hear about at once (a notification within seconds of the result):
    # a suspected triage flag or a finding whose label type carries one of these codes.
    critical_findings: list[Code] = Field(default_factory=list)

    @model_validator(mode="after")
    def _triage_names_a_label(self) -> ModelCard:
        if self.triage is not None and self.triage.label_value not in {
            label.value for label in self.labels
        }:
            raise ValueError("triage flag names a label value the model does not have")
        return self

    def is_critical(self, code: Code) -> bool:
        """Does the card declare this finding critical (scheme and value compared)?"""
        return any((c.scheme, c.value) == (code.scheme, code.value) for c in self.critical_findings)

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


def store_model_cards(s3: Any, bucket: str, cards: Iterable[ModelCard], **put_options: str) -> None:
    """Every version's card at models/NAME/VERSION/model.json (a re-run pins one) and each
    model's last card, so list versions oldest first, as its current models/NAME/model.json."""
    for card in cards:
        for key in (model_card_key(card.name, card.version), model_card_key(card.name)):
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=card.model_dump_json(indent=2).encode(),
                ContentType="application/json",
                **put_options,
            )
