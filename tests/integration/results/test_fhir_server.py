"""A real FHIR R4 server accepts the Bundle: 201 per entry, references resolved on read-back."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from imaging_ai.local.fhir_server import FhirServer, start_fhir_server
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.results import build_results
from tests.unit.results.sample import make_sample_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def fhir(
    moto_session_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FhirServer]:
    server = start_fhir_server(moto_session_server.endpoint_url, tmp_path_factory.mktemp("fhir"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = make_sample_run(Path(tmp_path_factory.mktemp("study")))
    return build_results(run.headers, run.labels, run.output, run.card, "run-1").bundle


def _reidentify(bundle: dict[str, Any]) -> dict[str, Any]:
    """What the edge does before posting: swap the pseudonymous id for the site's MRN."""
    reidentified = copy.deepcopy(bundle)
    for entry in reidentified["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [
                {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-4711-0815"}
            ]
    return reidentified


def _read(fhir: FhirServer, reference: str) -> dict[str, Any]:
    response = requests.get(f"{fhir.base_url}/{reference}", headers=FHIR_JSON, timeout=10)
    assert response.status_code == 200, response.text
    resource: dict[str, Any] = response.json()
    return resource


def test_server_says_it_is_r4(fhir: FhirServer) -> None:
    metadata = requests.get(f"{fhir.base_url}/metadata", timeout=10).json()
    assert metadata["fhirVersion"] == "4.0.1"


def test_transaction_creates_every_entry_and_resolves_references(
    fhir: FhirServer, bundle: dict[str, Any]
) -> None:
    # Given the transaction Bundle as the edge re-identified it,
    bundle = _reidentify(bundle)
    response = requests.post(f"{fhir.base_url}/", json=bundle, headers=FHIR_JSON, timeout=30)
    # Then every entry is created,
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "transaction-response"
    statuses = [entry["response"]["status"] for entry in answer["entry"]]
    assert statuses == ["201 Created"] * len(bundle["entry"])
    locations = {
        request["fullUrl"]: entry["response"]["location"]
        for request, entry in zip(bundle["entry"], answer["entry"], strict=True)
    }
    # And the DiagnosticReport read back points at the created resources, not urn:uuid.
    report_url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    report = _read(fhir, locations[report_url])
    assert report["status"] == "final"
    patient = _read(fhir, report["subject"]["reference"])
    assert patient["identifier"][0]["value"] == "MRN-4711-0815"
    study = _read(fhir, report["imagingStudy"][0]["reference"])
    assert study["identifier"][0]["value"].startswith("urn:oid:")
    assert _read(fhir, report["performer"][0]["reference"])["resourceType"] == "Organization"
    assert len(report["result"]) == 4
    for reference in report["result"]:
        observation = _read(fhir, reference["reference"])
        assert observation["derivedFrom"][0]["reference"] == report["imagingStudy"][0]["reference"]
        assert observation["subject"]["reference"] == report["subject"]["reference"]
        device = _read(fhir, observation["device"]["reference"])
        assert device["deviceName"][0]["name"] == "lung-nodule-demo"


def test_server_rejects_what_r4_forbids(fhir: FhirServer, bundle: dict[str, Any]) -> None:
    # The server validates R4: a status outside the required value set is refused.
    broken = copy.deepcopy(bundle)
    observation = next(
        e["resource"] for e in broken["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    observation["status"] = "bogus"
    response = requests.post(f"{fhir.base_url}/", json=broken, headers=FHIR_JSON, timeout=30)
    assert response.status_code == 400, response.text
