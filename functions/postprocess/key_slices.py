"""The de-identified pixels of a run's key slices, read back from the study's series upload.

Postprocessing otherwise sees only headers and the label map; the key images need the CT
pixels of a few slices. They are streamed out of the same encrypted, manifest-checked series
object preprocessing read, keeping only the wanted slices in memory.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pydicom
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from functions.common.adapters import StudyObjectStore
from functions.postprocess.results import stored_to_hu
from imaging_ai.contracts import Manifest, parse_manifest_key
from imaging_ai.errors import ContractError
from imaging_ai.volume import GeometryError, split_frames


def read_key_slices(
    store: StudyObjectStore,
    manifest_key: str,
    pseudo_series_uid: str,
    wanted: Mapping[tuple[str, int | None], int],
) -> dict[int, npt.NDArray[np.float32]]:
    """Rescaled pixels of the wanted slices: (SOP Instance UID, frame number or None for a
    single-frame image) -> slice index."""
    site, pseudo_study_uid = parse_manifest_key(manifest_key)
    try:
        manifest = Manifest.model_validate_json(
            store.read_encrypted(manifest_key, site, pseudo_study_uid)
        )
    except ValidationError:
        raise ContractError("manifest does not match the manifest schema") from None
    series = next((s for s in manifest.series if s.pseudo_series_uid == pseudo_series_uid), None)
    if series is None:
        raise ContractError("the model's input series is not in the study's manifest")
    instances = {uid for uid, _ in wanted}
    found: dict[int, npt.NDArray[np.float32]] = {}
    with store.open_encrypted(
        series.object_key, site, pseudo_study_uid, series.sha256, series.size_bytes
    ) as plaintext:
        try:
            with tarfile.open(fileobj=plaintext, mode="r|") as archive:
                for member in archive:
                    extracted = archive.extractfile(member) if member.isfile() else None
                    if extracted is None:
                        continue
                    with extracted:
                        raw = extracted.read()
                    # Only the UID first: most slices are not key slices, and decoding
                    # their pixels would cost what the whole series costs.
                    head = pydicom.dcmread(io.BytesIO(raw), specific_tags=["SOPInstanceUID"])
                    uid = str(head.get("SOPInstanceUID", ""))
                    if uid not in instances:
                        continue
                    # An enhanced multi-frame image: its frames, as preprocess split them.
                    for frame in split_frames([pydicom.dcmread(io.BytesIO(raw))]):
                        number = frame.get("ReferencedFrameNumber")
                        index = wanted.get((uid, None if number is None else int(number)))
                        if index is not None:
                            found[index] = stored_to_hu(frame)
        except (tarfile.TarError, InvalidDicomError, EOFError, GeometryError) as error:
            raise ContractError(
                f"series object cannot give the key slices ({type(error).__name__})"
            ) from None
    # Only now is the series authenticated end to end (open_encrypted checked its hash).
    if len(found) != len(set(wanted.values())):
        raise ContractError("a key slice is missing from the series upload")
    return found


def key_slice_ids(header: Dataset) -> tuple[str, int | None]:
    """How `read_key_slices` finds a source header's slice: its instance and frame number."""
    number = header.get("ReferencedFrameNumber")
    return str(header.SOPInstanceUID), None if number is None else int(number)
