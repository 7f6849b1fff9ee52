"""Synthetic chest CT studies with fake PHI and known nodules, for tests, demo and training."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaging_ai.model_io import Finding, VolumeGeometry

# Stored value = HU - RESCALE_INTERCEPT, as most CT scanners write it.
RESCALE_INTERCEPT = -1024.0
HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_BONE, HU_NODULE = -1000, -850, -100, 40, 700, 40
PRIVATE_CREATOR = "SYNTH HOSPITAL PACS"


@dataclass(frozen=True)
class FakePatient:
    """Fake PHI written into every instance; tests assert none of it reaches the cloud."""

    patient_name: str = "DOE^JANE^Q"
    patient_id: str = "MRN-4711-0815"
    other_patient_id: str = "SSN-078-05-1120"
    birth_date: str = "19580317"
    sex: str = "F"
    age: str = "067Y"
    accession_number: str = "ACC-2026-99123"
    study_date: str = "20260914"
    study_time: str = "093512"
    referring_physician: str = "HOUSE^GREGORY"
    performing_physician: str = "CUDDY^LISA"
    operator: str = "WILSON^JAMES"
    institution: str = "PRINCETON PLAINSBORO TEACHING HOSPITAL"
    institution_address: str = "1 HOSPITAL DRIVE, PLAINSBORO NJ"
    station_name: str = "CT-PPTH-01"
    study_id: str = "STUDY-55231"
    requested_procedure_id: str = "RP-88231-LUNG"
    private_note: str = "PT DOE JANE MRN-4711-0815 CALL 555-0134"

    def phi_by_field(self) -> dict[str, str]:
        """Identifying fields by name (dates and sex excluded: not unique enough to search for)."""
        fields = {
            name: value
            for name, value in vars(self).items()
            if name not in {"sex", "age", "study_date", "study_time"}
        }
        for field_name in ("patient_name", "referring_physician", "performing_physician"):
            for index, part in enumerate(fields[field_name].split("^")):
                if len(part) >= 4:
                    fields[f"{field_name}[{index}]"] = part
        return fields

    def phi_values(self) -> list[str]:
        """Every fake identifying string, in the forms a leak would take (names split too)."""
        values = [
            self.patient_name,
            self.patient_id,
            self.other_patient_id,
            self.accession_number,
            self.referring_physician,
            self.performing_physician,
            self.operator,
            self.institution,
            self.institution_address,
            self.station_name,
            self.study_id,
            self.requested_procedure_id,
            self.private_note,
            self.birth_date,
        ]
        for name in (self.patient_name, self.referring_physician, self.performing_physician):
            values.extend(part for part in name.split("^") if len(part) >= 4)
        return values


@dataclass(frozen=True)
class Nodule:
    """Ground truth for one spherical nodule, in patient coordinates (mm, LPS)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    center_voxel: tuple[int, int, int]  # (slice, row, column)

    @property
    def volume_mm3(self) -> float:
        return float(np.pi / 6.0 * self.diameter_mm**3)


@dataclass
class Phantom:
    """A chest CT volume in HU, indexed (slice, row, column), with its geometry and truth."""

    hu: npt.NDArray[np.int16]
    spacing_mm: tuple[float, float, float]  # (slice, row, column)
    origin_mm: tuple[float, float, float]  # patient position of voxel (0, 0, 0), LPS
    nodules: list[Nodule]
    nodule_mask: npt.NDArray[np.uint8]

    def geometry(self) -> VolumeGeometry:
        """The phantom's grid in patient space (`origin_mm` here is in array order)."""
        oz, oy, ox = self.origin_mm
        return VolumeGeometry(
            shape=self.hu.shape, spacing_mm=self.spacing_mm, origin_mm=(ox, oy, oz)
        )

    def truth_findings(self, label_value: int = 1) -> list[Finding]:
        """The nodules as the model contract reports findings: what a perfect model would say."""
        geometry = self.geometry()
        voxel_mm3 = float(np.prod(self.spacing_mm))
        findings = []
        for index, nodule in enumerate(self.nodules, start=1):
            voxels = np.argwhere(self.nodule_mask == index)
            centre = voxels.mean(axis=0)
            findings.append(
                Finding(
                    label_value=label_value,
                    component=index,
                    voxel_count=len(voxels),
                    volume_mm3=len(voxels) * voxel_mm3,
                    longest_diameter_mm=nodule.diameter_mm,
                    centroid_mm=geometry.voxel_to_patient(
                        (float(centre[0]), float(centre[1]), float(centre[2]))
                    ),
                )
            )
        return findings


