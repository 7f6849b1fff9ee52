"""Results for an enhanced (multi-frame) CT: the SEG references the one source instance by the
frame numbers it stores, whatever order its frames are in."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from imaging_ai.results.build import build_results
from imaging_ai.synthetic_series import enhanced_ct
from imaging_ai.volume import build_volume
from tests.unit.results.sample import make_sample_run


def test_seg_frames_reference_the_enhanced_instance_by_its_own_frame_numbers(
    tmp_path: Path,
) -> None:
    # Given a run whose series was one Enhanced CT with its frames stored head to feet
    # (reverse of the volume order), read back the way postprocess reads headers (JSON)
    run = make_sample_run(tmp_path, nodules=1)
    slices = [pydicom.dcmread(path) for path in reversed(run.paths)]
    buffer = io.BytesIO()
    enhanced_ct(slices).save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    source = pydicom.dcmread(buffer)
    volume = build_volume([source])
    headers = [Dataset.from_json(ds.to_json_dict()) for ds in volume.headers]
    output = run.output.model_copy(
        update={
            "input": run.output.input.model_copy(
                update={"sop_instance_uids": [str(ds.SOPInstanceUID) for ds in headers]}
            )
        }
    )
    for ds in headers:
        ds.StudyInstanceUID = run.output.input.pseudo_study_uid
        ds.SeriesInstanceUID = run.output.input.pseudo_series_uid

    # When its results are built from the volume-order label map
    results = build_results(headers, run.labels, output, run.card, "run-1")

    # Then every SEG frame references the enhanced instance at the frame lying where it lies
    positions = {
        number: [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        for number, group in enumerate(source.PerFrameFunctionalGroupsSequence, start=1)
    }
    seg = results.seg
    assert seg.NumberOfFrames >= 1
    for frame in seg.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        where = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(positions[int(reference.ReferencedFrameNumber)], where, atol=1e-3)
    # And the labelled frames are the slices the nodule is on
    nodule_slices = set(np.nonzero(run.labels.any(axis=(1, 2)))[0].tolist())
    z_of_slice = {k: float(run.headers[k].ImagePositionPatient[2]) for k in nodule_slices}
    labelled_z = {
        round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert labelled_z == {round(z, 3) for z in z_of_slice.values()}
