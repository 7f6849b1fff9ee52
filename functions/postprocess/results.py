"""The one adapter between postprocess and the results library (`imaging_ai.results`)."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from imaging_ai.contracts import BUNDLE_NAME, KEY_IMAGES_NAME, SEG_NAME, SR_NAME
from imaging_ai.errors import PipelineError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelOutputMeta

# The key-image slice choice and pixel rescale are the results library's; postprocess reaches
# them through this adapter only.
from imaging_ai.results.key_images import key_slice_indices, stored_to_hu

__all__ = [
    "ResultsBuilder",
    "build_result_objects",
    "cap_findings",
    "key_slice_indices",
    "stored_to_hu",
]


class ResultsBuilder(Protocol):
    def __call__(
        self,
        source_headers: list[Dataset],
        labels: npt.NDArray[np.uint8],
        output: ModelOutputMeta,
        card: ModelCard,
        run_id: str,
        predecessor_sr: Dataset | None,
        unreported_findings: int,
        key_slices_hu: Mapping[int, npt.NDArray[np.float32]] | None = None,
    ) -> dict[str, bytes]: ...


def cap_findings(output: ModelOutputMeta, max_findings: int) -> tuple[ModelOutputMeta, int]:
    """Keep the `max_findings` largest findings (by volume); say how many were left out.

    An untrained or noisy model can find dozens of components: all of them would make a
    Bundle larger than EHR servers accept in one transaction.
    """
    if len(output.findings) <= max_findings:
        return output, 0
    by_size = sorted(output.findings, key=lambda f: (-f.volume_mm3, f.label_value, f.component))
    kept = by_size[:max_findings]
    return output.model_copy(update={"findings": kept}), len(output.findings) - len(kept)


def dataset_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def build_result_objects(
    source_headers: list[Dataset],
    labels: npt.NDArray[np.uint8],
    output: ModelOutputMeta,
    card: ModelCard,
    run_id: str,
    predecessor_sr: Dataset | None,
    unreported_findings: int = 0,
    key_slices_hu: Mapping[int, npt.NDArray[np.float32]] | None = None,
) -> dict[str, bytes]:
    """SR, SEG, FHIR Bundle (and key images) as the bytes to encrypt, keyed by object name."""
    try:
        # Imported by name so this unit builds before the results library lands.
        results = importlib.import_module("imaging_ai.results")
    except ImportError as error:
        raise PipelineError("the results library (imaging_ai.results) is not installed") from error
    objects = results.build_results(
        source_headers,
        labels,
        output,
        card,
        run_id,
        predecessor_sr=predecessor_sr,
        unreported_findings=unreported_findings,
        key_slices_hu=key_slices_hu,
    )
    built = {
        SR_NAME: dataset_bytes(objects.sr),
        SEG_NAME: dataset_bytes(objects.seg),
        BUNDLE_NAME: json.dumps(objects.bundle, separators=(",", ":")).encode(),
    }
    if objects.key_images is not None:
        built[KEY_IMAGES_NAME] = dataset_bytes(objects.key_images)
    return built
