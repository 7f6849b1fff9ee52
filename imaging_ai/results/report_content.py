"""What a TID 1500 SR says, read back into plain values for the PDF report and the HL7 ORU.

The edge renders the PDF and the ORU from the re-identified SR it delivers, so the three can
never disagree: one reading of one content tree, done here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from imaging_ai.errors import ContractError
from imaging_ai.results import codes

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
_MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
_TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
_TRACKING_UID = Code("112040", "DCM", "Tracking Unique Identifier")
_FINDING_SITE = Code("363698007", "SCT", "Finding Site")
_PROCEDURE_REPORTED = Code("121058", "DCM", "Procedure reported")


@dataclass(frozen=True)
class ReportedMeasurement:
    concept: Code  # e.g. SCT 118565006 Volume
    value: float
    unit: Code  # UCUM


@dataclass(frozen=True)
class ReportedFinding:
    tracking_identifier: str  # e.g. "Nodule 1"
    tracking_uid: str
    finding_type: Code | None  # None for the "No finding" group
    finding_site: Code | None
    measurements: tuple[ReportedMeasurement, ...]


@dataclass(frozen=True)
class ReportContent:
    """The findings of one SR and the algorithm that made them."""

    sop_instance_uid: str
    model_name: str
    model_version: str
    weights_sha256: str  # from the Contributing Equipment description; "" when absent
    procedure: Code | None
    findings: tuple[ReportedFinding, ...]
    comments: tuple[str, ...]  # disclaimer, findings left out by the card's limit
    content_date: str
    content_time: str

    @property
    def not_for_clinical_use(self) -> bool:
        return codes.NOT_FOR_CLINICAL_USE in self.comments

    def conclusion(self) -> str:
        """The one-paragraph text report (the same sentences in the PDF and the ORU)."""
        return " ".join(self.conclusion_sentences())

    def conclusion_sentences(self) -> list[str]:
        """The text report, sentence by sentence."""
        lines = [f"AI result by {self.model_name} version {self.model_version}."]
        if not self.findings:
            lines.append("No finding was detected by the algorithm.")
        for finding in self.findings:
            parts = [
                f"{m.concept.meaning} {format_value(m.value)} {m.unit.value}"
                for m in finding.measurements
            ]
            site = f" ({finding.finding_site.meaning})" if finding.finding_site else ""
            lines.append(f"{finding.tracking_identifier}{site}: {', '.join(parts)}.")
        lines.extend(self.comments)
        lines.append("Measurements are unverified algorithm output, to be read by a radiologist.")
        return lines


def format_value(value: float) -> str:
    """A measurement as people read it: two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _name(item: Dataset) -> Code | None:
    sequence = item.get("ConceptNameCodeSequence")
    return _code(sequence[0]) if sequence else None


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _group(container: Dataset) -> ReportedFinding:
    identifier, uid = "", ""
    finding_type: Code | None = None
    site: Code | None = None
    measurements = []
    for item in container.get("ContentSequence", []):
        name, kind = _name(item), str(item.get("ValueType", ""))
        if name == _TRACKING_IDENTIFIER:
            identifier = str(item.TextValue)
        elif name == _TRACKING_UID:
            uid = str(item.UID)
        elif name == codes.FINDING and kind == "CODE":
            finding_type = _code(item.ConceptCodeSequence[0])
        elif name == _FINDING_SITE and kind == "CODE":
            site = _code(item.ConceptCodeSequence[0])
        elif kind == "NUM" and name is not None and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            measurements.append(
                ReportedMeasurement(
                    concept=name,
                    value=float(measured.NumericValue),
                    unit=_code(measured.MeasurementUnitsCodeSequence[0]),
                )
            )
    if not identifier or not uid:
        raise ContractError("SR measurement group lacks its tracking identifier or UID")
    return ReportedFinding(identifier, uid, finding_type, site, tuple(measurements))


def read_report(sr: Dataset | bytes) -> ReportContent:
    """Read our TID 1500 SR (a dataset or Part 10 bytes) into a ReportContent."""
    if isinstance(sr, bytes):
        sr = pydicom.dcmread(io.BytesIO(sr))
    if str(sr.get("SOPClassUID", "")) != COMPREHENSIVE_3D_SR:
        raise ContractError("not a Comprehensive 3D SR")
    equipment = sr.get((0x0018, 0xA001))
    if not equipment:
        raise ContractError("SR names no contributing equipment (the algorithm)")
    algorithm = equipment.value[0]
    description = str(algorithm.get("ContributionDescription", ""))
    weights = description.rsplit("sha256 ", 1)[-1] if "sha256 " in description else ""
    findings: list[ReportedFinding] = []
    comments: list[str] = []
    procedure: Code | None = None
    for item in _walk(sr):
        name = _name(item)
        if name == _MEASUREMENT_GROUP and str(item.get("ValueType")) == "CONTAINER":
            group = _group(item)
            if group.finding_type is not None or group.measurements:
                findings.append(group)
        elif name == codes.COMMENT and str(item.get("ValueType")) == "TEXT":
            comments.append(str(item.TextValue))
        elif name == _PROCEDURE_REPORTED and item.get("ConceptCodeSequence"):
            procedure = _code(item.ConceptCodeSequence[0])
    return ReportContent(
        sop_instance_uid=str(sr.SOPInstanceUID),
        model_name=str(algorithm.ManufacturerModelName),
        model_version=str(algorithm.SoftwareVersions),
        weights_sha256=weights,
        procedure=procedure,
        findings=tuple(findings),
        comments=tuple(comments),
        content_date=str(sr.get("ContentDate", "")),
        content_time=str(sr.get("ContentTime", "")),
    )
