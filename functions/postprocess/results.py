"""The one adapter between postprocess and the results library (`imaging_ai.results`)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from fhir.resources.R4B.bundle import Bundle
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


_WARM_UP_REFERENCE = {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}
_WARM_UP_RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient"},
    {"resourceType": "Organization"},
    {"resourceType": "Device"},
    {"resourceType": "ImagingStudy", "status": "available", "subject": _WARM_UP_REFERENCE},
    {"resourceType": "Observation", "status": "final", "code": {"text": "warm-up"}},
    {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "warm-up"}},
]


def warm_up() -> None:
    """Load in Lambda's INIT what the first build would otherwise load inside the event.

    highdicom reads its IOD and module tables (JSON) and fhir.resources builds each resource
    model on first use: ~0.7 s of the first results build, ~5x a warm one, measured on the
    demo study. Nothing here depends on a run; no data leaves the function.
    """
    # highdicom 0.28 keeps these loaders private; pyproject pins it below 0.29.
    from highdicom import _standard_utils

    _standard_utils.get_sop_class_iod_map()
    _standard_utils.get_iod_module_map()
    _standard_utils.get_module_attribute_map()
    Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{index:012d}",
                    "resource": resource,
                    "request": {"method": "POST", "url": resource["resourceType"]},
                }
                for index, resource in enumerate(_WARM_UP_RESOURCES, start=2)
            ],
        }
    )
