"""Key images: a multi-frame grayscale SC with outlines and measurements burned in."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from imaging_ai.model_io import Finding
from imaging_ai.results import ResultObjects, build_results
from imaging_ai.results.key_images import (
    MIN_DISPLAY_SIZE,
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    key_slice_indices,
    stored_to_hu,
)
from imaging_ai.results.positions import in_plane_index
from tests.dciodvfy_support import assert_dciodvfy_clean
from tests.model_io_support import finding
from tests.unit.results.sample import SampleRun


def _build(run: SampleRun, labels: np.ndarray, findings: list[Finding]) -> ResultObjects:
    output = run.output.model_copy(update={"findings": findings})
    indices = key_slice_indices(labels, output)
    pixels = {k: stored_to_hu(pydicom.dcmread(run.paths[k])) for k in indices}
    return build_results(run.headers, labels, output, run.card, "run-1", key_slices_hu=pixels)


@pytest.fixture(scope="module")
def two_slices(sample_run: SampleRun) -> tuple[ResultObjects, np.ndarray, list[int]]:
    """The sample's two nodules (one slice) plus a third nodule four slices away."""
    labels = sample_run.labels.copy()
    labels[16, 60:66, 60:66] = 1
    geometry = sample_run.output.input.source_geometry
    centroid = geometry.voxel_to_patient((16, 62.5, 62.5))
    third = finding(
        centroid, component=3, voxel_count=36, volume_mm3=562.5, longest_diameter_mm=17.68
    )
    findings = [*sample_run.output.findings, third]
    objects = _build(sample_run, labels, findings)
    indices = key_slice_indices(labels, sample_run.output.model_copy(update={"findings": findings}))
    return objects, labels, indices


def test_one_frame_per_key_slice_with_the_outline_burned_in(
    two_slices: tuple[ResultObjects, np.ndarray, list[int]], sample_run: SampleRun
) -> None:
    # Given findings on two slices, When the key images are built
    objects, labels, indices = two_slices
    key = objects.key_images
    assert key is not None
    # Then it is a two-frame grayscale byte SC, enlarged to stay legible
    assert key.SOPClassUID == MULTIFRAME_GRAYSCALE_BYTE_SC
    assert int(key.NumberOfFrames) == 2 and len(indices) == 2
    frames = key.pixel_array
    assert frames.shape == (2, MIN_DISPLAY_SIZE, MIN_DISPLAY_SIZE) and frames.dtype == np.uint8
    # ... each frame's outline (value 255) lies on the border of that slice's label mask
    zoom = MIN_DISPLAY_SIZE // labels.shape[1]
    for frame, k in zip(frames, indices, strict=True):
        mask = np.kron(labels[k] > 0, np.ones((zoom, zoom), dtype=bool))
        border = mask & ~ndimage.binary_erosion(mask, iterations=zoom // 2)
        assert np.all(frame[border] == 255)
        # ... and the image inside the nodule is not painted over
        inside = ndimage.binary_erosion(mask, iterations=zoom)
        assert inside.any() and np.all(frame[inside] < 255)
        # ... and the burned-in text sits top left (white on a black box)
        text_box = frame[:60, :200]
        assert (text_box > 200).sum() > 200 and (text_box == 0).sum() > 2000
    # ... and each finding is named beside its outline (frame 2 shows only Nodule 3)
    geometry = sample_run.output.input.source_geometry
    row, column = in_plane_index(geometry, geometry.voxel_to_patient((16, 62.5, 62.5)))
    top, left = round((row - 6) * zoom), round((column + 4) * zoom)
    label = frames[1][top : top + 16, left : left + 60]
    assert (label > 200).sum() > 20 and (label == 0).sum() > 100


def test_names_the_model_and_marks_itself_as_ai_output(
    two_slices: tuple[ResultObjects, np.ndarray, list[int]], sample_run: SampleRun
) -> None:
    key = two_slices[0].key_images
    assert key is not None
    card = sample_run.card
    assert key.BurnedInAnnotation == "YES"
    assert list(key.ImageType) == ["DERIVED", "SECONDARY"]
    assert (key.ManufacturerModelName, key.SoftwareVersions) == (card.name, card.version)
    assert card.name in key.SeriesDescription and "NOT FOR CLINICAL USE" in key.SeriesDescription
    assert "AI output" in key.ImageComments and card.version in key.ImageComments
    equipment = key[0x0018A001].value[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "1630"
    # ... in the source's (pseudonymous) study, referencing the slices it shows
    assert key.StudyInstanceUID == sample_run.headers[0].StudyInstanceUID
    assert key.PatientID == sample_run.headers[0].PatientID
    shown = [two_slices[2][0], two_slices[2][1]]
    assert [r.ReferencedSOPInstanceUID for r in key.SourceImageSequence] == [
        sample_run.headers[k].SOPInstanceUID for k in shown
    ]


def test_passes_dciodvfy_and_round_trips(
    two_slices: tuple[ResultObjects, np.ndarray, list[int]], tmp_path: Path
) -> None:
    key = two_slices[0].key_images
    assert key is not None
    path = tmp_path / "key.dcm"
    assert_dciodvfy_clean(key, path)
    again = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    assert np.array_equal(again.pixel_array, key.pixel_array)


def test_no_finding_still_shows_the_middle_slice_saying_so(sample_run: SampleRun) -> None:
    # Given a run without findings, When the key images are built
    labels = np.zeros_like(sample_run.labels)
    objects = _build(sample_run, labels, [])
    key = objects.key_images
    # Then one frame of the middle slice is made (the algorithm looked and found nothing)
    assert key is not None and int(key.NumberOfFrames) == 1
    middle = labels.shape[0] // 2
    assert key.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        sample_run.headers[middle].SOPInstanceUID
    )
    assert not np.any(key.pixel_array[100:] == 255)  # no outline below the text


def test_key_images_are_only_built_from_given_pixels(sample_run: SampleRun) -> None:
    objects = build_results(
        sample_run.headers, sample_run.labels, sample_run.output, sample_run.card, "run-1"
    )
    assert objects.key_images is None
