"""Test-side stand-ins for the edge forwarder and the inference endpoint, for the function tests."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from imaging_ai import envelope
from imaging_ai.async_inference import AsyncInferenceNotification
from imaging_ai.aws import client
from imaging_ai.contracts import (
    DeidRecord,
    Manifest,
    ManifestInstance,
    ManifestSeries,
    ModelRun,
    Priority,
    Stage,
    encryption_context,
    inference_output_prefix,
    manifest_key,
    series_key,
)
from imaging_ai.model_card import Code, Label, ModelCard, load_model_card
from imaging_ai.model_io import (
    ModelInputMeta,
    ModelOutputMeta,
    pack_model_output,
    unpack_model_input,
)
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.state import RunKey, RunState, RunStateStore
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from tests.model_io_support import finding, output_meta

SITE = "site-a"
SHIPPED_MODEL_DIR = DEMO_MODEL_DIR  # the shipped demo model
NODULE = Code(scheme="SCT", value="27925004", meaning="Nodule")


# SCT 49755003 and SCT 39607008 as the demo card spells them: category, finding site.
LUNG_MEANINGS = ("Morphologically Abnormal Structure", "Lung")


def lung_label(
    value: int, name: str, finding: Code, meanings: tuple[str, str] = LUNG_MEANINGS
) -> Label:
    """A label for a lesion of the lung (SCT 49755003 category, SCT 39607008 site)."""
    category_meaning, site_meaning = meanings
    return Label(
        value=value,
        name=name,
        category=Code(scheme="SCT", value="49755003", meaning=category_meaning),
        type=finding,
        finding_site=Code(scheme="SCT", value="39607008", meaning=site_meaning),
    )


def model_card(name: str = "lung-nodule-demo") -> ModelCard:
    return ModelCard(
        name=name,
        version="0.1.0",
        description="test model",
        weights_file="model.ts",
        weights_sha256="0" * 64,
        labels=[
            lung_label(1, "nodule", NODULE, ("Morphologically Altered Structure", "Lung structure"))
        ],
        input_spacing_mm=(2.0, 1.0, 1.0),
        intensity_window_hu=(-1000.0, 400.0),
        roi_size=(16, 64, 64),
    )


def chest_model_card(name: str = "lung-nodule-chest-only") -> ModelCard:
    """The test card with the shipped model's intended use (chest CT, lung-density check)."""
    shipped = load_model_card(SHIPPED_MODEL_DIR, verify_weights=False)
    return model_card(name).model_copy(update={"intended_use": shipped.intended_use})


# Where the synthetic generator puts fake PHI (the patient's, the staff's, the site's).
_PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "OtherPatientIDsSequence",
    "RequestAttributesSequence",
)


def strip_phi(
    ds: Dataset, patient_name: str = "PSEUDO^0001", patient_id: str = "PSEUDO-0001"
) -> None:
    """The fake PHI out and pseudonyms in: a stand-in for the edge's de-identification."""
    for keyword in _PHI_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    # Type 2 attributes stay, empty (Annex E action Z), as the real de-identifier leaves them.
    ds.PatientBirthDate = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.remove_private_tags()


def mark_deidentified(ds: Dataset) -> None:
    """The markers the cloud checks before it uses an instance (Basic Profile, DCM 113100)."""
    ds.PatientIdentityRemoved = "YES"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])


def deidentify_trivially(
    ds: Dataset, study_uid: str, series_uid: str, markers: bool = True
) -> None:
    """Just enough de-identification for a cloud-side test: pseudonyms, no PHI, the markers."""
    strip_phi(ds)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if markers:
        mark_deidentified(ds)


@dataclass
class UploadedStudy:
    """A study as the forwarder left it in the bucket; its runs are the manifest's."""

    manifest: Manifest
    synthetic: SyntheticStudy
    series_uid: str
    datasets: list[Dataset]

    @property
    def pseudo_study_uid(self) -> str:
        return self.manifest.pseudo_study_uid

    @property
    def run_id(self) -> str:
        """The first (in most tests the only) model run of the upload."""
        return self.manifest.runs[0].run_id

    @property
    def model_name(self) -> str:
        return self.manifest.runs[0].model_name


