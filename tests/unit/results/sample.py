"""A small de-identified synthetic CT run (headers, label map, findings, card) for results tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from imaging_ai.model_card import Code, ModelCard
from imaging_ai.model_io import ModelOutputMeta
from imaging_ai.synthetic import write_ct_study
from tests.functions_support import lung_label, mark_deidentified, strip_phi
from tests.model_io_support import input_meta, output_meta

SHAPE = (24, 128, 128)
SPACING = (2.5, 2.5, 2.5)
PSEUDO_PATIENT_ID = "PSEUDO-7F3A9C"


@dataclass
class SampleRun:
    paths: list[Path]
    headers: list[pydicom.Dataset]
    labels: npt.NDArray[np.uint8]
    output: ModelOutputMeta
    card: ModelCard


def demo_card() -> ModelCard:
    return ModelCard(
        name="lung-nodule-demo",
        version="0.3.1",
        description="Demo nodule segmenter",
        weights_file="model.ts",
        weights_sha256="ab" * 32,
        labels=[
            lung_label(1, "Nodule", Code(scheme="SCT", value="27925004", meaning="Nodule")),
            lung_label(2, "Mass", Code(scheme="SCT", value="4147007", meaning="Mass")),
        ],
        input_spacing_mm=(1.5, 0.7, 0.7),
        intensity_window_hu=(-1000.0, 400.0),
        roi_size=(64, 96, 96),
    )


def _pseudonymize(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Stand-in for the edge de-identification: enough that no fake PHI reaches the results."""
    strip_phi(ds, patient_name="PSEUDO^7F3A9C", patient_id=PSEUDO_PATIENT_ID)
    mark_deidentified(ds)
    ds.DeidentificationMethod = "PS3.15 Annex E Basic Profile (test stand-in)"
    ds.TimezoneOffsetFromUTC = "+0000"
    return ds


def make_sample_run(tmp: Path, run_id: str = "run-1", nodules: int = 2) -> SampleRun:
    study = write_ct_study(
        tmp / "ct", seed=11, shape=SHAPE, spacing_mm=SPACING, nodule_count=nodules
    )
    headers = []
    for path in study.paths:
        ds = _pseudonymize(pydicom.dcmread(path))
        ds.save_as(path, enforce_file_format=True)  # pixels kept: the PACS test sends the CT
        del ds.PixelData
        headers.append(ds)
    mask = study.phantom.nodule_mask
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[mask > 0] = 1
    geometry = study.phantom.geometry()
    findings = study.phantom.truth_findings()
    card = demo_card()
    meta_in = input_meta(
        geometry,
        model_name=card.name,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers],
        pseudo_study_uid=str(headers[0].StudyInstanceUID),
        pseudo_series_uid=str(headers[0].SeriesInstanceUID),
        run_id=run_id,
    )
    output = output_meta(meta_in, findings, card, inference_seconds=1.0)
    return SampleRun(paths=study.paths, headers=headers, labels=labels, output=output, card=card)
