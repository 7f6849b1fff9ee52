"""Model I/O payloads: any np.load reads them; the label map is deflated, the image stored."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from imaging_ai.model_io import (
    VolumeGeometry,
    pack_model_input,
    pack_model_output,
    unpack_model_input,
    unpack_model_output,
)
from tests.model_io_support import input_meta, output_meta

GEOMETRY = VolumeGeometry(shape=(8, 32, 32), spacing_mm=(1.5, 1.5, 1.5), origin_mm=(0, 0, 0))
META = input_meta(GEOMETRY, sop_instance_uids=[f"1.2.3.4.{k}" for k in range(8)])


def test_model_input_round_trips_stored_and_numpy_reads_it() -> None:
    # Given a model input image
    image = np.random.default_rng(0).random(GEOMETRY.shape, dtype=np.float32)
    # When it is packed
    payload = pack_model_input(image, META)
    # Then its members are stored (no deflate to wait for), np.load reads it, and it unpacks
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(io.BytesIO(payload)) as npz:
        assert np.array_equal(npz["image"], image)
    unpacked, meta = unpack_model_input(payload)
    assert np.array_equal(unpacked, image) and meta == META


def test_label_map_is_deflated_and_round_trips() -> None:
    # Given a label map that is mostly background, as every study's is
    labels = np.zeros(GEOMETRY.shape, dtype=np.uint8)
    labels[3:5, 10:14, 10:14] = 1
    output = output_meta(META, findings=[])
    # When it is packed
    payload = pack_model_output(labels, output)
    # Then it is a fraction of its bytes and comes back voxel for voxel
    assert len(payload) < labels.nbytes / 4
    unpacked, meta = unpack_model_output(payload)
    assert np.array_equal(unpacked, labels) and meta == output
