"""The FHIR R4 transaction Bundle: shape, codes, references, one-to-one agreement with the SR."""

from __future__ import annotations

import io
import json
from typing import Any

import highdicom as hd
import pydicom
from fhir.resources.R4B.bundle import Bundle

from imaging_ai.results import ResultObjects, codes
from imaging_ai.synthetic import FakePatient
from tests.unit.results.sample import PSEUDO_PATIENT_ID, SampleRun


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_transaction_of_posts_with_urn_uuids(results: ResultObjects) -> None:
    bundle = results.bundle
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert all(url.startswith("urn:uuid:") for url in urls) and len(set(urls)) == len(urls)
    assert {entry["request"]["method"] for entry in bundle["entry"]} == {"POST"}
    assert codes.bundle_code_problems(bundle) == []


def test_report_is_shaped_like_us_core_report_and_note(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    bundle = results.bundle
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert {"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"} in report[
        "category"
    ][0]["coding"]
    assert report["code"]["coding"][0]["code"] == "24627-2"
    assert by_url[report["subject"]["reference"]]["identifier"] == [
        {"system": "urn:imaging-ai:pseudo-patient-id", "value": PSEUDO_PATIENT_ID}
    ]
    assert report["effectiveDateTime"] and report["issued"].endswith("Z")
    assert by_url[report["performer"][0]["reference"]]["resourceType"] == "Organization"
    study = by_url[report["imagingStudy"][0]["reference"]]
    assert study["identifier"] == [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{sample_run.headers[0].StudyInstanceUID}"}
    ]
    assert study["status"] == "available"
    assert [by_url[r["reference"]]["resourceType"] for r in report["result"]] == ["Observation"] * 4
    assert "NOT FOR CLINICAL USE" in report["conclusion"]
    (device,) = _resources(bundle, "Device")
    assert device["deviceName"][0]["name"] == sample_run.card.name
    assert device["version"][0]["value"] == sample_run.card.version
    assert device["identifier"][0]["value"] == sample_run.card.weights_sha256


def test_every_observation_derives_from_the_study_and_names_the_device(
    results: ResultObjects,
) -> None:
    by_url = {e["fullUrl"]: e["resource"] for e in results.bundle["entry"]}
    for observation in _resources(results.bundle, "Observation"):
        assert by_url[observation["derivedFrom"][0]["reference"]]["resourceType"] == "ImagingStudy"
        assert by_url[observation["device"]["reference"]]["resourceType"] == "Device"
        assert observation["bodySite"]["coding"][0]["code"] == "39607008"


def _coding_key(coding: dict[str, Any]) -> tuple[str, str]:
    return coding["system"], coding["code"]


def _concept_key(concept: Any) -> tuple[str, str]:
    return codes.FHIR_SYSTEMS[concept.scheme_designator], concept.value


def test_sr_measurements_and_observations_match_one_to_one(results: ResultObjects) -> None:
    # Given the SR as a PACS would store it, When every measurement of every group is walked,
    buffer = io.BytesIO()
    results.sr.save_as(buffer, enforce_file_format=True)
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    from_sr = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        (site,) = group.finding_sites
        for measurement in group.get_measurements():
            from_sr.append(
                (
                    _concept_key(measurement.name),
                    float(measurement.value),
                    _concept_key(measurement.unit),
                    _concept_key(site.value),
                    _concept_key(group.finding_type),
                    group.tracking_uid,
                )
            )
    # Then the Observations state exactly the same codes, values, units, sites and findings.
    from_fhir = []
    for observation in _resources(results.bundle, "Observation"):
        quantity = observation["valueQuantity"]
        finding = observation["component"][0]["valueCodeableConcept"]["coding"][0]
        from_fhir.append(
            (
                _coding_key(observation["code"]["coding"][0]),
                float(quantity["value"]),
                (quantity["system"], quantity["code"]),
                _coding_key(observation["bodySite"]["coding"][0]),
                _coding_key(finding),
                observation["identifier"][0]["value"].split("/")[0].removeprefix("urn:oid:"),
            )
        )
    assert len(from_sr) == 4
    assert sorted(from_sr) == sorted(from_fhir)


def test_results_carry_only_the_pseudonymous_identity(results: ResultObjects) -> None:
    # Given de-identified input, Then no fake PHI of the synthetic patient reaches any result.
    seg, sr = io.BytesIO(), io.BytesIO()
    results.seg.save_as(seg, enforce_file_format=True)
    results.sr.save_as(sr, enforce_file_format=True)
    payloads = [seg.getvalue(), sr.getvalue(), json.dumps(results.bundle).encode()]
    for value in FakePatient().phi_values():
        assert all(value.encode() not in payload for payload in payloads), value
    assert PSEUDO_PATIENT_ID.encode() in payloads[1]


def test_what_a_resent_report_would_duplicate_is_a_conditional_create(
    results: ResultObjects,
) -> None:
    # Given the cloud's Bundle of one run
    searches = {
        e["fullUrl"]: (e["resource"], e["request"].get("ifNoneExist"))
        for e in results.bundle["entry"]
    }
    # Then the report and each measurement are found again by the run's SR, the algorithm by
    # its weights, the organisation by its name; Patient and ImagingStudy are the edge's to key
    for resource, search in searches.values():
        kind = resource["resourceType"]
        if kind in ("Patient", "ImagingStudy"):
            assert search is None
            continue
        assert search is not None, kind
        name, _, value = search.partition("=")
        if kind == "Organization":
            assert (name, value) == ("name%3Aexact", "imaging-ai-pipeline%20project")
            continue
        system, _, code = value.partition("|")
        assert name == "identifier"
        assert {"system": system, "value": code} in resource["identifier"]
    sr_uid = str(results.sr.SOPInstanceUID)
    observations = [r for r, _ in searches.values() if r["resourceType"] == "Observation"]
    assert all(
        any(sr_uid in i["value"] for i in o["identifier"] if "sr-measurement" in i["system"])
        for o in observations
    )
