"""The optional PACS notice for a study the cloud did not analyze: a one-line Basic Text SR.

Built on-prem with the study's original identity (it never leaves the edge); its UIDs derive
from the run id, so a repeated message stores the same instance, not a second one.
"""

from __future__ import annotations

import io
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from edge_forwarder.identity import StudyIdentity

BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
NOTICE_SERIES_NUMBER = 9190
_TEXT_LIMIT = 1000


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def not_analyzed_notice(
    identity: StudyIdentity, reason: str, model_name: str | None, run_id: str
) -> bytes:
    """A Basic Text SR in the original study saying it was not analyzed, and why."""
    now = datetime.now()
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[identity.study_instance_uid, run_id, "sop"])
    ds.SeriesInstanceUID = generate_uid(
        entropy_srcs=[identity.study_instance_uid, run_id, "series"]
    )
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
    ds.PatientBirthDate, ds.PatientSex = identity.patient_birth_date, identity.patient_sex
    ds.AccessionNumber = identity.accession_number
    ds.StudyDate, ds.StudyTime = identity.study_date, identity.study_time
    ds.ReferringPhysicianName, ds.StudyID = "", ""
    ds.Modality = "SR"
    ds.SeriesNumber, ds.InstanceNumber = NOTICE_SERIES_NUMBER, 1
    ds.SeriesDescription = "AI not analyzed"
    ds.Manufacturer = "imaging-ai-pipeline project"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.PerformedProcedureCodeSequence = Sequence([])
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
    model = f" by {model_name}" if model_name else ""
    text.TextValue = f"Not analyzed{model}: {reason}"[:_TEXT_LIMIT]
    ds.ContentSequence = Sequence([text])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
