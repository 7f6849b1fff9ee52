"""Comprehensive 3D SR with a TID 1500 Measurement Report: measurement groups per finding."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import Finding, ModelOutputMeta, TriageResult, VolumeGeometry
from imaging_ai.results import codes
from imaging_ai.results.positions import in_plane_index, slice_index
from imaging_ai.results.seg import segment_number
from imaging_ai.results.uids import result_uid

SR_SERIES_NUMBER = 9101
# SR numeric values and FHIR valueQuantity carry the same rounded figure.
MEASUREMENT_DECIMALS = 2


def procedure_reported(source_headers: Sequence[pydicom.Dataset]) -> Code:
    """The imaging procedure the report is about (e.g. CT Chest), never the algorithm."""
    first = source_headers[0]
    modality = str(first.get("Modality", "")).upper()
    body_part = str(first.get("BodyPartExamined", "")).upper()
    code = codes.PROCEDURES.get((modality, body_part)) or codes.PROCEDURES_BY_MODALITY.get(modality)
    if code is None:
        raise ContractError(f"no procedure code for modality {modality!r}")
    return code


def measurement_value(finding: Finding, measurement: str) -> float:
    """A finding's measurement, rounded as both the SR and the FHIR Bundle state it."""
    return round(float(getattr(finding, measurement)), MEASUREMENT_DECIMALS)


def tracking_uid(pseudo_study_uid: str, finding: Finding) -> str:
    """Stable across runs of a study, so a revised report tracks the same finding."""
    return result_uid(pseudo_study_uid, "finding", str(finding.label_value), str(finding.component))


def tracking_identifier(card: ModelCard, finding: Finding) -> str:
    """The human-readable tracking identifier of a finding, e.g. 'Nodule 2'."""
    return f"{card.label(finding.label_value).name} {finding.component}"[:64]


def algorithm_identification(card: ModelCard) -> hd.sr.AlgorithmIdentification:
    """TID 4019 with the weights hash as a parameter, so the result can be re-executed."""
    return hd.sr.AlgorithmIdentification(
        name=card.name,
        version=card.version,
        parameters=[f"weights_sha256={card.weights_sha256}"],
        manufacturer=card.manufacturer,
        family=codes.ARTIFICIAL_INTELLIGENCE,
    )


def contributing_equipment(card: ModelCard, when: datetime) -> Dataset:
    """The IHE AIR Contributing Equipment item (Purpose of Reference 99IHE 1630).

    highdicom's ContributingEquipment accepts only DCM purposes, so the item is built here.
    """
    item = Dataset()
    item.Manufacturer = card.manufacturer[:64]
    item.ManufacturerModelName = card.name[:64]
    item.SoftwareVersions = card.version[:64]
    item.DeviceSerialNumber = card.weights_sha256[:16]
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S+0000")
    item.ContributionDescription = f"AI inference; weights sha256 {card.weights_sha256}"
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.PROCESSING_ALGORITHM)]
    return item


