"""A revision SR, re-identified, names the earlier SR by the UIDs the PACS holds it under."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge_forwarder.transport.reidentify import reidentify_dicom
from tests.unit.transport.test_reidentify_leaks import (
    ORIGINAL_STUDY,
    PSEUDO_STUDY,
    _identity,
    _result,
)


def _revising(predecessor: pydicom.Dataset) -> object:
    def mutate(ds: Dataset) -> None:
        # The cloud names each run's SR and its series afresh.
        ds.SOPInstanceUID = "2.25.55554444333322221111000099998888777766"
        ds.SeriesInstanceUID = "2.25.66665555444433332222111100009999888877"
        sop = Dataset()
        sop.ReferencedSOPClassUID = predecessor.SOPClassUID
        sop.ReferencedSOPInstanceUID = predecessor.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = predecessor.SeriesInstanceUID
        series.ReferencedSOPSequence = Sequence([sop])
        study = Dataset()
        study.StudyInstanceUID = PSEUDO_STUDY
        study.ReferencedSeriesSequence = Sequence([series])
        ds.PredecessorDocumentsSequence = Sequence([study])

    return mutate


def test_the_predecessor_reference_follows_the_earlier_sr_into_the_pacs() -> None:
    # Given the first run's SR as the cloud wrote it and as the edge delivered it
    cloud_first = pydicom.dcmread(io.BytesIO(_result()))
    delivered_first = pydicom.dcmread(
        io.BytesIO(reidentify_dicom(_result(), _identity(), "r1-abc"))
    )
    # When the re-run's revision SR (naming the cloud's first SR) is re-identified
    revision = pydicom.dcmread(
        io.BytesIO(
            reidentify_dicom(_result(_revising(cloud_first)), _identity(), "r2-def", "r1-abc")
        )
    )
    # Then its predecessor is the first SR as the PACS holds it, in the original study
    (study,) = revision.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == ORIGINAL_STUDY
    assert series.SeriesInstanceUID == delivered_first.SeriesInstanceUID
    assert sop.ReferencedSOPInstanceUID == delivered_first.SOPInstanceUID
    assert revision.SOPInstanceUID != delivered_first.SOPInstanceUID
