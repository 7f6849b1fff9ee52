"""Preprocess memory on the whole path: S3 body → decrypt → tar → datasets → model input."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from functions.common.adapters import StudyObjectStore
from functions.preprocess.handler import service
from functions.preprocess.series import read_series_tar
from functions.preprocess.service import ManifestRef, PreprocessOutcome
from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import manifest_key
from tests.functions_support import SITE, upload_study
from tests.integration.functions.conftest import Stack


def test_preprocess_memory_stays_within_three_times_the_volume(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a committed study (series tar encrypted in S3), after one warm-up run so clients,
    # key providers and imports are in place as in a warm Lambda
    resources = stack.resources
    warm = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path / "warm")
    # at a typical CT resolution, finer than the model's grid (2.0, 1.0, 1.0 mm): the model
    # input is smaller than the volume, as for nearly every CT a lung model sees
    shape = (64, 256, 256)
    study = upload_study(
        resources.data_bucket,
        resources.kms_key_arn,
        tmp_path / "big",
        run_id="run-2",
        shape=shape,
        spacing_mm=(1.25, 0.7, 0.7),
    )
    preprocess = service()
    warm_key = manifest_key(SITE, warm.pseudo_study_uid)
    assert preprocess.handle(ManifestRef(resources.data_bucket, warm_key)) == {
        warm.run_id: PreprocessOutcome.SUBMITTED
    }
    volume_bytes = shape[0] * shape[1] * shape[2] * 4  # the float32 volume
    del study.datasets[:]  # the forwarder's copy is not the function's memory

    # When the series alone is read: S3 body → decrypt → tar stream → datasets
    store = StudyObjectStore(client("s3"), resources.data_bucket, resources.kms_key_arn)
    (series,) = study.manifest.series
    tracemalloc.start()
    with store.open_encrypted(
        series.object_key, SITE, study.pseudo_study_uid, series.sha256, series.size_bytes
    ) as plaintext:
        datasets = read_series_tar(plaintext)
    _, read_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then only the datasets (their int16 pixels) and a few 1 MiB frames were held on top:
    # never the encrypted tar, nor its plaintext (each as large as the pixels again)
    assert len(datasets) == shape[0]
    del datasets
    pixel_bytes = volume_bytes // 2
    print(f"reading: pixels + {(read_peak - pixel_bytes) / 2**20:.1f} MiB")
    assert read_peak - pixel_bytes <= 6 * envelope.FRAME_LENGTH, read_peak - pixel_bytes

    # When the function preprocesses it, from the S3 body to the model input in S3
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    outcome = preprocess.handle(
        ManifestRef(resources.data_bucket, manifest_key(SITE, study.pseudo_study_uid))
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Then the study was submitted and no more than 3x the volume was ever allocated
    assert outcome == {"run-2": PreprocessOutcome.SUBMITTED}
    print(f"peak {(peak - base) / volume_bytes:.2f}x the volume")
    assert peak - base <= 3 * volume_bytes, (peak - base) / volume_bytes
