"""`make demo`: a synthetic CT study with fake PHI through the whole pipeline, on one machine."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import requests

from imaging_ai.local.fhir_server import RESOURCE_TABLE, ensure_installed
from imaging_ai.local.moto_server import FAKE_CREDENTIALS
from imaging_ai.local.privacy import PrivacyReport, audit_bucket, audit_table
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.local.timeline import STAGES
from imaging_ai.synthetic import SyntheticStudy, write_ct_study

SR_COMPREHENSIVE_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
_ISOLATED = "IMAGING_AI_ISOLATED"


@dataclass
class DeliveredObject:
    sop_class_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str


@dataclass
class DemoSummary:
    """What a user checks after a run; the e2e test asserts on the same facts."""

    delivered: bool
    seconds: float
    stage_seconds: list[tuple[str, float]]
    pacs_objects: list[DeliveredObject] = field(default_factory=list)
    ehr_patient_identifiers: list[str] = field(default_factory=list)
    ehr_report_ids: list[str] = field(default_factory=list)
    ehr_report_study_uids: list[str] = field(default_factory=list)
    ehr_observations: int = 0
    ehr_measurements: list[tuple[str, float, str]] = field(default_factory=list)
    truth_nodules_mm: list[float] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.delivered and not self.privacy.get("leaks") and self.privacy.get("clean", False)


def phi_to_search(study: SyntheticStudy) -> dict[str, str]:
    """The fake PHI plus the original UIDs: none of it may appear in the cloud."""
    return {
        **study.patient.phi_by_field(),
        "study_instance_uid": study.study_instance_uid,
        "series_instance_uid": study.series_instance_uid,
        "frame_of_reference_uid": study.frame_of_reference_uid,
        "first_sop_instance_uid": study.sop_instance_uids[0],
    }


def collect_summary(
    pipeline: LocalPipeline, study: SyntheticStudy, delivered: bool, started: float
) -> DemoSummary:
    """Ask the real PACS and EHR what arrived, and audit every cloud object for PHI."""
    assert pipeline.pacs and pipeline.ehr and pipeline.resources
    summary = DemoSummary(
        delivered=delivered,
        seconds=time.monotonic() - started,
        stage_seconds=pipeline.timeline.durations(),
        truth_nodules_mm=[round(n.diameter_mm, 1) for n in study.phantom.nodules],
        failures=pipeline.failures,
    )
    for instance in pipeline.pacs.study_instances(study.study_instance_uid):
        tags = instance["Tags"]
        sop_class = str(tags.get("SOPClassUID", ""))
        if sop_class in (SR_COMPREHENSIVE_3D, SEGMENTATION):
            summary.pacs_objects.append(
                DeliveredObject(
                    sop_class_uid=sop_class,
                    study_instance_uid=str(tags.get("StudyInstanceUID", "")),
                    patient_id=str(tags.get("PatientID", "")),
                    patient_name=str(tags.get("PatientName", "")),
                )
            )
    base = pipeline.ehr.base_url
    assert pipeline.moto is not None
    for report_id in _stored_ids(pipeline.moto.endpoint_url, "DiagnosticReport"):
        report = requests.get(f"{base}/DiagnosticReport/{report_id}", timeout=10).json()
        summary.ehr_report_ids.append(str(report.get("id")))
        subject = report.get("subject", {}).get("reference", "")
        if subject:
            patient = requests.get(f"{base}/{subject}", timeout=10).json()
            summary.ehr_patient_identifiers.extend(
                str(identifier.get("value")) for identifier in patient.get("identifier", [])
            )
        for study_ref in report.get("imagingStudy", []):
            imaging_study = requests.get(f"{base}/{study_ref['reference']}", timeout=10).json()
            summary.ehr_report_study_uids.extend(
                str(identifier.get("value")) for identifier in imaging_study.get("identifier", [])
            )
        for result in report.get("result", []):
            observation = requests.get(f"{base}/{result['reference']}", timeout=10).json()
            summary.ehr_observations += 1
            quantity = observation.get("valueQuantity", {})
            coding = observation.get("code", {}).get("coding", [{}])[0]
            summary.ehr_measurements.append(
                (
                    str(coding.get("display", "")),
                    float(quantity.get("value", 0.0)),
                    str(quantity.get("unit", "")),
                )
            )
    phi = phi_to_search(study)
    bucket_report = audit_bucket(
        pipeline.resources.data_bucket, pipeline.resources.kms_key_arn, phi
    )
    table_report = audit_table(pipeline.resources.state_table, phi)
    summary.privacy = _privacy_dict(bucket_report, table_report)
    return summary


def _stored_ids(ehr_store_url: str, resource_type: str) -> list[str]:
    """Ids of one resource type in the EHR's store (the local FHIR server has no search).

    The EHR keeps its table on the runtime's plain moto server, whichever backend the cloud
    side runs on (IAM-enforcing moto or LocalStack).
    """
    table = boto3.client(
        "dynamodb",
        endpoint_url=ehr_store_url,
        region_name=FAKE_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    ids: set[str] = set()
    for page in table.get_paginator("scan").paginate(TableName=RESOURCE_TABLE):
        for item in page.get("Items", []):
            if item.get("resourceType", {}).get("S") == resource_type:
                ids.add(item["id"]["S"])
    return sorted(ids)


def _privacy_dict(bucket: PrivacyReport, table: PrivacyReport) -> dict[str, Any]:
    return {
        "clean": bucket.clean and table.clean,
        "objects_scanned": bucket.objects_scanned,
        "bytes_scanned": bucket.bytes_scanned,
        "state_items_scanned": table.objects_scanned,
        "undecryptable": bucket.undecryptable,
        "leaks": [asdict(leak) for leak in (*bucket.leaks, *table.leaks)],
    }


def print_summary(
    summary: DemoSummary, pipeline: LocalPipeline, study: SyntheticStudy, out: Any = print
) -> None:
    line = "-" * 78
    out(line)
    state = "DELIVERED" if summary.delivered else "NOT DELIVERED"
    out(f"Result: {state} in {summary.seconds:.1f} s (from the first C-STORE)")
    out(line)
    out("Per-stage timings (seconds since the previous stage):")
    for stage, seconds in summary.stage_seconds:
        out(f"  {stage:<17} {seconds:7.1f}")
    missing = [s for s in STAGES if s not in dict(summary.stage_seconds)]
    if missing:
        out(f"  not reached: {', '.join(missing)}")
    out(line)
    assert pipeline.pacs and pipeline.ehr
    out(f"PACS (Orthanc {pipeline.pacs.rest_url}), original study {study.study_instance_uid}:")
    for item in summary.pacs_objects:
        is_sr = item.sop_class_uid == SR_COMPREHENSIVE_3D
        kind = "SR  (Comprehensive 3D, TID 1500)" if is_sr else "SEG"
        out(f"  {kind:<34} patient {item.patient_id} / {item.patient_name}")
    out(f"EHR (FHIR R4 {pipeline.ehr.base_url}):")
    for report_id in summary.ehr_report_ids:
        out(f"  DiagnosticReport/{report_id} with {summary.ehr_observations} Observation(s)")
    out(f"  patient identifiers: {', '.join(summary.ehr_patient_identifiers) or 'none'}")
    out(f"  imaging study: {', '.join(summary.ehr_report_study_uids) or 'none'}")
    out(f"Ground truth nodules (diameter mm): {summary.truth_nodules_mm}")
    diameters = [value for name, value, _ in summary.ehr_measurements if name == "Long Axis"]
    out(f"Reported longest diameters (mm):    {sorted(round(d, 1) for d in diameters)}")
    out(line)
    privacy = summary.privacy
    verdict = "PASS" if privacy.get("clean") else "FAIL"
    out(
        f"Privacy audit: {verdict}: {privacy.get('objects_scanned')} cloud objects "
        f"({privacy.get('bytes_scanned', 0) / 1e6:.1f} MB decrypted and unpacked) and "
        f"{privacy.get('state_items_scanned')} state items searched for "
        f"{len(phi_to_search(study))} fake PHI values and original UIDs"
    )
    for leak in privacy.get("leaks", []):
        out(f"  LEAK: {leak['phi_field']} in {leak['key']} ({leak['member']})")
    for key in privacy.get("undecryptable", []):
        out(f"  could not decrypt: {key}")
    for failure in summary.failures:
        out(f"  failure: {json.dumps(failure)[:300]}")
    out(line)
    out(f"Logs and spool: {pipeline.work_dir}")
    out("Results are from a DEMO MODEL trained on synthetic phantoms: NOT FOR CLINICAL USE.")


def run(args: argparse.Namespace) -> int:
    # Bound now: the runtime sends the Lambdas' stdout to a log file, as CloudWatch would.
    say = functools.partial(print, file=sys.stdout, flush=True)
    if os.environ.get(_ISOLATED):
        say("Running in a private network namespace: every service is reachable on loopback only")
    stamp = datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    work_dir: Path = args.work_dir or Path(".local-run") / stamp
    work_dir = work_dir.resolve()
    say(f"Generating a synthetic chest CT ({args.slices} x {args.size}^2) with fake PHI")
    spacing = (1.5 * 200 / args.slices, 0.7 * 512 / args.size, 0.7 * 512 / args.size)
    study = write_ct_study(
        work_dir / "study",
        seed=args.seed,
        shape=(args.slices, args.size, args.size),
        spacing_mm=spacing,
    )
    size_mb = sum(path.stat().st_size for path in study.paths) / 1e6
    say(f"  {len(study.paths)} instances, {size_mb:.0f} MB, {len(study.phantom.nodules)} nodule(s)")
    with LocalPipeline(
        work_dir=work_dir, quiet_seconds=args.quiet_seconds, printer=say
    ) as pipeline:
        port = pipeline.forwarder_port
        say(f"Sending the study by C-STORE (DCMTK storescu) to 127.0.0.1:{port}")
        say("Timeline:")
        started = time.monotonic()
        pipeline.timeline.started = started
        pipeline.send_study(work_dir / "study")
        delivered = pipeline.wait_until_delivered(args.timeout)
        summary = collect_summary(pipeline, study, delivered, started)
        print_summary(summary, pipeline, study, out=say)
        (work_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str))
    return 0 if summary.ok else 1


def _isolate(argv: list[str]) -> None:
    """Re-run inside a private network namespace so no demo service is reachable from outside.

    Orthanc 1.10 and DCMTK bind every interface; a namespace with only loopback keeps even a
    demo with fake PHI off the hospital network. Skipped where `unshare` is not permitted.
    """
    if os.environ.get(_ISOLATED) or not shutil.which("unshare"):
        return
    probe = os.system("unshare -rn true >/dev/null 2>&1")  # noqa: S605 - fixed command
    if probe != 0:
        print(
            "note: no private network namespace here (unshare -rn refused); Orthanc 1.10 "
            "listens on every interface during the demo, accepting REST from loopback and "
            "C-STORE only from our AE title on 127.0.0.1; everything else binds 127.0.0.1"
        )
        return
    os.environ[_ISOLATED] = "1"
    script = 'ip link set lo up && exec "$0" "$@"'
    module = ["-m", "imaging_ai.local.demo"]
    os.execvp("unshare", ["unshare", "-rn", "sh", "-c", script, sys.executable, *module, *argv])  # noqa: S606


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    # Seed 2026 gives three nodules (8.7, 12.3 and 12.9 mm) in the default 200 x 512^2 study.
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for delivery")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-isolation", action="store_true", help="skip the network namespace")
    args = parser.parse_args(argv)
    # npm needs the registry: install the EHR's server before leaving the network behind.
    ensure_installed()
    if not args.no_isolation:
        _isolate(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
