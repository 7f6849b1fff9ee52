"""A user's study folder: DICOM instances to send; DICOMDIR and other files skipped, counted."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from imaging_ai.dicom_folder import SkipKind, scan_folder
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom


def test_a_cd_folder_yields_its_instances_and_counts_what_it_skips(tmp_path: Path) -> None:
    # Given a CD-like folder: a DICOMDIR indexing 4 CT slices, a readme and an autorun file
    phantom = make_chest_phantom(seed=3, shape=(4, 32, 32), spacing_mm=(2.0, 8.0, 8.0))
    patient = FakePatient()
    fileset = FileSet()
    slices = list(iter_ct_slices(phantom, patient, generate_uid(), generate_uid(), generate_uid()))
    for ds in slices:
        fileset.add(ds)
    fileset.write(tmp_path / "cd")
    (tmp_path / "cd" / "README.TXT").write_text("Viewer on this CD: run autorun.exe")
    (tmp_path / "cd" / "AUTORUN.INF").write_bytes(b"[autorun]\r\nopen=viewer.exe\r\n")

    # When the folder is scanned
    found = scan_folder(tmp_path / "cd")

    # Then the 4 slices are one series to send, in their own transfer syntax
    assert len(found.instances) == 4 and len(found.series) == 1
    assert found.contexts == {(str(slices[0].SOPClassUID), "1.2.840.10008.1.2.1")}
    # And the DICOMDIR and the two other files are skipped and counted
    assert [p.name for p in found.skipped[SkipKind.DICOMDIR]] == ["DICOMDIR"]
    assert found.skipped_counts() == {"DICOMDIR": 1, "not DICOM": 2}
    # And the identifying values to audit for are read from the study's own headers
    values = set(found.identifiers.values())
    assert {patient.patient_id, patient.accession_number, patient.institution} <= values
    assert {"DOE^JANE^Q", "JANE", str(slices[0].StudyInstanceUID)} <= values  # parts >= 4 chars
    first = pydicom.dcmread(found.instances[0], stop_before_pixels=True)
    assert str(first.SeriesInstanceUID) in values