@dataclass(frozen=True)
class ScannerProfile:
    """The "scanner" a phantom is acquired on: what its headers say and what its images show.

    A sharper reconstruction kernel is modelled as more noise and a smoother one as less,
    which is what moves the HU statistics of a uniform region (air, fat) in real CT.
    """

    manufacturer: str = "GE MEDICAL SYSTEMS"
    model_name: str = "RHAPSODE"
    software_version: str = "05.3"
    convolution_kernel: str = "STANDARD"
    kvp: float = 120.0
    noise_hu: float = 15.0


@dataclass
class SyntheticStudy:
    """What the generator wrote, with the truth a test or an evaluation compares against."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    paths: list[Path]
    patient: FakePatient
    phantom: Phantom
    sop_instance_uids: list[str] = field(default_factory=list)


def make_chest_phantom(
    seed: int,
    shape: tuple[int, int, int] = (200, 512, 512),
    spacing_mm: tuple[float, float, float] = (1.5, 0.7, 0.7),
    nodule_count: int | None = None,
    nodule_diameters_mm: tuple[float, float] = (6.0, 20.0),
    noise_hu: float = 15.0,
) -> Phantom:
    """A body ellipse with fat, two lungs, a spine, and spherical nodules inside the lungs.

    The same seed always gives the same phantom, so train and evaluation sets never overlap
    as long as their seeds differ.
    """
    rng = np.random.default_rng(seed)
    depth, rows, cols = shape
    dz, dy, dx = spacing_mm
    y = (np.arange(rows) - rows / 2 + 0.5) * dy
    x = (np.arange(cols) - cols / 2 + 0.5) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    z = (np.arange(depth) - depth / 2 + 0.5) * dz

    body_a, body_b = 160.0 + rng.uniform(-10, 10), 115.0 + rng.uniform(-8, 8)  # mm semi-axes
    lung_a, lung_b = 55.0 + rng.uniform(-5, 5), 85.0 + rng.uniform(-5, 5)
    lung_dx = 70.0 + rng.uniform(-4, 4)
    z_top, z_bottom = z[-1] - 10.0, z[0] + 15.0  # lungs taper toward both ends

    body2d = (xx / body_a) ** 2 + (yy / body_b) ** 2 <= 1.0
    fat2d = body2d & ((xx / (body_a - 12)) ** 2 + (yy / (body_b - 12)) ** 2 > 1.0)
    spine2d = (xx / 14.0) ** 2 + ((yy - body_b + 35) / 14.0) ** 2 <= 1.0
    hu = np.full(shape, HU_AIR, dtype=np.int16)
    lung_mask = np.zeros(shape, dtype=bool)
    for k, zk in enumerate(z):
        # Lung cross-section shrinks toward apex and base (an ellipsoid in z).
        zf = (zk - (z_top + z_bottom) / 2) / ((z_top - z_bottom) / 2)
        scale = np.sqrt(max(0.0, 1.0 - zf**2))
        sl = hu[k]
        sl[body2d] = HU_SOFT
        sl[fat2d] = HU_FAT
        sl[spine2d] = HU_BONE
        if scale > 0.05:
            for side in (-1.0, 1.0):
                lung = ((xx - side * lung_dx) / (lung_a * scale)) ** 2 + (
                    (yy + 5.0) / (lung_b * scale)
                ) ** 2 <= 1.0
                sl[lung] = HU_LUNG
                lung_mask[k] |= lung

    count = int(rng.integers(1, 4)) if nodule_count is None else nodule_count
    nodules: list[Nodule] = []
    nodule_mask = np.zeros(shape, dtype=np.uint8)
    origin = (float(z[0]), float(y[0]), float(x[0]))
    zz_idx = np.arange(depth)[:, None, None]
    yy_idx = np.arange(rows)[None, :, None]
    xx_idx = np.arange(cols)[None, None, :]
    attempts = 0
    while len(nodules) < count and attempts < 500:
        attempts += 1
        diameter = float(rng.uniform(*nodule_diameters_mm))
        radius = diameter / 2
        k, i, j = (int(rng.integers(0, n)) for n in shape)
        # Keep the whole sphere inside a lung and clear of other nodules.
        rk, ri, rj = (int(np.ceil(radius / s)) + 1 for s in spacing_mm)
        if not (rk <= k < depth - rk and ri <= i < rows - ri and rj <= j < cols - rj):
            continue
        box = lung_mask[k - rk : k + rk + 1, i - ri : i + ri + 1, j - rj : j + rj + 1]
        if not box.all():
            continue
        if any(
            np.linalg.norm(np.subtract(n.center_voxel, (k, i, j)) * spacing_mm)
            < (n.diameter_mm / 2 + radius + 5)
            for n in nodules
        ):
            continue
        sphere = (
            ((zz_idx[k - rk : k + rk + 1] - k) * dz) ** 2
            + ((yy_idx[:, i - ri : i + ri + 1] - i) * dy) ** 2
            + ((xx_idx[:, :, j - rj : j + rj + 1] - j) * dx) ** 2
        ) <= radius**2
        region = (slice(k - rk, k + rk + 1), slice(i - ri, i + ri + 1), slice(j - rj, j + rj + 1))
        hu[region][sphere] = HU_NODULE
        nodule_mask[region][sphere] = len(nodules) + 1
        center_mm = (origin[0] + k * dz, origin[1] + i * dy, origin[2] + j * dx)
        nodules.append(Nodule(center_mm=center_mm, diameter_mm=diameter, center_voxel=(k, i, j)))

    noise = rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    hu = np.clip(hu.astype(np.float32) + noise, -1024, 3071).astype(np.int16)
    return Phantom(
        hu=hu, spacing_mm=spacing_mm, origin_mm=origin, nodules=nodules, nodule_mask=nodule_mask
    )


@cache
def _header_template() -> Dataset:
    """CT_small.dcm (shipped with pydicom, ~260 elements) as a realistic header template."""
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    del template.PixelData
    return template


def _phi_sequences(patient: FakePatient, study_instance_uid: str) -> tuple[Sequence, Sequence]:
    other_ids = Dataset()
    other_ids.PatientID = patient.other_patient_id
    other_ids.TypeOfPatientID = "TEXT"
    request = Dataset()
    request.RequestedProcedureID = patient.requested_procedure_id
    request.ScheduledProcedureStepID = patient.accession_number
    request.AccessionNumber = patient.accession_number
    # A UID two levels down that de-identification must remap consistently.
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Mgmt
    referenced.ReferencedSOPInstanceUID = study_instance_uid
    request.ReferencedStudySequence = Sequence([referenced])
    return Sequence([other_ids]), Sequence([request])


def iter_ct_slices(
    phantom: Phantom,
    patient: FakePatient,
    study_instance_uid: str,
    series_instance_uid: str,
    frame_of_reference_uid: str,
    series_number: int = 2,
    series_description: str = "CHEST W/O CONTRAST 1.5MM",
    scanner: ScannerProfile | None = None,
) -> Iterator[Dataset]:
    """Yield one CT Image Storage dataset per slice, header from the template, PHI filled in."""
    depth, rows, cols = phantom.hu.shape
    other_ids, request = _phi_sequences(patient, study_instance_uid)
    scanner = scanner or ScannerProfile()
    for k in range(depth):
        ds = copy.deepcopy(_header_template())
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_instance_uid
        ds.SeriesInstanceUID = series_instance_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.StudyDescription = "CT CHEST LUNG NODULE FOLLOW-UP"
        ds.PatientName = patient.patient_name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.PatientSex = patient.sex
        ds.PatientAge = patient.age
        ds.AccessionNumber = patient.accession_number
        ds.StudyID = patient.study_id
        for tag in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(ds, tag, patient.study_date)
        for tag in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
            setattr(ds, tag, patient.study_time)
        ds.ReferringPhysicianName = patient.referring_physician
        ds.PerformingPhysicianName = patient.performing_physician
        ds.OperatorsName = patient.operator
        ds.InstitutionName = patient.institution
        ds.InstitutionAddress = patient.institution_address
        ds.StationName = patient.station_name
        ds.OtherPatientIDsSequence = other_ids
        ds.RequestAttributesSequence = request
        ds.BurnedInAnnotation = "NO"
        ds.Manufacturer = scanner.manufacturer
        ds.ManufacturerModelName = scanner.model_name
        ds.SoftwareVersions = scanner.software_version
        ds.ConvolutionKernel = scanner.convolution_kernel
        ds.KVP = scanner.kvp
        block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
        block.add_new(0x10, "LO", patient.private_note[:64])
        # Geometry: axial slices, feet-first slice order irrelevant; z grows with k.
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        z_mm = phantom.origin_mm[0] + k * phantom.spacing_mm[0]
        z_mm = round(z_mm, 4)  # DS holds at most 16 characters
        ds.ImagePositionPatient = [
            round(phantom.origin_mm[2], 4),
            round(phantom.origin_mm[1], 4),
            z_mm,
        ]
        ds.SliceLocation = z_mm
        ds.PixelSpacing = [phantom.spacing_mm[1], phantom.spacing_mm[2]]
        ds.SliceThickness = phantom.spacing_mm[0]
        ds.SpacingBetweenSlices = phantom.spacing_mm[0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        for keyword in ("PixelPaddingValue", "Laterality"):
            if keyword in ds:
                delattr(ds, keyword)
        stored = (phantom.hu[k].astype(np.int32) - int(RESCALE_INTERCEPT)).astype(np.uint16)
        ds.add_new(0x7FE00010, "OW", stored.tobytes())
        yield ds


def write_ct_study(
    out_dir: Path,
    seed: int = 7,
    shape: tuple[int, int, int] = (200, 512, 512),
    spacing_mm: tuple[float, float, float] = (1.5, 0.7, 0.7),
    patient: FakePatient | None = None,
    nodule_count: int | None = None,
    scanner: ScannerProfile | None = None,
) -> SyntheticStudy:
    """Write a whole synthetic CT study as DICOM Part 10 files and return it with its truth."""
    out_dir.mkdir(parents=True, exist_ok=True)
    patient = patient or FakePatient()
    scanner = scanner or ScannerProfile()
    phantom = make_chest_phantom(
        seed,
        shape=shape,
        spacing_mm=spacing_mm,
        nodule_count=nodule_count,
        noise_hu=scanner.noise_hu,
    )
    study = SyntheticStudy(
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(),
        paths=[],
        patient=patient,
        phantom=phantom,
    )
    for ds in iter_ct_slices(
        phantom,
        patient,
        study.study_instance_uid,
        study.series_instance_uid,
        study.frame_of_reference_uid,
        scanner=scanner,
    ):
        path = out_dir / f"CT{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        study.paths.append(path)
        study.sop_instance_uids.append(str(ds.SOPInstanceUID))
    return study


def write_truth_segmentation(
    study: SyntheticStudy, path: Path, mask: npt.NDArray[np.bool_] | None = None
) -> Path:
    """The study's nodules (or `mask`) as a BINARY DICOM SEG, as an annotator exports one from
    3D Slicer or MONAI Label: one manual segment on the CT's own frames."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.paths]
    labels = study.phantom.nodule_mask > 0 if mask is None else mask
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Annotator",
        manufacturer_model_name="3D Slicer",
        software_versions="5.8",
        device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