def make_series(
    tmp_path: Path,
    shape: tuple[int, int, int] = (24, 128, 128),
    markers: bool = True,
    seed: int = 3,
    spacing_mm: tuple[float, float, float] = (2.5, 1.2, 1.2),
) -> tuple[SyntheticStudy, str, str, list[Dataset]]:
    synthetic = write_ct_study(
        tmp_path / "dicom", seed=seed, shape=shape, spacing_mm=spacing_mm, nodule_count=1
    )
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = []
    for path in synthetic.paths:
        ds = pydicom.dcmread(path)
        deidentify_trivially(ds, study_uid, series_uid, markers=markers)
        datasets.append(ds)
    return synthetic, study_uid, series_uid, datasets


def series_tar(datasets: list[Dataset], shuffle_seed: int = 1) -> bytes:
    order = np.random.default_rng(shuffle_seed).permutation(len(datasets))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index in order:
            part = io.BytesIO()
            datasets[index].save_as(part, enforce_file_format=True)
            info = tarfile.TarInfo(name=f"{datasets[index].SOPInstanceUID}.dcm")
            info.size = part.tell()
            part.seek(0)
            archive.addfile(info, part)
    return buffer.getvalue()


def upload_study(
    bucket: str,
    key_arn: str,
    tmp_path: Path,
    run_id: str = "run-0001",
    model_name: str = "lung-nodule-demo",
    markers: bool = True,
    tamper: bool = False,
    shape: tuple[int, int, int] = (24, 128, 128),
    prepared: tuple[SyntheticStudy, str, str, list[Dataset]] | None = None,
    spacing_mm: tuple[float, float, float] = (2.5, 1.2, 1.2),
    runs: list[ModelRun] | None = None,
    priority: Priority = Priority.ROUTINE,
) -> UploadedStudy:
    """What the edge forwarder does: series tar, encrypt, upload, manifest LAST.

    The manifest names `runs` (one per model), or one run `run_id` of `model_name`.
    """
    synthetic, study_uid, series_uid, datasets = prepared or make_series(
        tmp_path, shape, markers, spacing_mm=spacing_mm
    )
    entry = _put_series(bucket, key_arn, study_uid, series_uid, datasets, tamper=tamper)
    runs = runs or [ModelRun(run_id=run_id, model_name=model_name)]
    manifest = _put_manifest(bucket, key_arn, study_uid, [entry], runs, priority)
    return UploadedStudy(manifest, synthetic, series_uid, datasets)


def upload_series(
    bucket: str,
    key_arn: str,
    series: list[list[Dataset]],
    run_id: str = "run-0001",
    model_name: str = "lung-nodule-demo",
) -> Manifest:
    """Several series of one study, de-identified trivially, uploaded with the manifest LAST."""
    study_uid = generate_uid()
    entries = []
    for datasets in series:
        series_uid = generate_uid()
        for ds in datasets:
            deidentify_trivially(ds, study_uid, series_uid)
        entries.append(_put_series(bucket, key_arn, study_uid, series_uid, datasets))
    runs = [ModelRun(run_id=run_id, model_name=model_name)]
    return _put_manifest(bucket, key_arn, study_uid, entries, runs)


def _put_series(
    bucket: str,
    key_arn: str,
    study_uid: str,
    series_uid: str,
    datasets: list[Dataset],
    tamper: bool = False,
) -> ManifestSeries:
    """Upload one series as the forwarder does (a tar, encrypted); its manifest entry.

    `tamper`: the entry's SHA-256 does not match the object (a corrupted upload)."""
    ciphertext = envelope.encrypt_bytes(
        series_tar(datasets), key_arn, encryption_context(SITE, study_uid)
    )
    key = series_key(SITE, study_uid, series_uid)
    client("s3").put_object(Bucket=bucket, Key=key, Body=ciphertext)
    return ManifestSeries(
        pseudo_series_uid=series_uid,
        modality=str(datasets[0].Modality),
        object_key=key,
        sha256=hashlib.sha256(ciphertext + (b"x" if tamper else b"")).hexdigest(),
        size_bytes=len(ciphertext),
        instances=[
            ManifestInstance(
                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID)
            )
            for ds in datasets
        ],
    )


