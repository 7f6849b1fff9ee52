"""A noisy model's dozens of findings: the largest `max_findings` are reported, the rest counted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from functions.postprocess.results import build_result_objects, cap_findings
from imaging_ai.model_io import Finding, ModelOutputMeta, VolumeGeometry
from tests.model_io_support import finding, input_meta, output_meta
from tests.unit.results.sample import make_sample_run

TRACKING_IDENTIFIER = "112039"  # DCM: one per TID 1500 measurement group


def _content(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content(item)


def test_a_run_with_35_findings_reports_the_20_largest_and_says_15_more(tmp_path: Path) -> None:
    # Given a model output with 35 findings of different volumes (as from an untrained model)
    run = make_sample_run(tmp_path, nodules=1)
    template = run.output.findings[0]
    findings = [
        template.model_copy(update={"component": index, "volume_mm3": float(index * 7 % 36 + 1)})
        for index in range(1, 36)
    ]
    output = run.output.model_copy(update={"findings": findings})
    assert run.card.max_findings == 20  # the default

    # When postprocess caps them and builds the results
    reported, unreported = cap_findings(output, run.card.max_findings)
    objects = build_result_objects(
        run.headers, run.labels, reported, run.card, "run-1", None, unreported
    )

    # Then the 20 largest are reported, and the SR and the report conclusion say 15 more exist
    assert unreported == 15
    largest: list[Finding] = sorted(findings, key=lambda f: -f.volume_mm3)[:20]
    assert {f.component for f in reported.findings} == {f.component for f in largest}
    sr = pydicom.dcmread(io.BytesIO(objects["sr.dcm"]))
    # (a finding's volume group and its viewer point group share one tracking identifier)
    tracked_findings = {
        str(item.TextValue)
        for item in _content(sr)
        if item.ConceptNameCodeSequence[0].CodeValue == TRACKING_IDENTIFIER
    }
    assert len(tracked_findings) == 20
    texts = [str(item.get("TextValue", "")) for item in _content(sr)]
    assert any("15 more finding(s)" in text for text in texts)
    bundle = json.loads(objects["report.bundle.json"])
    (report,) = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert "reports 20 finding(s)" in report["conclusion"]
    assert "15 more finding(s)" in report["conclusion"]
    # And the transaction stays within what FHIR servers commonly accept (100 entries)
    assert len(bundle["entry"]) == 5 + 20 * len(run.card.measurements) <= 100


def test_a_run_within_the_limit_is_reported_whole() -> None:
    run_output = make_output_with(3)
    reported, unreported = cap_findings(run_output, 20)
    assert reported is run_output and unreported == 0


def make_output_with(count: int) -> ModelOutputMeta:
    geometry = VolumeGeometry(shape=(2, 2, 2), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    findings = [finding((0.0, 0.0, 0.0), component=i) for i in range(1, count + 1)]
    return output_meta(input_meta(geometry, model_name="m"), findings)