def _measurement_group(
    finding: Finding,
    card: ModelCard,
    seg: pydicom.Dataset,
    source_series_uid: str,
    pseudo_study_uid: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    label = card.label(finding.label_value)
    measurements = []
    for key in card.measurements:
        if key not in codes.MEASUREMENTS:
            raise ContractError(f"model card names an unknown measurement {key!r}")
        concept, unit = codes.MEASUREMENTS[key]
        measurements.append(
            hd.sr.Measurement(name=concept, value=measurement_value(finding, key), unit=unit)
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(pseudo_study_uid, finding),
            identifier=tracking_identifier(card, finding),
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number(card, finding.label_value),
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        finding_type=codes.check_card_code(label.type),
        finding_category=codes.check_card_code(label.category),
        finding_sites=[hd.sr.FindingSite(codes.check_card_code(label.finding_site))],
        algorithm_id=algorithm_identification(card),
        measurements=measurements,
    )


def _location_group(
    finding: Finding,
    card: ModelCard,
    source_headers: Sequence[pydicom.Dataset],
    geometry: VolumeGeometry,
    pseudo_study_uid: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group marking the finding's centroid on its source slice, for viewers.

    Viewers such as OHIF place and list a measurement only where its group carries image
    coordinates; a group that references a SEG segment is invisible there. This group shares
    the finding's tracking UID, so such viewers merge it with the volumetric group's
    measurements; it carries no finding type or measurement of its own, so readers that list
    findings (`report_content`) count each finding once.
    """
    index = slice_index(geometry, finding.centroid_mm)
    row, column = in_plane_index(geometry, finding.centroid_mm)
    source = source_headers[index]
    # SCOORD (0, 0) is the top left corner of the top left pixel: pixel centres are at +0.5.
    point = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[column + 0.5, row + 0.5]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(pseudo_study_uid, finding),
            identifier=tracking_identifier(card, finding),
        ),
        referenced_region=point,
        algorithm_id=algorithm_identification(card),
    )


def build_measurement_report(
    source_headers: Sequence[pydicom.Dataset],
    seg: pydicom.Dataset,
    output: ModelOutputMeta,
    card: ModelCard,
    unreported_findings: int = 0,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree: observer = the algorithm, one group per finding."""
    pseudo_study_uid = str(source_headers[0].StudyInstanceUID)
    source_series_uid = str(source_headers[0].SeriesInstanceUID)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(card.name, card.version, card.weights_sha256),
        name=card.name[:64],
        manufacturer_name=card.manufacturer[:64],
        model_name=f"{card.name} {card.version}"[:64],
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for finding in sorted(output.findings, key=lambda f: (f.label_value, f.component)):
        groups.append(_measurement_group(finding, card, seg, source_series_uid, pseudo_study_uid))
        groups.append(
            _location_group(
                finding, card, source_headers, output.input.source_geometry, pseudo_study_uid
            )
        )
    if not groups:
        # TID 1500 needs one measurement container; a no-finding run still says who looked.
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=result_uid(pseudo_study_uid, "no-finding"), identifier="No finding"
                ),
                algorithm_id=algorithm_identification(card),
                qualitative_evaluations=[],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported(source_headers),
        imaging_measurements=groups,
    )
    comments = []
    items: list[hd.sr.ContentItem] = []
    if output.triage is not None and card.triage is not None:
        # The per-study answer as a coded evaluation (finding: present / absent), and in words
        # with its probability, which a CODE item cannot carry.
        answer = codes.PRESENT if output.triage.suspected else codes.ABSENT
        items.append(
            hd.sr.CodeContentItem(
                name=codes.check_card_code(card.triage.finding),
                value=answer,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        comments.append(triage_note(output.triage, card))
    if unreported_findings:
        comments.append(unreported_findings_note(unreported_findings))
    if card.not_for_clinical_use:
        comments.append(codes.NOT_FOR_CLINICAL_USE)
    if comments:
        # TID 1500 row "Qualitative Evaluations" holds the triage answer and free TEXT items:
        # the disclaimer, and how many findings the model card's limit left out.
        evaluations = hd.sr.ContainerContentItem(
            name=codes.QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        items.extend(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=comment,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for comment in comments
        )
        evaluations.ContentSequence = hd.sr.ContentSequence(items)
        report[0].ContentSequence.append(evaluations)
    return report


def triage_note(triage: TriageResult, card: ModelCard) -> str:
    """What the SR, the FHIR report and the site's notification say about the study's flag."""
    threshold = f", threshold {card.triage.threshold:g}" if card.triage is not None else ""
    answer = "yes" if triage.suspected else "no"
    note = f"{triage.name}: {answer} (probability {triage.probability:.2f}{threshold})."
    if triage.critical:
        note = f"{note} CRITICAL FINDING: the site is notified at once."
    return note


def unreported_findings_note(count: int) -> str:
    """What the SR and the FHIR conclusion say about findings left out by the card's limit."""
    return f"{count} more finding(s), the smallest, were not reported (model card limit)."


def build_structured_report(
    source_headers: Sequence[pydicom.Dataset],
    seg: pydicom.Dataset,
    output: ModelOutputMeta,
    card: ModelCard,
    run_id: str,
    predecessor_sr: pydicom.Dataset | None = None,
    now: datetime | None = None,
    unreported_findings: int = 0,
) -> pydicom.Dataset:
    """Build the Comprehensive 3D SR measurement report for one inference run.

    Parameters
    ----------
    source_headers: Sequence[pydicom.Dataset]
        De-identified source slices in volume order; they give patient and study attributes.
    seg: pydicom.Dataset
        The Segmentation built for the same run; measurement groups reference its segments.
    output: imaging_ai.model_io.ModelOutputMeta
        The inference server's findings and measurements.
    card: imaging_ai.model_card.ModelCard
        The model contract: label codes, algorithm name, version and weights hash.
    run_id: str
        The run; the same run always gives the same SOP Instance UID.
    predecessor_sr: pydicom.Dataset | None, optional
        The report this one revises (a late-instance re-run); named in
        PredecessorDocumentsSequence.
    now: datetime | None, optional
        Content and equipment time (UTC); now by default.
    unreported_findings: int, optional
        Findings the model made beyond those in `output` (left out by the card's limit).

    Returns
    -------
    pydicom.Dataset
        A highdicom Comprehensive3DSR instance.
    """
    now = now or datetime.now(UTC)
    pseudo_study_uid = str(source_headers[0].StudyInstanceUID)
    if predecessor_sr is not None and predecessor_sr.StudyInstanceUID != pseudo_study_uid:
        raise ContractError("predecessor report belongs to another study")
    description = f"{card.name} measurements"
    if card.not_for_clinical_use:
        description = f"{card.name} SR - {codes.NOT_FOR_CLINICAL_USE_SHORT}"
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source_headers, seg],
        content=build_measurement_report(source_headers, seg, output, card, unreported_findings),
        series_instance_uid=result_uid(pseudo_study_uid, run_id, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(pseudo_study_uid, run_id, "sr"),
        instance_number=1,
        manufacturer=card.manufacturer[:64],
        is_complete=True,
        # Final from the algorithm's side (FHIR status "final"); Verification stays UNVERIFIED.
        is_final=True,
        previous_versions=[predecessor_sr] if predecessor_sr is not None else None,
        series_description=description[:64],
    )
    # Contributing Equipment Sequence (0018,A001); highdicom types it for its own item class.
    sr.add_new(0x0018A001, "SQ", [contributing_equipment(card, now)])
    return sr
