"""Key slices out of the series upload: single-frame slices and enhanced multi-frame frames."""

from __future__ import annotations

import copy
import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from functions.postprocess.key_slices import key_slice_ids, read_key_slices
from imaging_ai.contracts import DeidRecord, Manifest, ManifestSeries, manifest_key, series_key
from imaging_ai.errors import ContractError
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from imaging_ai.synthetic_series import enhanced_ct
from imaging_ai.volume import build_volume

SITE = "site-a"


class SeriesUpload:
    """The store as postprocess sees it, at its adapter boundary: one study's manifest and
    one series object (decrypted; the real store checks size, hash and encryption context)."""

    def __init__(self, datasets: list[Dataset]) -> None:
        self.study = str(datasets[0].StudyInstanceUID)
        self.series = str(datasets[0].SeriesInstanceUID)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for number, dataset in enumerate(datasets):
                part10 = io.BytesIO()
                dataset.save_as(part10, enforce_file_format=True)
                info = tarfile.TarInfo(f"{number:04d}.dcm")
                info.size = part10.tell()
                archive.addfile(info, io.BytesIO(part10.getvalue()))
        self.tar = buffer.getvalue()
        self.manifest = Manifest(
            site=SITE,
            pseudo_study_uid=self.study,
            run_id="run-1",
            model_name="lung-nodule-demo",
            series=[
                ManifestSeries(
                    pseudo_series_uid=self.series,
                    modality="CT",
                    object_key=series_key(SITE, self.study, self.series),
                    sha256="0" * 64,
                    size_bytes=len(self.tar),
                    instances=[],
                )
            ],
            deidentification=DeidRecord(table_edition="2026d", options=[], method_codes=[]),
            forwarder_version="test",
        )

    def read_encrypted(self, key: str, site: str, pseudo_study_uid: str) -> bytes:
        assert key == manifest_key(site, pseudo_study_uid)
        return self.manifest.model_dump_json().encode()

    @contextmanager
    def open_encrypted(self, key: str, *_: Any) -> Iterator[IO[bytes]]:
        assert key == self.manifest.series[0].object_key
        yield io.BytesIO(self.tar)


@pytest.fixture(scope="module")
def slices() -> list[Dataset]:
    phantom = make_chest_phantom(seed=3, shape=(12, 48, 48), spacing_mm=(2.0, 2.0, 2.0))
    return list(
        iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    )


@pytest.mark.parametrize("layout", ["single-frame", "enhanced multi-frame"])
def test_the_key_slices_are_the_volumes_own_voxels(slices: list[Dataset], layout: str) -> None:
    # Given a series uploaded as single-frame slices, or as one Enhanced CT instance
    fresh = copy.deepcopy(slices)  # building a volume may drop a dataset's pixel data
    uploaded = fresh if layout == "single-frame" else [enhanced_ct(fresh)]
    upload = SeriesUpload(uploaded)  # serialized here: build_volume may drop pixel data
    volume = build_volume(uploaded)
    # When two key slices are read back by their headers' instance (and frame) ids
    wanted = {key_slice_ids(volume.headers[k]): k for k in (3, 8)}
    found = read_key_slices(upload, manifest_key(SITE, upload.study), upload.series, wanted)  # type: ignore[arg-type]
    # Then they are exactly the volume's voxels there (the slices the label map was made on)
    assert sorted(found) == [3, 8]
    for k in (3, 8):
        np.testing.assert_array_equal(found[k], volume.voxels[k])


def test_a_key_slice_missing_from_the_upload_is_refused(slices: list[Dataset]) -> None:
    upload = SeriesUpload(slices[:5])
    wanted = {(str(slices[9].SOPInstanceUID), None): 9}
    with pytest.raises(ContractError, match="key slice is missing"):
        read_key_slices(upload, manifest_key(SITE, upload.study), upload.series, wanted)  # type: ignore[arg-type]
