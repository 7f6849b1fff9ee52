"""One call from a run's label map and findings to the SEG, SR and FHIR Bundle it delivers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom.datadict import tag_for_keyword

from imaging_ai.contracts import check_run_id
from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelOutputMeta
from imaging_ai.reslice import labels_on_source_slices
from imaging_ai.results.fhir import build_bundle
from imaging_ai.results.key_images import build_key_images
from imaging_ai.results.patient_study import RESULT_PATIENT_STUDY_ATTRIBUTES
from imaging_ai.results.seg import build_segmentation
from imaging_ai.results.sr import build_structured_report
from imaging_ai.volume import join_frames


def _patient_study_keywords(sop_class_uid: str) -> frozenset[str]:
    """Root attributes of the Patient and Study IE modules of one IOD (as highdicom copies)."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        raise ContractError("source SOP class has no IOD definition")
    attributes = get_module_attribute_map()
    return frozenset(
        str(item["keyword"])
        for module in get_iod_module_map()[iod]
        if module["ie"] in ("Patient", "Study")
        for item in attributes[module["key"]]
        if len(item["path"]) == 0
    )


def result_source_headers(source_headers: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The source headers as the result builders see them: Patient and Study IEs allow-listed."""
    dropped = _patient_study_keywords(str(source_headers[0].SOPClassUID))
    dropped -= RESULT_PATIENT_STUDY_ATTRIBUTES
    dropped_tags = {tag for tag in map(tag_for_keyword, dropped) if tag is not None}
    views = []
    for header in source_headers:
        view = pydicom.Dataset()
        # elements(), not iteration: iterating converts every raw element a lazily read
        # header holds (~1.5 s for 200 slices), where the builders read a few dozen.
        for element in header.elements():
            if element.tag not in dropped_tags:
                view[element.tag] = element
        if hasattr(header, "file_meta"):
            view.file_meta = header.file_meta
        views.append(view)
    return views


@dataclass(frozen=True)
class ResultObjects:
    """What postprocessing writes for one run (all with the pseudonymous identifiers)."""

    seg: pydicom.Dataset
    sr: pydicom.Dataset
    bundle: dict[str, Any]
    # The burned-in Secondary Capture; None when the caller gave no key slice pixels.
    key_images: pydicom.Dataset | None = None


def _check_inputs(
    source_headers: list[pydicom.Dataset],
    labels: npt.NDArray[np.uint8],
    output: ModelOutputMeta,
    card: ModelCard,
) -> None:
    if not source_headers:
        raise ContractError("no source headers")
    if (output.model_name, output.model_version, output.weights_sha256) != (
        card.name,
        card.version,
        card.weights_sha256,
    ):
        raise ContractError("model output was made by another model than the card describes")
    study_uids = {str(ds.StudyInstanceUID) for ds in source_headers}
    series_uids = {str(ds.SeriesInstanceUID) for ds in source_headers}
    if len(study_uids) != 1 or len(series_uids) != 1:
        raise ContractError("source headers must be one series of one study")
    if study_uids != {output.input.pseudo_study_uid} or series_uids != {
        output.input.pseudo_series_uid
    }:
        raise ContractError("source headers are not the series the model output describes")
    if output.input.sop_instance_uids and output.input.sop_instance_uids != [
        str(ds.SOPInstanceUID) for ds in source_headers
    ]:
        raise ContractError("source headers are not in the model input's volume order")
    if labels.dtype != np.uint8 or labels.shape != output.input.source_geometry.shape:
        raise ContractError("label map must be uint8 on the source geometry")
    for finding in output.findings:
        card.label(finding.label_value)


def build_results(
    source_headers: list[pydicom.Dataset],
    labels: npt.NDArray[np.uint8],
    output: ModelOutputMeta,
    card: ModelCard,
    run_id: str,
    predecessor_sr: pydicom.Dataset | None = None,
    unreported_findings: int = 0,
    key_slices_hu: Mapping[int, npt.NDArray[np.float32]] | None = None,
) -> ResultObjects:
    """Build the SEG, the TID 1500 SR, the FHIR R4 transaction Bundle and key images of a run.

    Parameters
    ----------
    source_headers: list[pydicom.Dataset]
        De-identified source CT slices in volume order (PixelData may be absent).
    labels: numpy.ndarray
        uint8 label map on the source grid (slice, row, column); values are model label values.
    output: imaging_ai.model_io.ModelOutputMeta
        Findings and measurements from the inference server.
    card: imaging_ai.model_card.ModelCard
        The model contract (label codes, name, version, weights hash, disclaimer flag).
    run_id: str
        The run these results belong to; the same run always yields the same UIDs.
    predecessor_sr: pydicom.Dataset | None, optional
        The SR this run revises (late-instance re-run).
    unreported_findings: int, optional
        How many more findings the model made than `output.findings` holds (the caller kept
        the largest `card.max_findings`); the SR and the report conclusion say so.
    key_slices_hu: Mapping[int, numpy.ndarray] | None, optional
        Rescaled pixels of the slices `key_images.key_slice_indices` names; given, the
        key-image Secondary Capture is built too.

    Returns
    -------
    ResultObjects
        SEG, SR and Bundle, carrying the pseudonymous UIDs of the input.
    """
    check_run_id(run_id)
    _check_inputs(source_headers, labels, output, card)
    now = datetime.now(UTC)
    study_uid = str(source_headers[0].StudyInstanceUID)
    source_headers = result_source_headers(source_headers)
    # A tilted or unevenly spaced series was resampled onto a regular grid: the SEG must
    # still reference (and lie on) the slices the site holds.
    positions = [
        (
            float(ds.ImagePositionPatient[0]),
            float(ds.ImagePositionPatient[1]),
            float(ds.ImagePositionPatient[2]),
        )
        for ds in source_headers
    ]
    source_labels = labels_on_source_slices(labels, output.input.source_geometry, positions)
    seg_sources, seg_labels = join_frames(source_headers, source_labels)
    seg = build_segmentation(seg_sources, seg_labels, card, study_uid, run_id)
    if unreported_findings < 0:
        raise ContractError("unreported_findings cannot be negative")
    sr = build_structured_report(
        source_headers, seg, output, card, run_id, predecessor_sr, now, unreported_findings
    )
    bundle = build_bundle(source_headers, output, card, run_id, sr, now, unreported_findings)
    key_images = None
    if key_slices_hu is not None:
        key_images = build_key_images(
            source_headers, key_slices_hu, labels, output, card, run_id, now
        )
    return ResultObjects(seg=seg, sr=sr, bundle=bundle, key_images=key_images)
