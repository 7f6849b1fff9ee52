"""Deterministic result UIDs (a redelivered run rebuilds byte-identical references), and the
Part 10 file meta that names them."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid


def result_uid(pseudo_study_uid: str, *parts: str) -> str:
    """A UID derived from the study, the run and a role name.

    Postprocessing is at-least-once: building the same run twice must give the same UIDs,
    so a PACS sees a duplicate of one instance rather than two competing results.
    """
    return str(generate_uid(entropy_srcs=["imaging-ai-results", pseudo_study_uid, *parts]))


def explicit_le_file_meta(ds: Dataset) -> FileMetaDataset:
    """File meta for a result object written as explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
