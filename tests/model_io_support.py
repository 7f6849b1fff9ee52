"""Model input and output records for tests: one run of site-a's study unless a test says so."""

from __future__ import annotations

from collections.abc import Iterable

from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import (
    Finding,
    ModelInputMeta,
    ModelOutputMeta,
    TriageResult,
    VolumeGeometry,
)

# The run a test means when it names none: pseudonymous identifiers only.
RUN = {
    "site": "site-a",
    "pseudo_study_uid": "1.2.3",
    "pseudo_series_uid": "1.2.3.4",
    "run_id": "run-1",
}


def input_meta(
    geometry: VolumeGeometry,
    model_geometry: VolumeGeometry | None = None,
    *,
    model_name: str = "lung-nodule-demo",
    sop_instance_uids: Iterable[str] = (),
    **run: str,
) -> ModelInputMeta:
    """What preprocess hands the model for a series on `geometry` (`run` overrides RUN's ids)."""
    return ModelInputMeta(
        **{**RUN, **run},
        model_name=model_name,
        source_geometry=geometry,
        model_geometry=model_geometry or geometry,
        sop_instance_uids=list(sop_instance_uids),
    )


def output_meta(
    meta: ModelInputMeta,
    findings: Iterable[Finding],
    card: ModelCard | None = None,
    inference_seconds: float = 0.1,
    triage: TriageResult | None = None,
) -> ModelOutputMeta:
    """The model's answer to `meta` on the CPU: `card`'s model, or an unversioned one."""
    return ModelOutputMeta(
        input=meta,
        model_name=card.name if card else meta.model_name,
        model_version=card.version if card else "0.1.0",
        weights_sha256=card.weights_sha256 if card else "0" * 64,
        device="cpu",
        inference_seconds=inference_seconds,
        findings=list(findings),
        triage=triage,
    )


def finding(
    centroid_mm: tuple[float, float, float], component: int = 1, **measures: float
) -> Finding:
    """One label-1 finding at `centroid_mm`; `measures` sets voxel_count, volume_mm3, diameter."""
    return Finding(
        label_value=1,
        component=component,
        voxel_count=int(measures.get("voxel_count", 1)),
        volume_mm3=measures.get("volume_mm3", 1.0),
        longest_diameter_mm=measures.get("longest_diameter_mm", 1.0),
        centroid_mm=centroid_mm,
    )
