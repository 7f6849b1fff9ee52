"""The SEG: one coded segment per label, referencing the source series, BytesIO round trip."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from imaging_ai.errors import ContractError
from imaging_ai.results import ResultObjects, build_results
from imaging_ai.results.seg import build_segmentation
from tests.dciodvfy_support import assert_dciodvfy_clean
from tests.unit.results.sample import SampleRun


def test_one_coded_segment_per_label(results: ResultObjects, sample_run: SampleRun) -> None:
    # Given the model card's labels, When the SEG is built, Then each is a coded segment.
    segments = results.seg.SegmentSequence
    assert len(segments) == len(sample_run.card.labels)
    for item, label in zip(segments, sample_run.card.labels, strict=True):
        assert item.SegmentLabel == label.name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (
            label.category.value,
            label.category.scheme,
        )
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (
            label.type.value,
            label.type.scheme,
        )
        assert item.SegmentAlgorithmType == "AUTOMATIC"


def test_references_source_series_in_its_frame(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    first = sample_run.headers[0]
    seg = results.seg
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= {
        ds.SOPInstanceUID for ds in sample_run.headers
    }
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription


def test_bytesio_round_trip_keeps_the_mask(results: ResultObjects, sample_run: SampleRun) -> None:
    buffer = io.BytesIO()
    results.seg.save_as(buffer, enforce_file_format=True)
    reread = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    volume = reread.get_volume(combine_segments=True, relabel=True)
    # The round-tripped SEG rebuilds the label map voxel for voxel (segment 1 = label 1).
    assert int(volume.array.astype(bool).sum()) == int((sample_run.labels > 0).sum())
    assert reread.SOPInstanceUID == results.seg.SOPInstanceUID


def test_passes_dciodvfy(results: ResultObjects, tmp_path: Path) -> None:
    assert_dciodvfy_clean(results.seg, tmp_path / "seg.dcm")


def test_label_value_unknown_to_the_card_is_refused(sample_run: SampleRun) -> None:
    labels = sample_run.labels.copy()
    labels[0, 0, 0] = 9
    with pytest.raises(ContractError, match="does not name"):
        build_results(sample_run.headers, labels, sample_run.output, sample_run.card, "run-x")


def test_same_run_gives_same_uids(results: ResultObjects, sample_run: SampleRun) -> None:
    again = build_results(
        sample_run.headers, sample_run.labels, sample_run.output, sample_run.card, "run-1"
    )
    assert again.seg.SOPInstanceUID == results.seg.SOPInstanceUID
    assert again.sr.SOPInstanceUID == results.sr.SOPInstanceUID
    assert np.array_equal(again.seg.pixel_array, results.seg.pixel_array)


def test_label_map_input_gives_the_frames_of_per_label_masks(sample_run: SampleRun) -> None:
    # Given a card whose label values are not their segment numbers (7 -> 1, 3 -> 2) and a
    # label map holding both
    nodule, mass = sample_run.card.labels
    card = sample_run.card.model_copy(
        update={
            "labels": [nodule.model_copy(update={"value": 7}), mass.model_copy(update={"value": 3})]
        }
    )
    labels = np.where(sample_run.labels > 0, 7, 0).astype(np.uint8)
    labels[5:8, 10:20, 10:30] = 3
    study_uid = str(sample_run.headers[0].StudyInstanceUID)

    # When the SEG is built, and when highdicom builds it from one boolean mask per label
    seg = build_segmentation(sample_run.headers, labels, card, study_uid, "run-map")
    masks = np.stack([labels == 7, labels == 3], axis=-1)
    reference = hd.seg.Segmentation(
        source_images=sample_run.headers,
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

    # Then both hold the same frames, in the same order, for the same segments and slices
    assert int(seg.NumberOfFrames) == int(reference.NumberOfFrames) > 0
    assert seg.PixelData == reference.PixelData
    assert seg.PerFrameFunctionalGroupsSequence == reference.PerFrameFunctionalGroupsSequence
    segments = {
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert segments == {1, 2}
