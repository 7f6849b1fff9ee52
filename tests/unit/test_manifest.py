"""The manifest names one run per model of an upload; schema 1.0 manifests still read."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from imaging_ai.contracts import Manifest, ModelRun

_UPLOAD = {
    "site": "site-a",
    "pseudo_study_uid": "2.25.1",
    "series": [],
    "deidentification": {"table_edition": "2026d", "options": [], "method_codes": ["113100"]},
    "forwarder_version": "t",
}


def test_a_schema_1_0_manifest_reads_as_one_run() -> None:
    # Given a manifest a forwarder from before fan-out wrote
    old = {**_UPLOAD, "schema_version": "1.0", "run_id": "r1-a", "model_name": "lung",
           "revises_run_id": "r0-a"}  # fmt: skip
    # When the cloud reads it
    manifest = Manifest.model_validate_json(json.dumps(old))
    # Then it names one run, with the model and the revised run
    assert manifest.runs == [ModelRun(run_id="r1-a", model_name="lung", revises_run_id="r0-a")]


def test_a_manifest_names_each_model_and_run_once() -> None:
    runs = [ModelRun(run_id="r1-a", model_name="lung"), ModelRun(run_id="r1-b", model_name="next")]
    manifest = Manifest.model_validate({**_UPLOAD, "runs": runs})
    assert manifest.schema_version == "1.1"
    with pytest.raises(ValidationError, match="names each model once"):
        Manifest.model_validate({**_UPLOAD, "runs": [runs[0], runs[1].model_copy(
            update={"model_name": "lung"})]})  # fmt: skip
    with pytest.raises(ValidationError, match="names each run once"):
        Manifest.model_validate({**_UPLOAD, "runs": [runs[0], runs[1].model_copy(
            update={"run_id": "r1-a"})]})  # fmt: skip
    with pytest.raises(ValidationError, match="at least 1 item"):
        Manifest.model_validate({**_UPLOAD, "runs": []})