def _put_manifest(
    bucket: str,
    key_arn: str,
    study_uid: str,
    series: list[ManifestSeries],
    runs: list[ModelRun],
    priority: Priority = Priority.ROUTINE,
) -> Manifest:
    """Write the study's manifest, encrypted: the commit marker, so always LAST."""
    manifest = Manifest(
        site=SITE,
        pseudo_study_uid=study_uid,
        runs=runs,
        series=series,
        deidentification=DeidRecord(table_edition="2026d", options=[], method_codes=["113100"]),
        forwarder_version="test",
        priority=priority,
    )
    client("s3").put_object(
        Bucket=bucket,
        Key=manifest_key(SITE, study_uid, priority),
        Body=envelope.encrypt_bytes(
            manifest.model_dump_json().encode(), key_arn, encryption_context(SITE, study_uid)
        ),
    )
    return manifest


def run_state(state_table: str, upload: UploadedStudy | Manifest) -> RunState | None:
    """The upload's (first) run as the state table holds it now (None: never recorded)."""
    run_id = upload.run_id if isinstance(upload, UploadedStudy) else upload.runs[0].run_id
    key = RunKey(SITE, upload.pseudo_study_uid, run_id)
    return RunStateStore(client("dynamodb"), state_table).get(key)


def run_stage(state_table: str, upload: UploadedStudy | Manifest) -> Stage | None:
    """The stage the upload's run is in now (None: never recorded)."""
    run = run_state(state_table, upload)
    return run.stage if run else None


def true_nodule_output(
    study: UploadedStudy, meta: ModelInputMeta
) -> tuple[npt.NDArray[np.uint8], ModelOutputMeta]:
    """What a perfect model answers for the study: its phantom's first nodule, as labels."""
    labels = study.synthetic.phantom.nodule_mask.astype(np.uint8)
    nodule = study.synthetic.phantom.nodules[0]
    centroid = meta.source_geometry.voxel_to_patient(
        tuple(float(v) for v in nodule.center_voxel)  # type: ignore[arg-type]
    )
    true_finding = finding(
        centroid,
        voxel_count=int(labels.sum()),
        volume_mm3=nodule.volume_mm3,
        longest_diameter_mm=nodule.diameter_mm,
    )
    return labels, output_meta(meta, [true_finding])


def emulate_inference(
    bucket: str, input_location: str, topic_arn: str, study: UploadedStudy, fail: str | None = None
) -> None:
    """What the async endpoint emulator does: read the input, write labels, publish to SNS."""
    input_key = input_location.split(f"s3://{bucket}/", 1)[1]
    s3 = client("s3")
    image, meta = unpack_model_input(s3.get_object(Bucket=bucket, Key=input_key)["Body"].read())
    assert image.dtype == np.float32 and float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    notification: dict[str, object] = {
        "awsRegion": "us-east-1",
        "eventTime": "2026-09-14T09:40:00.000Z",
        "receivedTime": "2026-09-14T09:39:00.000Z",
        "invocationStatus": "Failed" if fail else "Completed",
        "requestParameters": {
            "contentType": "application/x-npz",
            "endpointName": "imaging-ai-demo",
            "inputLocation": input_location,
        },
        "inferenceId": f"run-{meta.run_id}",
    }
    if fail:
        notification["failureReason"] = fail
        notification["responseParameters"] = {"failureLocation": f"s3://{bucket}/failure.json"}
    else:
        labels, output = true_nodule_output(study, meta)
        out_key = inference_output_prefix(meta.site, meta.pseudo_study_uid, meta.run_id) + "out.npz"
        s3.put_object(Bucket=bucket, Key=out_key, Body=pack_model_output(labels, output))
        notification["responseParameters"] = {
            "contentType": "application/x-npz",
            "outputLocation": f"s3://{bucket}/{out_key}",
        }
    AsyncInferenceNotification.model_validate(notification)
    import json

    client("sns").publish(TopicArn=topic_arn, Message=json.dumps(notification))
