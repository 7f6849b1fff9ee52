"""The one adapter between postprocess and the results library (`imaging_ai.results`)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from imaging_ai.contracts import BUNDLE_NAME, KEY_IMAGES_NAME, SEG_NAME, SR_NAME
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelOutputMeta
from imaging_ai.results import build_results

# The key-image slice choice and pixel rescale are the results library's; postprocess reaches
# them through this adapter only.
from imaging_ai.results.key_images import key_slice_indices, stored_to_hu

__all__ = [
    "KeySlices",
    "ResultsBuilder",
    "build_result_objects",
    "cap_findings",
    "key_slice_indices",
    "stored_to_hu",
]

# Rescaled pixels of the key slices, by slice index (what the key images show).
KeySlices = Mapping[int, npt.NDArray[np.float32]]
# (source headers, labels, output, card, run id, predecessor SR, unreported findings,
# key slices) -> result object name -> bytes; `build_result_objects` is the one the function
# uses.
ResultsBuilder = Callable[
    [
        list[Dataset],
        npt.NDArray[np.uint8],
        ModelOutputMeta,
        ModelCard,
        str,
        Dataset | None,
        int,
        KeySlices | None,
    ],
    dict[str, bytes],
]


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
    key_slices_hu: KeySlices | None = None,
) -> dict[str, bytes]:
    """SR, SEG, FHIR Bundle (and key images) as the bytes to encrypt, keyed by object name."""
    objects = build_results(
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
