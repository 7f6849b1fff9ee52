"""A model card's per-study triage flag in the SR (coded + text) and the FHIR report."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from imaging_ai.model_card import Code, ModelCard, TriageFlag
from imaging_ai.model_io import ModelOutputMeta, TriageResult
from imaging_ai.results import build_results
from imaging_ai.results.codes import INTERPRETATION_SYSTEM
from imaging_ai.results.fhir import check_bundle
from imaging_ai.results.report_content import read_report
from tests.unit.results.sample import SampleRun

HEMORRHAGE = Code(scheme="SCT", value="1386000", meaning="Intracranial hemorrhage")


def _triage_card(card: ModelCard) -> ModelCard:
    flag = TriageFlag(
        name="Intracranial hemorrhage suspected",
        finding=HEMORRHAGE,
        label_value=1,
        threshold=0.5,
        min_volume_mm3=500.0,
    )
    return card.model_copy(update={"triage": flag, "critical_findings": [HEMORRHAGE]})


def _output(sample_run: SampleRun, probability: float) -> ModelOutputMeta:
    suspected = probability >= 0.5
    triage = TriageResult(
        name="Intracranial hemorrhage suspected",
        probability=probability,
        suspected=suspected,
        critical=suspected,
    )
    return sample_run.output.model_copy(update={"triage": triage})


def _triage_observation(bundle: dict[str, Any]) -> dict[str, Any]:
    (observation,) = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == HEMORRHAGE.value
    ]
    return observation


def _dciodvfy_errors(path: Path) -> list[str]:
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in report.stderr.splitlines() if line.startswith("Error")]


def test_a_suspected_critical_flag_is_coded_in_the_sr_and_critical_in_fhir(
    sample_run: SampleRun, tmp_path: Path
) -> None:
    # Given a card with a critical triage flag and a run that answered it with p = 0.97
    card = _triage_card(sample_run.card)
    results = build_results(
        sample_run.headers, sample_run.labels, _output(sample_run, 0.97), card, "run-triage"
    )
    # Then the SR carries the coded answer (present) and the probability in words, valid DICOM
    path = tmp_path / "sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    tree = subprocess.run(["dsrdump", "+Pc", str(path)], capture_output=True, text=True).stdout
    assert 'CODE:(1386000,SCT,"Intracranial hemorrhage")=(52101004,SCT,"Present")' in tree
    content = read_report(results.sr)
    assert "Intracranial hemorrhage suspected: yes (probability 0.97" in content.conclusion()
    assert "CRITICAL FINDING" in content.conclusion()
    # And the FHIR report says it as a critical Observation with its probability
    check_bundle(results.bundle)
    observation = _triage_observation(results.bundle)
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    assert observation["interpretation"][0]["coding"][0] == {
        "system": INTERPRETATION_SYSTEM,
        "code": "AA",
        "display": "Critical abnormal",
    }
    assert observation["component"][0]["valueQuantity"]["value"] == 97.0
    report = results.bundle["entry"][-1]["resource"]
    assert report["conclusionCode"][0]["coding"][0]["code"] == HEMORRHAGE.value
    assert "CRITICAL FINDING" in report["conclusion"]


def test_an_unsuspected_flag_reads_absent_and_normal(sample_run: SampleRun, tmp_path: Path) -> None:
    # Given the same card and a run that answered p = 0.02
    card = _triage_card(sample_run.card)
    output = _output(sample_run, 0.02).model_copy(update={"findings": []})
    results = build_results(sample_run.headers, sample_run.labels * 0, output, card, "run-neg")
    # Then the SR says absent, the FHIR Observation is normal, and nothing reads critical
    path = tmp_path / "sr.dcm"
    results.sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    tree = subprocess.run(["dsrdump", "+Pc", str(path)], capture_output=True, text=True).stdout
    assert 'CODE:(1386000,SCT,"Intracranial hemorrhage")=(2667000,SCT,"Absent")' in tree
    observation = _triage_observation(results.bundle)
    assert observation["interpretation"][0]["coding"][0]["code"] == "N"
    report = results.bundle["entry"][-1]["resource"]
    assert "conclusionCode" not in report
    assert "CRITICAL" not in report["conclusion"]
