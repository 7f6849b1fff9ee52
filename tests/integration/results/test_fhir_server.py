"""The local EHR, a real FHIR R4 server: transactions, search, conditional create, R4 checks."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imaging_ai.local.fhir_server import FhirServer, start_fhir_server
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelOutputMeta
from imaging_ai.results import build_results
from tests.unit.results.sample import make_sample_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed"),
]
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    server = start_fhir_server(tmp_path_factory.mktemp("fhir"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def report_of_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """The cloud's transaction Bundle for one run of the sample study."""
    run = make_sample_run(Path(tmp_path_factory.mktemp("study")))
    return lambda run_id: (
        build_results(run.headers, run.labels, run.output, run.card, run_id).bundle
    )


def _reidentify(bundle: dict[str, Any], mrn: str) -> dict[str, Any]:
    """What the edge does before posting: swap the pseudonymous id for the site's MRN."""
    reidentified = copy.deepcopy(bundle)
    for entry in reidentified["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [{"system": MRN_SYSTEM, "value": mrn}]
            entry["request"]["ifNoneExist"] = f"identifier={MRN_SYSTEM}|{mrn}"
    return reidentified


def _post(fhir: FhirServer, bundle: dict[str, Any]) -> requests.Response:
    return requests.post(f"{fhir.base_url}/", json=bundle, headers=FHIR_JSON, timeout=30)


def test_server_says_it_is_r4_with_search_and_conditional_create(fhir: FhirServer) -> None:
    metadata = requests.get(f"{fhir.base_url}/metadata", timeout=10).json()
    assert metadata["fhirVersion"] == "4.0.1"
    (rest,) = metadata["rest"]
    report = next(r for r in rest["resource"] if r["type"] == "DiagnosticReport")
    assert report["conditionalCreate"] is True
    assert {"identifier", "subject", "patient"} <= {p["name"] for p in report["searchParam"]}
    assert {"code": "transaction"} in rest["interaction"]


def test_transaction_creates_every_entry_and_resolves_references(
    fhir: FhirServer, report_of_run: Callable[[str], dict[str, Any]]
) -> None:
    # Given the transaction Bundle as the edge re-identified it,
    bundle = _reidentify(report_of_run("run-1"), "MRN-4711-0815")
    response = _post(fhir, bundle)
    # Then every entry is created,
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "transaction-response"
    statuses = [entry["response"]["status"] for entry in answer["entry"]]
    assert statuses == ["201"] * len(bundle["entry"])
    # And the report is found by FHIR search on the patient's MRN, its references resolved
    (report,) = fhir.search(
        "DiagnosticReport", **{"subject:Patient.identifier": f"{MRN_SYSTEM}|MRN-4711-0815"}
    )
    assert report["status"] == "final"
    patient = fhir.read(report["subject"]["reference"])
    assert patient["identifier"][0]["value"] == "MRN-4711-0815"
    study = fhir.read(report["imagingStudy"][0]["reference"])
    assert study["identifier"][0]["value"].startswith("urn:oid:")
    assert fhir.read(report["performer"][0]["reference"])["resourceType"] == "Organization"
    assert len(report["result"]) == 4
    for reference in report["result"]:
        observation = fhir.read(reference["reference"])
        assert observation["derivedFrom"][0]["reference"] == report["imagingStudy"][0]["reference"]
        assert observation["subject"]["reference"] == report["subject"]["reference"]
        device = fhir.read(observation["device"]["reference"])
        assert device["deviceName"][0]["name"] == "lung-nodule-demo"


def test_an_invalid_resource_is_refused_with_an_outcome_and_nothing_is_stored(
    fhir: FhirServer, report_of_run: Callable[[str], dict[str, Any]]
) -> None:
    # Given a report whose last Observation has a status outside R4's required value set
    broken = _reidentify(report_of_run("run-invalid"), "MRN-INVALID-1")
    observation = [
        e["resource"] for e in broken["entry"] if e["resource"]["resourceType"] == "Observation"
    ][-1]
    observation["status"] = "bogus"
    # When it is posted
    response = _post(fhir, broken)
    # Then the server refuses it with an OperationOutcome naming the element,
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Observation.status"]
    # and the transaction is all or nothing: not even its Patient or report was kept
    assert fhir.search("Patient", identifier=f"{MRN_SYSTEM}|MRN-INVALID-1") == []
    report_uid = next(
        e["resource"]["identifier"][0]["value"]
        for e in broken["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert fhir.search("DiagnosticReport", identifier=f"urn:dicom:uid|{report_uid}") == []


def test_structure_is_checked_against_the_r4_structure_definitions(fhir: FhirServer) -> None:
    # An element R4 does not define, and a missing required one, are both refused
    unknown = {"resourceType": "Patient", "nickname": "x"}
    missing = {"resourceType": "Observation", "status": "final"}
    for resource in (unknown, missing):
        response = requests.post(
            f"{fhir.base_url}/{resource['resourceType']}",
            json=resource,
            headers=FHIR_JSON,
            timeout=10,
        )
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"


def test_a_communication_is_created_and_found(fhir: FhirServer) -> None:
    # Given a critical-finding notice as plain FHIR REST (no transaction)
    communication = {
        "resourceType": "Communication",
        "identifier": [{"system": "urn:imaging-ai:notice", "value": "run-critical-1"}],
        "status": "completed",
        "priority": "stat",
        "payload": [{"contentString": "Critical finding: suspected hemorrhage"}],
    }
    response = requests.post(
        f"{fhir.base_url}/Communication", json=communication, headers=FHIR_JSON, timeout=10
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"].startswith(f"{fhir.base_url}/Communication/")
    (found,) = fhir.search("Communication", identifier="urn:imaging-ai:notice|run-critical-1")
    assert found["priority"] == "stat"


def _made_by(output: ModelOutputMeta, card: ModelCard) -> ModelOutputMeta:
    """The same findings as if `card`'s model had made them."""
    return output.model_copy(
        update={
            "model_name": card.name,
            "model_version": card.version,
            "weights_sha256": card.weights_sha256,
        }
    )


def test_models_sharing_weights_get_one_device_each_and_a_resent_report_reuses_it(
    fhir: FhirServer, tmp_path: Path
) -> None:
    # Given two models that differ only by name and ship the very same weights
    run = make_sample_run(tmp_path)
    weights = "cd" * 32  # not the sample model's, which other tests here post
    first = run.card.model_copy(update={"name": "same-weights-a", "weights_sha256": weights})
    second = first.model_copy(update={"name": "same-weights-b"})
    report_a, report_b = (
        _reidentify(
            build_results(run.headers, run.labels, _made_by(run.output, card), card, run_id).bundle,
            "MRN-WEIGHTS-1",
        )
        for card, run_id in ((first, "run-weights-a"), (second, "run-weights-b"))
    )
    # When each model's report is posted, and the first one is sent again
    for bundle in (report_a, report_b, report_a):
        response = _post(fhir, bundle)
        assert response.status_code == 200, response.text
    # Then each model is its own Device, stored once,
    found = fhir.search("Device", identifier=f"urn:imaging-ai:weights-sha256|{weights}")
    assert sorted(device["deviceName"][0]["name"] for device in found) == [
        "same-weights-a",
        "same-weights-b",
    ]
    # and the second model's measurements name the second model, not the first
    report_uid = next(
        e["resource"]["identifier"][0]["value"]
        for e in report_b["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    (stored,) = fhir.search("DiagnosticReport", identifier=f"urn:dicom:uid|{report_uid}")
    devices = {fhir.read(r["reference"])["device"]["reference"] for r in stored["result"]}
    assert [fhir.read(d)["deviceName"][0]["name"] for d in devices] == ["same-weights-b"]
