"""Conformance corpus: real DICOM nobody here wrote, and every compressed syntax, through
intake (C-STORE SCP) -> de-identification -> preprocessing. Each file ends as a volume or as a
refusal with a reason; the counts by outcome are printed (pytest -s) for the issue note."""

from __future__ import annotations

import io
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE

from edge_forwarder.deid import Deidentifier
from edge_forwarder.intake import Intake
from edge_forwarder.intake.settings import RoutingRule
from edge_forwarder.transport.packaging import pack_series
from functions.preprocess.series import check_deidentified, read_series_tar
from imaging_ai.errors import PipelineError
from imaging_ai.intended_use import screen_headers
from imaging_ai.model_card import IntendedUse, Range
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from imaging_ai.volume import GeometryError, build_volume

SCP_AE_TITLE = "EDGE_FWD"
# Any CT or MR volume: the corpus checks that files become volumes, not one model's scope.
ANY_VOLUME = IntendedUse(
    modality=["CT", "MR"],
    sop_class_uids=[
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.840.10008.5.1.4.1.1.4.1",
    ],
    slice_thickness_mm=Range(min=0.0, max=50.0),
    pixel_spacing_mm=Range(min=0.01, max=10.0),
    min_slices=2,
)


def corpus_files() -> list[Path]:
    """Every CT/MR file with pixel data in pydicom's own test files and in pydicom-data."""
    import data_store  # pydicom-data's package: the files pydicom would otherwise download

    folders = [
        Path(pydicom.data.__file__).parent / "test_files",
        Path(data_store.__file__).parent / "data",
    ]
    found = []
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(ds.get("Modality", "")) in ("CT", "MR") and _has_pixels(path):
            found.append(path)
    return found


def _has_pixels(path: Path) -> bool:
    try:
        return "PixelData" in pydicom.dcmread(path, defer_size=64)
    except Exception:
        return True  # unreadable beyond the header: the pipeline must say so


@dataclass
class Outcome:
    volume_shape: tuple[int, int, int] | None = None
    voxels: np.ndarray[Any, Any] | None = None
    refusal: str = ""

    @property
    def label(self) -> str:
        return "volume" if self.volume_shape else f"refused: {self.refusal}"


def series_units(files: list[Path]) -> list[list[Path]]:
    """The corpus as a site would send it: files grouped by their series, except that another
    encoding of an instance already in a group (same SOP Instance UID, other syntax) starts a
    group of its own. Unreadable files are groups of one."""
    units: list[list[Path]] = []
    by_series: dict[str, list[tuple[set[str], list[Path]]]] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            series, sop = str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
        except Exception:
            units.append([path])
            continue
        groups = by_series.setdefault(series, [])
        group = next((g for g in groups if sop not in g[0]), None)
        if group is None:
            group = (set(), [])
            groups.append(group)
            units.append(group[1])
        group[0].add(sop)
        group[1].append(path)
    return units


def _as_sent(unit: list[Path]) -> dict[str, Dataset] | str:
    """A unit's files as one study (fresh UIDs: corpus files share study and instance UIDs
    across encodings), pixel data and transfer syntax untouched; or why it cannot be read."""
    study, series = generate_uid(), generate_uid()
    datasets = {}
    for path in unit:
        try:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            datasets[path.name] = _round_trip(ds)
        except Exception as error:
            return f"unreadable ({type(error).__name__})"
    return datasets


