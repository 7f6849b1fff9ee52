"""The TID 1500 SR: content tree via highdicom's reader and dsrdump, dciodvfy, revisions."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes as dcm_codes

from imaging_ai.results import ResultObjects, build_results, codes
from imaging_ai.results.positions import in_plane_index, slice_index
from imaging_ai.results.report_content import read_report
from tests.dciodvfy_support import assert_dciodvfy_clean
from tests.unit.results.sample import SampleRun


def _reread(ds: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))


def test_bytesio_round_trip_gives_one_group_per_finding(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    # Given two findings, When the SR is written and read back, Then two groups measure them.
    sr = _reread(results.sr)
    assert sr.SOPInstanceUID == results.sr.SOPInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(sample_run.output.findings) == 2
    for group, finding in zip(groups, sample_run.output.findings, strict=True):
        assert group.tracking_identifier == f"Nodule {finding.component}"
        assert group.tracking_uid
        assert group.finding_type == dcm_codes.SCT.Nodule
        assert [site.value for site in group.finding_sites] == [dcm_codes.SCT.Lung]
        assert group.reference_type == dcm_codes.DCM.ReferencedSegment
        referenced = group.referenced_segment
        assert referenced is not None
        assert referenced.referenced_sop_instance_uid == results.seg.SOPInstanceUID
        assert referenced.referenced_segment_numbers == [1]
        values = {m.name: (m.value, m.unit) for m in group.get_measurements()}
        assert values[codes.VOLUME] == (round(finding.volume_mm3, 2), codes.CUBIC_MILLIMETER)
        assert values[codes.LONG_AXIS] == (round(finding.longest_diameter_mm, 2), codes.MILLIMETER)
        assert [
            i.value for i in hd.sr.utils.find_content_items(group[0], dcm_codes.DCM.AlgorithmName)
        ] == [sample_run.card.name]
        assert [
            i.value
            for i in hd.sr.utils.find_content_items(group[0], dcm_codes.DCM.AlgorithmVersion)
        ] == [sample_run.card.version]


def test_procedure_reported_is_the_imaging_procedure(results: ResultObjects) -> None:
    root = _reread(results.sr).content[0]
    items = hd.sr.utils.find_content_items(root, name=dcm_codes.DCM.ProcedureReported)
    assert [item.value for item in items] == [codes.CT_CHEST]


def test_contributing_equipment_is_the_processing_algorithm(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    (equipment,) = results.sr.ContributingEquipmentSequence
    purpose = equipment.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "1630",
        "99IHE",
        "Processing Algorithm",
    )
    assert equipment.Manufacturer == sample_run.card.manufacturer
    assert equipment.ManufacturerModelName == sample_run.card.name
    assert equipment.SoftwareVersions == sample_run.card.version


def test_sr_is_in_the_source_study_with_pseudonymous_ids(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    first = sample_run.headers[0]
    assert results.sr.StudyInstanceUID == first.StudyInstanceUID
    assert results.sr.PatientID == first.PatientID
    assert "NOT FOR CLINICAL USE" in results.sr.SeriesDescription


def test_dsrdump_shows_the_tid1500_tree(results: ResultObjects, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    tree = subprocess.run(
        ["dsrdump", "+Pc", "+Pl", "+Pu", str(path)], capture_output=True, text=True, check=True
    ).stdout
    for line in (
        'CONTAINER:(126000,DCM,"Imaging Measurement Report")',
        'CODE:(121058,DCM,"Procedure reported")=(24627-2,LN,"CT Chest")',
        'TEXT:(112039,DCM,"Tracking Identifier")="Nodule 1"',
        'CODE:(121071,DCM,"Finding")=(27925004,SCT,"Nodule")',
        'CODE:(363698007,SCT,"Finding Site")=(39607008,SCT,"Lung")',
        'NUM:(118565006,SCT,"Volume")=',
        '(mm3,UCUM,"cubic millimeter")',
        'NUM:(103339001,SCT,"Long Axis")=',
        'IMAGE:(121191,DCM,"Referenced Segment")',
        'TEXT:(111001,DCM,"Algorithm Name")="lung-nodule-demo"',
        'TEXT:(111002,DCM,"Algorithm Parameters")="weights_sha256=',
        'TEXT:(121106,DCM,"Comment")="NOT FOR CLINICAL USE',
    ):
        assert line in tree, line


def test_passes_dciodvfy(results: ResultObjects, tmp_path: Path) -> None:
    assert_dciodvfy_clean(results.sr, tmp_path / "sr.dcm")


def test_rerun_is_a_revision_naming_its_predecessor(
    results: ResultObjects, sample_run: SampleRun, tmp_path: Path
) -> None:
    # Given a first report, When a late-instance re-run builds results with it as predecessor,
    revised = build_results(
        sample_run.headers,
        sample_run.labels,
        sample_run.output,
        sample_run.card,
        "run-2",
        predecessor_sr=results.sr,
    )
    # Then the new SR is a new instance that points at the first one, and still validates.
    assert revised.sr.SOPInstanceUID != results.sr.SOPInstanceUID
    (study,) = revised.sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == results.sr.StudyInstanceUID
    instance = study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert instance.ReferencedSOPInstanceUID == results.sr.SOPInstanceUID
    # The same finding keeps its tracking UID across revisions.
    before = _reread(results.sr).content.get_volumetric_roi_measurement_groups()
    after = _reread(revised.sr).content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_uid for g in before] == [g.tracking_uid for g in after]
    assert_dciodvfy_clean(revised.sr, tmp_path / "revised.dcm")


def test_no_finding_run_still_reports(sample_run: SampleRun, tmp_path: Path) -> None:
    output = sample_run.output.model_copy(update={"findings": []})
    empty = build_results(
        sample_run.headers, sample_run.labels * 0, output, sample_run.card, "run-empty"
    )
    assert _reread(empty.sr).content.get_volumetric_roi_measurement_groups() == []
    assert "no finding" in empty.bundle["entry"][-1]["resource"]["conclusion"]
    for name, dataset in (("sr.dcm", empty.sr), ("seg.dcm", empty.seg)):
        assert_dciodvfy_clean(dataset, tmp_path / name)


def test_each_finding_is_also_a_point_at_its_centroid_for_viewers(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    # Given two findings, When the SR is read back,
    content = _reread(results.sr).content
    volumetric = content.get_volumetric_roi_measurement_groups()
    planar = content.get_planar_roi_measurement_groups()

    # Then each has a TID 1410 group with its tracking UID and a POINT on its centroid slice,
    assert [g.tracking_uid for g in planar] == [g.tracking_uid for g in volumetric]
    geometry = sample_run.output.input.source_geometry
    for group, finding in zip(planar, sample_run.output.findings, strict=True):
        region = group.roi
        assert region is not None
        assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
        k = slice_index(geometry, finding.centroid_mm)
        source = sample_run.headers[k]
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        row, column = in_plane_index(geometry, finding.centroid_mm)
        assert region.value.tolist() == [[column + 0.5, row + 0.5]]
        # which adds no finding of its own: the PDF and the ORU still list each finding once.
        assert group.finding_type is None
        assert group.get_measurements() == []
    assert len(read_report(results.sr).findings) == len(sample_run.output.findings)
