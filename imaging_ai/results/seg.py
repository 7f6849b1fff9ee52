"""DICOM Segmentation (BINARY) of a model's label map, one coded segment per model label."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.results import codes
from imaging_ai.results.uids import result_uid

SEG_SERIES_NUMBER = 9100
# CS value: upper case, digits, space and underscore, at most 16 characters.
SEG_CONTENT_LABEL = "AI_SEGMENTATION"
SEG_CONTENT_LABEL_DEMO = "DEMO_NOT_CLIN"


def segment_number(card: ModelCard, label_value: int) -> int:
    """The SEG segment number of a model label: its 1-based position in model.json."""
    for number, label in enumerate(card.labels, start=1):
        if label.value == label_value:
            return number
    raise ContractError(f"model has no label value {label_value}")


def segment_number_map(labels: npt.NDArray[np.uint8], card: ModelCard) -> npt.NDArray[np.uint8]:
    """The label map with segment numbers for values: highdicom's label-map input style.

    A label map costs highdicom one comparison per slice and segment; the stacked boolean
    masks it also takes cost a copy per label plus an overlap sum over every voxel (4x the
    SEG's build time on a 200 x 512^2 study). Only slices holding any label are read twice:
    a study is ~50 M voxels and a finding touches a few dozen slices.
    """
    occupied = np.flatnonzero(labels.reshape(labels.shape[0], -1).max(axis=1))
    present = set(np.unique(labels[occupied]).tolist()) - {0}
    unknown = present - {label.value for label in card.labels}
    if unknown:
        raise ContractError(f"label map holds values the model card does not name: {unknown}")
    numbers = {label.value: number for number, label in enumerate(card.labels, start=1)}
    if all(numbers[value] == value for value in present):
        return labels
    lookup = np.zeros(256, dtype=np.uint8)
    for value, number in numbers.items():
        lookup[value] = number
    segment_map = np.zeros_like(labels)
    segment_map[occupied] = lookup[labels[occupied]]
    return segment_map


def algorithm_identification(card: ModelCard) -> hd.AlgorithmIdentificationSequence:
    """The SEG's algorithm identification: name, version, family, weights hash as parameter."""
    return hd.AlgorithmIdentificationSequence(
        name=card.name,
        version=card.version,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        source=card.manufacturer,
        parameters={"weights_sha256": card.weights_sha256},
    )


def build_segmentation(
    source_headers: Sequence[pydicom.Dataset],
    labels: npt.NDArray[np.uint8],
    card: ModelCard,
    pseudo_study_uid: str,
    run_id: str,
) -> pydicom.Dataset:
    """Build a BINARY Segmentation of `labels` referencing the source series.

    Parameters
    ----------
    source_headers: Sequence[pydicom.Dataset]
        De-identified source slices in volume order; pixel data may be absent.
    labels: numpy.ndarray
        uint8 label map (slice, row, column) on the source grid; values are model label values.
    card: imaging_ai.model_card.ModelCard
        The model contract; every label becomes one segment with its coded category and type.
    pseudo_study_uid: str
        Study Instance UID of the source (pseudonymous); seeds the result UIDs.
    run_id: str
        The run that produced `labels`; the same run always gives the same UIDs.

    Returns
    -------
    pydicom.Dataset
        A highdicom Segmentation instance in the source frame of reference.
    """
    # A multi-frame source (enhanced CT/MR) is one header holding every frame.
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in source_headers)
    if labels.ndim != 3 or labels.shape[0] != frames:
        raise ContractError("label map must be (slice, row, column) with one slice per frame")
    if labels.shape[1:] != (int(source_headers[0].Rows), int(source_headers[0].Columns)):
        raise ContractError("label map rows and columns do not match the source headers")
    segment_map = segment_number_map(labels, card)

    algorithm = algorithm_identification(card)
    descriptions = []
    for number, label in enumerate(card.labels, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.name[:64],
                segmented_property_category=codes.check_card_code(label.category),
                segmented_property_type=codes.check_card_code(label.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=result_uid(pseudo_study_uid, "segment", str(label.value)),
                tracking_id=label.name[:64],
                anatomic_regions=[codes.check_card_code(label.finding_site)],
            )
        )
    demo = card.not_for_clinical_use
    seg = hd.seg.Segmentation(
        source_images=list(source_headers),
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=result_uid(pseudo_study_uid, run_id, "seg-series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=result_uid(pseudo_study_uid, run_id, "seg"),
        instance_number=1,
        manufacturer=card.manufacturer[:64],
        manufacturer_model_name=card.name[:64],
        software_versions=card.version[:64],
        device_serial_number=card.weights_sha256[:16],
        content_label=SEG_CONTENT_LABEL_DEMO if demo else SEG_CONTENT_LABEL,
        content_description=(codes.NOT_FOR_CLINICAL_USE_SHORT if demo else "AI segmentation"),
        series_description=(
            f"{card.name} SEG - {codes.NOT_FOR_CLINICAL_USE_SHORT}" if demo else f"{card.name} SEG"
        )[:64],
    )
    return seg


def highdicom_reference(
    source_images: Sequence[pydicom.Dataset],
    masks: npt.NDArray[np.bool_],
    seg: pydicom.Dataset,
) -> hd.seg.Segmentation:
    """highdicom's own build of `seg` from one boolean mask per segment (the last axis).

    The peer our frames are checked against: same segments, UIDs and equipment as `seg`,
    built the way highdicom's users build a SEG.
    """
    return hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(item) for item in seg.SegmentSequence
        ],
        series_instance_uid=seg.SeriesInstanceUID,
        series_number=seg.SeriesNumber,
        sop_instance_uid=seg.SOPInstanceUID,
        instance_number=1,
        manufacturer=seg.Manufacturer,
        manufacturer_model_name=seg.ManufacturerModelName,
        software_versions=seg.SoftwareVersions,
        device_serial_number=seg.DeviceSerialNumber,
    )
