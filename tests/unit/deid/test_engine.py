"""De-identification behaviour: no PHI out, stable pseudonyms, options, sequences, quarantine."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from edge_forwarder.deid import Deidentifier, DeidError, DeidOptions, QuarantineReason
from imaging_ai.synthetic import FakePatient
from tests.unit.deid.conftest import SECRET, to_bytes


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_no_fake_phi_or_original_uid_survives(ct: Dataset, deidentifier: Deidentifier) -> None:
    # Given a CT slice carrying every fake identifier the generator writes
    original_uids = [ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID,
                     ct.FrameOfReferenceUID]  # fmt: skip
    # When it is de-identified
    result = deidentifier.deidentify(ct)
    # Then no identifier, name part or original UID appears anywhere in the output bytes
    for value in [*FakePatient().phi_values(), *original_uids]:
        assert value.encode() not in result.dataset_bytes, value
    out = _read(result.dataset_bytes)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.StudyInstanceUID == result.pseudo.study_instance_uid
    assert out.PatientID == result.pseudo.patient_id
    # and the name is that pseudonym as an explicit two-component PN (family^given)
    assert str(out.PatientName) == result.pseudo.patient_name == f"{out.PatientID}^"
    assert (out.PatientName.family_name, out.PatientName.given_name) == (out.PatientID, "")


def test_patient_name_pseudonym_is_deterministic_and_a_valid_person_name(
    ct: Dataset, deidentifier: Deidentifier
) -> None:
    from highdicom.valuerep import check_person_name

    # Given the same patient de-identified twice, through both entry points
    first = _read(deidentifier.deidentify(ct).dataset_bytes).PatientName
    again = _read(deidentifier.deidentify_bytes(to_bytes(ct)).dataset_bytes).PatientName
    # Then the name is the same both times and highdicom takes it as a person name
    assert str(first) == str(again)
    check_person_name(first)


def test_pixel_data_passes_through_byte_for_byte(ct: Dataset, deidentifier: Deidentifier) -> None:
    result = deidentifier.deidentify_bytes(to_bytes(ct))
    assert _read(result.dataset_bytes).PixelData == ct.PixelData


def test_input_dataset_is_not_changed(ct: Dataset, deidentifier: Deidentifier) -> None:
    before = copy.deepcopy(ct)
    deidentifier.deidentify(ct)
    assert ct == before and ct.file_meta == before.file_meta


def test_pseudonyms_are_deterministic_per_site_secret(ct: Dataset) -> None:
    # Given the same instance de-identified twice with one secret and once with another
    first = Deidentifier(SECRET).deidentify(ct)
    again = Deidentifier(SECRET).deidentify(ct)
    other = Deidentifier(b"another-site-secret-0123456789ab").deidentify(ct)
    # Then the same secret gives identical bytes and the other secret other pseudonyms
    assert first.dataset_bytes == again.dataset_bytes
    assert other.pseudo.study_instance_uid != first.pseudo.study_instance_uid
    assert other.pseudo.patient_id != first.pseudo.patient_id
    assert first.pseudo.study_instance_uid.startswith("2.25.")
    assert len(first.pseudo.study_instance_uid) <= 64


def test_dates_shift_by_one_per_patient_offset(ct_slices: list[Dataset]) -> None:
    deidentifier = Deidentifier(SECRET)
    results = [deidentifier.deidentify(ds) for ds in ct_slices]
    shifts = {r.pseudo.date_shift_days for r in results}
    assert len(shifts) == 1 and -3650 <= shifts.pop() < 0
    out = _read(results[0].dataset_bytes)
    # 2026-09-14 shifted by the patient offset, for every date attribute alike
    assert out.StudyDate == out.SeriesDate == out.ContentDate == results[0].pseudo.study_date
    assert out.StudyDate != FakePatient().study_date
    assert out.StudyTime == FakePatient().study_time  # times stay: dates carry the shift


def test_private_tags_removed_unless_on_the_safe_allow_list(ct: Dataset) -> None:
    plain = _read(Deidentifier(SECRET).deidentify(ct).dataset_bytes)
    assert not [e for e in plain if e.tag.is_private]
    options = DeidOptions(
        retain_safe_private=True, safe_private_allow_list=(("GEMS_ACQU_01", 0x02),)
    )
    kept = _read(Deidentifier(SECRET, options).deidentify(ct).dataset_bytes)
    private = {e.tag for e in kept if e.tag.is_private}
    assert private == {0x00190010, 0x00191002}
    assert "113111" in [i.CodeValue for i in kept.DeidentificationMethodCodeSequence]


def test_options_change_what_is_kept(ct: Dataset) -> None:
    default = _read(Deidentifier(SECRET).deidentify(ct).dataset_bytes)
    strict = _read(
        Deidentifier(
            SECRET,
            DeidOptions(
                retain_patient_characteristics=False,
                retain_longitudinal_temporal_modified_dates=False,
                clean_descriptors=False,
            ),
        )
        .deidentify(ct)
        .dataset_bytes
    )
    device = _read(
        Deidentifier(SECRET, DeidOptions(retain_device_identity=True)).deidentify(ct).dataset_bytes
    )
    cleaned = _read(
        Deidentifier(SECRET, DeidOptions(clean_descriptors=True)).deidentify(ct).dataset_bytes
    )
    assert default.PatientSex == "F" and default.PatientAge == "067Y"
    assert strict.PatientSex == "" and "PatientAge" not in strict
    assert strict.StudyDate == "" and strict.SeriesDate == "19000101"  # Z, and X/D -> dummy
    # Descriptors: removed by default (Basic Profile), cleaned only when the option is on
    assert "SeriesDescription" not in strict and "SeriesDescription" not in default
    assert cleaned.SeriesDescription == "CHEST WITHOUT CONTRAST 1.5MM"
    assert default.StationName == "ANONYMIZED" and device.StationName == FakePatient().station_name


def test_clean_descriptors_keeps_only_vocabulary_terms(ct: Dataset) -> None:
    # Given a descriptor holding a name, an MRN and a phone number found nowhere else
    ct = copy.deepcopy(ct)
    ct.StudyDescription = "CT CHEST KOWALSKI ZOFIA MRN-99812-3 CALL 555-0199 5 mm"
    # When it is de-identified with the Clean Descriptors option
    options = DeidOptions(clean_descriptors=True)
    result = Deidentifier(SECRET, options).deidentify(ct)
    # Then only the imaging terms and the number with its unit remain
    assert _read(result.dataset_bytes).StudyDescription == "CT CHEST * 5 mm"
    for leak in (b"KOWALSKI", b"ZOFIA", b"99812", b"555-0199", b"0199"):
        assert leak not in result.dataset_bytes
    # and the option is named in the de-identification method codes
    codes = [i.CodeValue for i in _read(result.dataset_bytes).DeidentificationMethodCodeSequence]
    assert "113105" in codes
    assert "113105" not in [c for c in Deidentifier(SECRET).deidentify(ct).method_codes]


def test_nested_sequences_are_walked_and_references_stay_consistent(ct: Dataset) -> None:
    # Given a referenced-image sequence and a code sequence hiding a name two levels down
    ct = copy.deepcopy(ct)
    source = Dataset()
    source.ReferencedSOPClassUID = ct.SOPClassUID
    source.ReferencedSOPInstanceUID = ct.SOPInstanceUID
    ct.SourceImageSequence = Sequence([source])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    inner = Dataset()
    inner.PersonName = "DOE^JANE"
    inner.InstitutionName = FakePatient().institution
    code.ContentSequence = Sequence([inner])
    ct.AnatomicRegionSequence = Sequence([code])
    deidentifier = Deidentifier(SECRET)
    # When de-identified
    result = deidentifier.deidentify(ct)
    out = _read(result.dataset_bytes)
    # Then the reference points at the pseudonymised instance, the SOP class is kept, and
    # nothing identifying survives inside the nested items
    ref = out.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == result.pseudo.sop_instance_uid
    assert ref.ReferencedSOPClassUID == ct.SOPClassUID
    assert out.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert b"DOE^JANE" not in result.dataset_bytes
    assert FakePatient().institution.encode() not in result.dataset_bytes


def test_implicit_vr_input_is_rewritten_in_its_own_syntax(ct: Dataset) -> None:
    ct = copy.deepcopy(ct)
    ct.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    result = Deidentifier(SECRET).deidentify(ct)
    out = _read(result.dataset_bytes)
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert FakePatient().patient_name.encode() not in result.dataset_bytes
    assert out.PixelData == ct.PixelData


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, QuarantineReason.BURNED_IN_ANNOTATION),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, QuarantineReason.BURNED_IN_RISK_SOP_CLASS),
        ({"StudyInstanceUID": None}, QuarantineReason.MISSING_ATTRIBUTE),
    ],
)
def test_risky_or_incomplete_instances_are_quarantined_with_a_reason(
    ct: Dataset, change: dict[str, str | None], reason: QuarantineReason
) -> None:
    ct = copy.deepcopy(ct)
    for keyword, value in change.items():
        if value is None:
            delattr(ct, keyword)
        else:
            setattr(ct, keyword, value)
    with pytest.raises(DeidError) as raised:
        Deidentifier(SECRET).deidentify(ct)
    assert raised.value.reason is reason
    for value in FakePatient().phi_values():
        assert value not in str(raised.value)


def test_a_site_can_allow_a_checked_secondary_capture_class(ct: Dataset) -> None:
    ct = copy.deepcopy(ct)
    ct.SOPClassUID = SecondaryCaptureImageStorage
    options = DeidOptions(allowed_burned_in_risk_sop_classes=(SecondaryCaptureImageStorage,))
    assert (
        Deidentifier(SECRET, options).deidentify(ct).sop_class_uid == SecondaryCaptureImageStorage
    )


@pytest.mark.parametrize("cut", [10, 140, 300, 1200, -5])
def test_truncated_or_foreign_bytes_raise_undecodable(ct: Dataset, cut: int) -> None:
    data = to_bytes(ct)[:cut]
    with pytest.raises(DeidError) as raised:
        Deidentifier(SECRET).deidentify_bytes(data)
    assert raised.value.reason in (QuarantineReason.UNDECODABLE, QuarantineReason.MISSING_ATTRIBUTE)


@pytest.mark.parametrize(
    ("big_endian", "little_endian"),
    [("MR_small_bigendian.dcm", "MR_small.dcm"), ("liver_expb.dcm", "liver.dcm")],
)
def test_big_endian_input_is_rewritten_little_endian_with_the_same_pixels(
    big_endian: str, little_endian: str
) -> None:
    from pydicom.data import get_testdata_file

    # Given a retired explicit VR big endian file and its little endian twin
    source = get_testdata_file(big_endian)
    twin = pydicom.dcmread(get_testdata_file(little_endian))
    assert source is not None
    # When it is de-identified
    with open(source, "rb") as handle:
        result = Deidentifier(SECRET).deidentify_bytes(handle.read())
    out = _read(result.dataset_bytes)
    # Then it comes out explicit little endian, and the image is the same image
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (out.pixel_array == twin.pixel_array).all()
    assert out.Rows == twin.Rows and out.PatientID.startswith("ANON-")
