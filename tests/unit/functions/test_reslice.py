"""Gantry tilt, uneven spacing and multi-frame: one regular volume, results back on the slices."""

from __future__ import annotations

import copy
import io

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

from functions.common.source_headers import (
    pack_source_headers,
    unpack_source_headers,
    volume_header_bytes,
)
from imaging_ai.inference.findings import longest_diameter_mm
from imaging_ai.reslice import labels_on_source_slices
from imaging_ai.results.seg import build_segmentation
from imaging_ai.synthetic import FakePatient, Phantom, iter_ct_slices, make_chest_phantom
from imaging_ai.synthetic_series import enhanced_ct, tilted_series
from imaging_ai.volume import GeometryError, Volume, build_volume, join_frames
from tests.functions_support import model_card

TILT_DEG = 25.0


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_chest_phantom(
        seed=5,
        shape=(100, 160, 160),
        spacing_mm=(2.0, 1.9, 1.9),
        nodule_count=3,
        nodule_diameters_mm=(10.0, 20.0),
    )


@pytest.fixture(scope="module")
def tilted(phantom: Phantom) -> list[Dataset]:
    return tilted_series(phantom, TILT_DEG, table_step_mm=2.0)


def _volume(slices: list[Dataset], **limits: float) -> Volume:
    return build_volume([copy.deepcopy(ds) for ds in slices], **limits)


def _nodules(volume: Volume) -> tuple[npt.NDArray[np.int32], int]:
    """Connected soft-tissue components apart from the body: the nodules inside the lungs."""
    dense = volume.voxels > -400.0
    components, count = ndimage.label(dense)
    sizes = ndimage.sum(dense, components, range(1, count + 1))
    body = int(np.argmax(sizes)) + 1
    components[components == body] = 0
    return components, count


def test_a_tilted_acquisition_measures_its_nodules_in_true_millimetres(
    phantom: Phantom, tilted: list[Dataset]
) -> None:
    # Given the phantom scanned with a 25 degree gantry tilt (a sheared stack of slices)
    # When the volume is built within a 30 degree limit
    volume = _volume(tilted, max_tilt_deg=30.0, max_gap_mm=5.0)

    # Then it lies on a regular grid along the slice normal, one table step x cos(tilt) apart
    assert volume.geometry.slice_direction == pytest.approx(
        (0.0, np.sin(np.radians(TILT_DEG)), np.cos(np.radians(TILT_DEG))), abs=1e-6
    )
    assert volume.geometry.spacing_mm[0] == pytest.approx(2.0 * np.cos(np.radians(TILT_DEG)))
    # And each nodule's longest diameter is within 10 % of the truth
    components, count = _nodules(volume)
    measured = sorted(
        longest_diameter_mm(components == c, volume.geometry)
        for c in range(1, count + 1)
        if np.count_nonzero(components == c) > 20
    )
    truth = sorted(n.diameter_mm for n in phantom.nodules)
    assert len(measured) == len(truth)
    for found, expected in zip(measured, truth, strict=True):
        assert found == pytest.approx(expected, rel=0.10)


def test_labels_found_on_the_regular_grid_land_on_the_original_tilted_slices(
    tilted: list[Dataset],
) -> None:
    # Given nodule labels found on the corrected volume of a tilted series
    originals = [copy.deepcopy(ds) for ds in tilted]
    volume = _volume(tilted, max_tilt_deg=30.0, max_gap_mm=5.0)
    components, _ = _nodules(volume)
    labels = (components > 0).astype(np.uint8)
    positions = [tuple(float(v) for v in ds.ImagePositionPatient) for ds in volume.headers]

    # When they are mapped back onto the original slices and a SEG is built from them
    on_source = labels_on_source_slices(labels, volume.geometry, positions)  # type: ignore[arg-type]
    seg = build_segmentation(volume.headers, on_source, model_card(), "1.2.3", "run-1")

    # Then the labelled pixels of the original slices are nodule tissue in those slices (a
    # nodule's caps lose a few: labels take the nearest grid slice, up to half a step away)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in originals}
    labelled_hu = []
    for ds, plane in zip(volume.headers, on_source, strict=True):
        if plane.any():
            hu = by_uid[str(ds.SOPInstanceUID)].pixel_array.astype(np.float32) - 1024.0
            labelled_hu.append(hu[plane > 0])
    tissue = np.concatenate(labelled_hu)
    assert tissue.size > 1000
    assert np.count_nonzero(tissue > -400.0) / tissue.size > 0.9
    # And every SEG frame references an original instance at that instance's own position
    source_uids = {str(ds.SOPInstanceUID) for ds in originals}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(derivation.ReferencedSOPInstanceUID)
        assert uid in source_uids
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        expected = [float(v) for v in by_uid[uid].ImagePositionPatient]
        assert position == pytest.approx(expected, abs=1e-3)