def _c_store(port: int, datasets: list[Dataset]) -> list[int]:
    """One association, a context per (SOP class, transfer syntax) as a modality proposes."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE_TITLE)
    assert assoc.is_established
    statuses = []
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # no accepted context for it
                statuses.append(-1)
                continue
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def _pseudo_ids(result: Any) -> tuple[str, str, str]:
    pseudo = result.pseudo
    return pseudo.study_instance_uid, pseudo.series_instance_uid, pseudo.sop_instance_uid


def run_through_pipeline(
    intake: Intake, items: dict[str, Dataset], tmp_path: Path
) -> dict[str, Outcome]:
    """C-STORE every item -> spool -> de-id + tar -> preprocess; an outcome per item (the
    items of one study share theirs)."""
    names = list(items)
    statuses = _c_store(intake.port, [items[name] for name in names])
    outcomes: dict[str, Outcome] = {}
    names_by_study: dict[str, list[str]] = {}
    for name, status in zip(names, statuses, strict=True):
        if status != 0:
            outcomes[name] = Outcome(refusal=f"intake answered status 0x{status & 0xFFFF:04X}")
        else:
            names_by_study.setdefault(str(items[name].StudyInstanceUID), []).append(name)
    deidentifier = Deidentifier(b"s" * 32)
    for study in intake.poll_completed(now=time.time() + 3600):
        ((_, paths),) = study.series.items()
        study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        tar = tmp_path / f"{study.study_key}.tar"
        reasons: list[str] = []
        packed = pack_series(
            paths,
            deidentifier.deidentify_bytes,
            _pseudo_ids,
            tar,
            on_quarantined=lambda error, into=reasons: into.append(str(error)),
        )
        if packed.quarantined:
            outcome = Outcome(refusal=f"kept on site by de-identification: {reasons[0]}")
        else:
            outcome = preprocess(tar, packed.pseudo_series_uid)
        for name in names_by_study[study_uid]:
            outcomes[name] = outcome
    for name in names:
        outcomes.setdefault(name, Outcome(refusal="not routed"))
    return outcomes


def preprocess(tar: Path, pseudo_series_uid: str) -> Outcome:
    """What the preprocess Lambda does with a series tar, up to the volume."""
    try:
        with tar.open("rb") as stream:
            datasets = read_series_tar(stream)
        check_deidentified(datasets)
        skip = screen_headers(pseudo_series_uid, datasets, ANY_VOLUME)
        if skip is not None:
            return Outcome(refusal=f"skipped: {skip}")
        volume = build_volume(datasets, max_tilt_deg=30.0, max_gap_mm=10.0)
    except GeometryError as error:
        return Outcome(refusal=f"no volume: {error}")
    except PipelineError as error:
        return Outcome(refusal=f"refused: {error}")
    return Outcome(volume_shape=volume.geometry.shape, voxels=volume.voxels)


@pytest.fixture
def intake(start_intake: Callable[..., Intake]) -> Intake:
    return start_intake(
        quiet_seconds_study=0.0,
        quiet_seconds_series=0.0,
        routing=[RoutingRule(model="any-volume", modality=["CT", "MR"])],
    )


def test_every_ct_and_mr_file_of_the_public_corpora_ends_as_a_volume_or_a_reason(
    intake: Intake, tmp_path: Path
) -> None:
    # Given every CT/MR image file of pydicom's test files and pydicom-data, by series
    files = corpus_files()
    assert len(files) >= 25
    units = series_units(files)
    items: dict[str, Dataset] = {}
    outcomes: dict[str, Outcome] = {}
    for unit in units:
        sent = _as_sent(unit)
        if isinstance(sent, str):
            outcomes.update({path.name: Outcome(refusal=sent) for path in unit})
        else:
            items.update(sent)

    # When each series goes through intake, de-identification and preprocessing
    outcomes.update(run_through_pipeline(intake, items, tmp_path))

    # Then each file ends in a volume or a refusal that says why
    assert sorted(outcomes) == sorted(path.name for path in files)
    assert all(o.volume_shape or o.refusal.strip() for o in outcomes.values())
    by_unit = [outcomes[unit[0].name] for unit in units]
    print(f"\nconformance corpus: {len(files)} files in {len(units)} series")
    for label, count in sorted(Counter(o.label for o in by_unit).items()):
        print(f"  {count:3d} series  {label}")
    for unit, outcome in zip(units, by_unit, strict=True):
        names = ", ".join(path.name for path in unit)
        print(f"      [{names}]: {outcome.label} {outcome.volume_shape or ''}")
    # And the enhanced CT with per-frame functional groups is a volume
    assert outcomes["eCT_Supplemental.dcm"].volume_shape is not None
    # And the stripped enhanced MR (no functional groups) is refused alike in every syntax
    for variant in (
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_big_endian.dcm",
    ):
        assert outcomes[variant].refusal == (
            "no volume: a multi-frame image lacks per-frame functional groups"
        )
    # And a single slice is refused as such, not crashed on
    assert outcomes["CT_small.dcm"].refusal == "no volume: a volume needs at least 2 slices"


def _dcmtk(tool: str, *args: str, source: Path, target: Path) -> None:
    subprocess.run([tool, *args, str(source), str(target)], check=True, capture_output=True)


def _syntax_variants(slices: list[Dataset], tmp_path: Path) -> dict[str, list[Dataset]]:
    """The series in every compressed syntax a site sends: DCMTK encodes JPEG, JPEG-LS and
    RLE as modalities do; pydicom encodes JPEG 2000 (OpenJPEG) and deflate."""
    plain = tmp_path / "plain"
    plain.mkdir()
    paths = []
    for ds in slices:
        path = plain / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    dcmtk = {
        "jpeg-baseline": ("dcmcjpeg", "+eb"),  # 8-bit lossy (process 1)
        "jpeg-lossless": ("dcmcjpeg", "+el"),  # process 14
        "jpeg-lossless-sv1": ("dcmcjpeg", "+e1"),  # process 14, selection value 1
        "jpeg-ls-lossless": ("dcmcjpls", "+el"),
        "rle": ("dcmcrle",),
    }
    variants: dict[str, list[Dataset]] = {}
    for name, (tool, *args) in dcmtk.items():
        folder = tmp_path / name
        folder.mkdir()
        for path in paths:
            _dcmtk(tool, *args, source=path, target=folder / path.name)
        variants[name] = [pydicom.dcmread(folder / path.name) for path in paths]
    variants["jpeg-2000-lossless"] = []
    variants["deflate"] = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        variants["jpeg-2000-lossless"].append(_round_trip(ds))
        deflated = pydicom.dcmread(path)
        deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        variants["deflate"].append(_round_trip(deflated))
    return variants


def _round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_every_compressed_syntax_goes_end_to_end_to_the_same_volume(
    intake: Intake, tmp_path: Path
) -> None:
    # Given one 8-bit CT series (so that JPEG baseline applies) in every compressed syntax,
    # each variant sent as its own study
    phantom = make_chest_phantom(seed=8, shape=(6, 64, 64), spacing_mm=(2.5, 5.0, 5.0))
    base = list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )
    for ds in base:
        # HU = 8 x stored - 1024: 8 bits span -1024..1016 HU in 8 HU steps.
        stored = np.clip((ds.pixel_array.astype(np.int32) // 8), 0, 255).astype(np.uint8)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.RescaleSlope = 8
        ds.PixelData = stored.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    expected = build_volume([_round_trip(ds) for ds in base]).voxels
    variants = _syntax_variants(base, tmp_path)
    items: dict[str, Dataset] = {}
    for name, slices in variants.items():
        study_uid, series_uid = generate_uid(), generate_uid()
        for index, ds in enumerate(slices):
            # Each variant its own study of its own instances, as if sent by another modality.
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            items[f"{name}/{index}"] = ds
    assert {str(items[f"{n}/0"].file_meta.TransferSyntaxUID) for n in variants} == {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.1.99",
    }

    # When each goes through intake, de-identification and preprocessing
    outcomes = run_through_pipeline(intake, items, tmp_path)

    # Then each syntax gives the series' volume: exactly when lossless, close for baseline
    for name in variants:
        outcome = outcomes[f"{name}/0"]
        assert outcome.voxels is not None, f"{name}: {outcome.label}"
        if name == "jpeg-baseline":
            # Lossy at dcmcjpeg's default quality: within 3 stored steps (24 HU) on the noisy
            # phantom (measured median 15 HU), and the same image.
            assert float(np.median(np.abs(outcome.voxels - expected))) <= 24.0
            assert np.corrcoef(outcome.voxels.ravel(), expected.ravel())[0, 1] > 0.99
        else:
            np.testing.assert_array_equal(outcome.voxels, expected)
