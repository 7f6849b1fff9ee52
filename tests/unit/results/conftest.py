"""Fixtures for the results tests: one small de-identified synthetic run, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging_ai.results import ResultObjects, build_results
from tests.unit.results.sample import SampleRun, make_sample_run


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> SampleRun:
    return make_sample_run(Path(tmp_path_factory.mktemp("results-study")))


@pytest.fixture(scope="session")
def results(sample_run: SampleRun) -> ResultObjects:
    return build_results(
        sample_run.headers, sample_run.labels, sample_run.output, sample_run.card, "run-1"
    )
