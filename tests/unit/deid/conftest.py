"""Small synthetic CT instances with the generator's fake PHI, built in memory."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge_forwarder.deid import Deidentifier
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom

SECRET = b"site-secret-for-tests-0123456789"


@pytest.fixture(scope="session")
def ct_slices() -> list[Dataset]:
    phantom = make_chest_phantom(3, shape=(3, 32, 32), spacing_mm=(2.0, 10.0, 10.0))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    return list(iter_ct_slices(phantom, FakePatient(), study, series, frame))


@pytest.fixture
def ct(ct_slices: list[Dataset]) -> Dataset:
    return ct_slices[0]


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def deidentifier() -> Deidentifier:
    return Deidentifier(SECRET)
