"""A local pipeline that fails to start leaves no server running behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging_ai.errors import PipelineError
from imaging_ai.local import runtime
from imaging_ai.local.runtime import LocalPipeline


def test_a_failed_start_stops_what_did_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an EHR server that cannot start (moto, inference and Orthanc start before it)
    def broken_ehr(*args: object, **kwargs: object) -> None:
        raise PipelineError("EHR server did not answer")

    monkeypatch.setattr(runtime, "start_fhir_server", broken_ehr)
    pipeline = LocalPipeline(work_dir=tmp_path, printer=None)
    # When the pipeline is entered
    with pytest.raises(PipelineError, match="EHR server"), pipeline:
        pass
    # Then every child process it had started has exited
    assert pipeline.moto is not None and pipeline.moto.process.poll() is not None
    assert pipeline.pacs is not None and pipeline.pacs.process.poll() is not None
    assert all(not process.running for process in pipeline._processes)
