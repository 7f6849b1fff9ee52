"""Candidate series for a model, unpack a series tar, and refuse what is not de-identified."""

from __future__ import annotations

import io
import tarfile
from typing import IO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from functions.common.source_headers import header_bytes
from imaging_ai.contracts import Manifest, ManifestSeries, series_key
from imaging_ai.errors import ContractError, IntegrityError, PipelineError
from imaging_ai.intended_use import Skip, not_analyzed_reason, screen_manifest_series
from imaging_ai.model_card import IntendedUse


class RefusedStudy(ContractError):
    """The study must not be processed; the reason goes to the site (no values, no PHI)."""


class NotAnalyzed(PipelineError):
    """No series of the study is within the model's intended use: not an error, the run ends
    NOT_ANALYZED. `skips` says why each series was left out."""

    def __init__(self, skips: list[Skip]) -> None:
        super().__init__(not_analyzed_reason(skips))
        self.skips = skips


def candidate_series(
    manifest: Manifest, use: IntendedUse
) -> tuple[list[ManifestSeries], list[Skip]]:
    """Series worth reading, best first (most instances), and those the manifest rules out."""
    candidates: list[ManifestSeries] = []
    skips: list[Skip] = []
    for series in manifest.series:
        skip = screen_manifest_series(series, use)
        if skip is not None:
            skips.append(skip)
            continue
        expected_key = series_key(
            manifest.site, manifest.pseudo_study_uid, series.pseudo_series_uid
        )
        if series.object_key != expected_key:
            raise IntegrityError("manifest names a series object outside its study's prefix")
        candidates.append(series)
    candidates.sort(key=lambda series: len(series.instances), reverse=True)
    return candidates, skips


def read_series_tar(
    stream: IO[bytes], header_bytes_by_uid: dict[str, bytes] | None = None
) -> list[Dataset]:
    """Every DICOM file of a series tar, in archive order, read as a stream (mode "r|"): only
    the current member is held besides the datasets already parsed.

    `header_bytes_by_uid`, when given, receives each file's bytes before its pixel data, by
    SOP Instance UID (the source headers postprocess reads).
    """
    datasets: list[Dataset] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                extracted = archive.extractfile(member)
                if extracted is None:
                    continue
                with extracted:
                    # A streamed member cannot seek back, which pydicom's reader may do.
                    file_bytes = extracted.read()
                    dataset = pydicom.dcmread(io.BytesIO(file_bytes))
                if header_bytes_by_uid is not None:
                    uid = str(dataset.get("SOPInstanceUID", ""))
                    header_bytes_by_uid[uid] = header_bytes(file_bytes, dataset)
                # pydicom keeps the source buffer on the dataset: the file's bytes would stay
                # alive beside the PixelData copied out of them (2x the series in memory).
                dataset.buffer = None
                datasets.append(dataset)
    except (tarfile.TarError, InvalidDicomError, EOFError) as error:
        raise RefusedStudy(
            f"series object is not a tar of DICOM files ({type(error).__name__})"
        ) from None
    return datasets


def check_deidentified(datasets: list[Dataset]) -> None:
    """Every instance must carry the PS3.15 markers the edge forwarder writes."""
    for ds in datasets:
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            raise RefusedStudy("an instance lacks PatientIdentityRemoved=YES")
        if not ds.get("DeidentificationMethodCodeSequence"):
            raise RefusedStudy("an instance lacks DeidentificationMethodCodeSequence")


def check_matches_manifest(
    datasets: list[Dataset], manifest: Manifest, series: ManifestSeries
) -> None:
    expected = {instance.sop_instance_uid for instance in series.instances}
    found = {str(ds.get("SOPInstanceUID", "")) for ds in datasets}
    if found != expected or len(datasets) != len(expected):
        raise IntegrityError("series content does not match the manifest's instance list")
    for ds in datasets:
        if str(ds.get("SeriesInstanceUID", "")) != series.pseudo_series_uid:
            raise IntegrityError("an instance belongs to another series than the manifest says")
        if str(ds.get("StudyInstanceUID", "")) != manifest.pseudo_study_uid:
            raise IntegrityError("an instance belongs to another study than the manifest says")