def test_a_tilt_beyond_the_configured_limit_is_refused(tilted: list[Dataset]) -> None:
    with pytest.raises(GeometryError, match=r"gantry tilt 25.0 deg exceeds the configured 20 deg"):
        _volume(tilted[:10], max_tilt_deg=20.0, max_gap_mm=5.0)


def _regular_slices(phantom: Phantom) -> list[Dataset]:
    return list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )


def test_uneven_spacing_is_interpolated_onto_the_finest_regular_step(phantom: Phantom) -> None:
    # Given a 2 mm series with every other slice missing from its second half (4 mm gaps)
    slices = _regular_slices(phantom)
    kept = [ds for k, ds in enumerate(slices) if k < 50 or k % 2 == 0]

    # When the volume is built with a 5 mm gap allowed
    volume = _volume(kept, max_gap_mm=5.0)

    # Then it has the full 2 mm grid up to the last kept slice (98); kept slices are exact,
    # missing ones interpolated halfway
    assert volume.geometry.shape == (99, *phantom.hu.shape[1:])
    assert volume.geometry.spacing_mm[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(volume.voxels[::2], phantom.hu[:99:2].astype(np.float32))
    between = (phantom.hu[50:97:2].astype(np.float32) + phantom.hu[52:99:2]) / 2
    np.testing.assert_allclose(volume.voxels[51:98:2], between, atol=1e-3)
    # And a wider gap than configured is refused
    with pytest.raises(GeometryError, match=r"4\.0 mm gap between slices exceeds the configured 3"):
        _volume(kept, max_gap_mm=3.0)


def test_an_enhanced_multi_frame_ct_builds_the_same_volume_as_its_single_frames(
    phantom: Phantom,
) -> None:
    # Given one series as single-frame slices and as one Enhanced CT instance (file round trip)
    slices = _regular_slices(phantom)
    buffer = io.BytesIO()
    enhanced_ct(slices).save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    enhanced = pydicom.dcmread(buffer)

    # When both are built
    single = _volume(slices)
    multi = build_volume([enhanced])

    # Then voxels and geometry are identical
    np.testing.assert_array_equal(multi.voxels, single.voxels)
    assert multi.geometry == single.geometry
    assert len(multi.headers) == len(slices)


def test_enhanced_ct_frame_headers_survive_the_source_headers_handoff(phantom: Phantom) -> None:
    # Given an Enhanced CT built into a volume as preprocess reads it (file bytes by SOP UID)
    slices = _regular_slices(phantom)
    buffer = io.BytesIO()
    enhanced_ct(slices).save_as(buffer, enforce_file_format=True)
    file_bytes = buffer.getvalue()
    enhanced = pydicom.dcmread(io.BytesIO(file_bytes))
    uid = str(enhanced.SOPInstanceUID)
    volume = build_volume([enhanced])

    # When its headers go to postprocess through the source-headers tar
    packed = pack_source_headers(volume_header_bytes(volume, {uid: file_bytes}))
    headers = unpack_source_headers(packed)

    # Then every frame keeps its own frame number and position, and the SEG can rejoin them
    assert [str(ds.SOPInstanceUID) for ds in headers] == volume.sop_instance_uids
    assert sorted(int(ds.ReferencedFrameNumber) for ds in headers) == list(
        range(1, len(slices) + 1)
    )
    labels = np.zeros((len(headers), 4, 4), dtype=np.uint8)
    joined, _ = join_frames(headers, labels)
    assert len(joined) == 1
    assert int(joined[0].NumberOfFrames) == len(slices)
