"""`make demo`: a synthetic CT study with fake PHI through the whole pipeline, on one machine."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom

from imaging_ai.dicom_folder import SendReport, StudyFolder, scan_folder, send_instances
from imaging_ai.edge_stage import EdgeStage
from imaging_ai.local.fhir_server import ensure_installed
from imaging_ai.local.head_demo import (
    HEAD_PATIENT,
    HEMORRHAGE_MODEL_DIR,
    collect_head_summary,
    ehr_communications,
    head_phi,
    print_head_summary,
    wait_for_runs,
)
from imaging_ai.local.ohif import ensure_installed as ensure_viewer_installed
from imaging_ai.local.ohif import start_viewer
from imaging_ai.local.orthanc import SENDER_AE_TITLE, Orthanc
from imaging_ai.local.privacy import PrivacyReport, audit_bucket, audit_table
from imaging_ai.local.runtime import INFERENCE_LOG_PREFIX, LocalModel, LocalPipeline
from imaging_ai.local.timeline import STAGES
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from imaging_ai.synthetic_head import write_head_ct_study

SR_COMPREHENSIVE_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
_ISOLATED = "IMAGING_AI_ISOLATED"


@dataclass
class DeliveredObject:
    sop_class_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str


@dataclass(frozen=True)
class EdgeRun:
    run_id: str
    model_name: str
    shadow: bool
    stage: str


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
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    step_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    # One run per model the study went to, as `edge-forwarder status` reports it.
    edge_runs: list[EdgeRun] = field(default_factory=list)
    # Each run (one study for one model) on its own clock: stage -> seconds since that
    # study's first C-STORE, by model name.
    run_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    edge_deliveries: str = ""  # the forwarder's delivery folder: one sub-folder per run

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
    pipeline: LocalPipeline,
    study: SyntheticStudy,
    delivered: bool,
    started: float,
    more_phi: dict[str, str] | None = None,
) -> DemoSummary:
    """Ask the real PACS and EHR what arrived, and audit every cloud object for PHI (the
    chest study's, and `more_phi`: another study's sent in the same run)."""
    assert pipeline.pacs and pipeline.ehr and pipeline.resources
    summary = DemoSummary(
        delivered=delivered,
        # When the last run ended, not when this summary is written (status polls lag).
        seconds=pipeline.timeline.runs_ended_at() or time.monotonic() - started,
        stage_seconds=pipeline.timeline.durations(),
        run_seconds={run.model_name: dict(run.stages) for run in pipeline.timeline.per_run()},
        truth_nodules_mm=[round(n.diameter_mm, 1) for n in study.phantom.nodules],
        failures=pipeline.failures,
        peak_rss_mb={name: round(b / 2**20, 1) for name, b in pipeline.peak_rss().items()},
        step_seconds=function_steps(pipeline.work_dir / "logs"),
        # The runs of the studies this pipeline follows (all of a demo's; one test's own).
        edge_runs=[
            EdgeRun(str(r["run_id"]), str(r["model"]), bool(r["shadow"]), str(r["stage"]))
            for r in pipeline.edge_status()
            if r["pseudo_study_uid"] in pipeline.pseudo_study_uids
        ],
        edge_deliveries=str(pipeline.edge_state_dir / "deliveries"),
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
    ehr = pipeline.ehr
    # The report as a clinician's EHR finds it: by FHIR search on the patient's MRN.
    reports = ehr.search(
        "DiagnosticReport", **{"subject:Patient.identifier": study.patient.patient_id}
    )
    for report in reports:
        summary.ehr_report_ids.append(str(report.get("id")))
        subject = report.get("subject", {}).get("reference", "")
        if subject:
            summary.ehr_patient_identifiers.extend(
                str(identifier.get("value"))
                for identifier in ehr.read(subject).get("identifier", [])
            )
        for study_ref in report.get("imagingStudy", []):
            imaging_study = ehr.read(study_ref["reference"])
            summary.ehr_report_study_uids.extend(
                str(identifier.get("value")) for identifier in imaging_study.get("identifier", [])
            )
        for result in report.get("result", []):
            observation = ehr.read(result["reference"])
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
    phi = {**phi_to_search(study), **(more_phi or {})}
    bucket_report = audit_bucket(
        pipeline.resources.data_bucket, pipeline.resources.kms_key_arn, phi
    )
    table_report = audit_table(pipeline.resources.state_table, phi)
    summary.privacy = _privacy_dict(bucket_report, table_report)
    return summary


# The log lines that carry where an invocation's time went (`step_seconds`), by function.
_STEP_LINES = {"model input built": "preprocess", "results written": "postprocess"}


def function_steps(logs: Path) -> dict[str, dict[str, float]]:
    """Step timings the functions and the inference server logged (the last run of each)."""
    steps: dict[str, dict[str, float]] = {}
    servers = sorted(logs.glob(f"{INFERENCE_LOG_PREFIX}*.log"))
    for path, key, function in (
        (logs / "lambda.log", "message", None),
        # One inference server per model: each is named after its model where there are several.
        *(
            (server, "event", "inference server" + _model_suffix(server, len(servers)))
            for server in servers
        ),
    ):
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            message = str(entry.get(key, ""))
            if function is None and message in _STEP_LINES:
                steps[_STEP_LINES[message]] = dict(entry.get("step_seconds", {}))
            elif function is not None and message == "inference_done":
                steps[function] = {"predict": float(entry.get("seconds", 0.0))}
    return steps


def _model_suffix(log: Path, servers: int) -> str:
    return f" {log.stem.removeprefix(INFERENCE_LOG_PREFIX)}" if servers > 1 else ""


def _print_run_seconds(run_seconds: dict[str, dict[str, float]], out: Any) -> None:
    """Each study on its own clock: the timeline above mixes the studies (each stage is
    printed when the first one reaches it), so the turnaround of each is printed here."""
    if not run_seconds:
        return
    models = list(run_seconds)
    out("Each study on its own clock (seconds since its first C-STORE; one model each):")
    out(f"  {'stage':<17} " + " ".join(f"{model[:24]:>24}" for model in models))
    for stage in (*STAGES, EdgeStage.NOTIFIED_CRITICAL):
        cells = [run_seconds[model].get(stage) for model in models]
        if all(cell is None for cell in cells):
            continue
        out(
            f"  {stage:<17} "
            + " ".join("{:>24}".format("-" if c is None else f"{c:.1f}") for c in cells)
        )


def _privacy_dict(bucket: PrivacyReport, table: PrivacyReport) -> dict[str, Any]:
    return {
        "clean": bucket.clean and table.clean,
        "objects_scanned": bucket.objects_scanned,
        "bytes_scanned": bucket.bytes_scanned,
        "state_items_scanned": table.objects_scanned,
        "undecryptable": bucket.undecryptable,
        "leaks": [asdict(leak) for leak in (*bucket.leaks, *table.leaks)],
    }


def _print_privacy(privacy: dict[str, Any], objects: str, searched_for: str, out: Any) -> None:
    """The privacy audit's verdict, then every leak and every object it could not open."""
    verdict = "PASS" if privacy.get("clean") else "FAIL"
    out(
        f"Privacy audit: {verdict}: {privacy.get('objects_scanned')} {objects} and "
        f"{privacy.get('state_items_scanned')} state items searched for {searched_for}"
    )
    for leak in privacy.get("leaks", []):
        out(f"  LEAK: {leak['phi_field']} in {leak['key']} ({leak['member']})")
    for key in privacy.get("undecryptable", []):
        out(f"  could not decrypt: {key}")


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
    _print_run_seconds(summary.run_seconds, out)
    for function, steps in summary.step_seconds.items():
        out(f"  in {function}: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    out("Peak resident memory per process (MiB):")
    for name, mib in summary.peak_rss_mb.items():
        out(f"  {name:<17} {mib:7.0f}")
    out(line)
    assert pipeline.pacs and pipeline.ehr
    out(f"PACS (Orthanc {pipeline.pacs.rest_url}), original study {study.study_instance_uid}:")
    for item in summary.pacs_objects:
        is_sr = item.sop_class_uid == SR_COMPREHENSIVE_3D
        kind = "SR  (Comprehensive 3D, TID 1500)" if is_sr else "SEG"
        out(f"  {kind:<34} patient {item.patient_id} / {item.patient_name}")
    out(f"EHR (FHIR R4 {pipeline.ehr.base_url}):")
    out("  found by GET DiagnosticReport?subject:Patient.identifier=<the patient's MRN>")
    for report_id in summary.ehr_report_ids:
        out(f"  DiagnosticReport/{report_id} with {summary.ehr_observations} Observation(s)")
    out(f"  patient identifiers: {', '.join(summary.ehr_patient_identifiers) or 'none'}")
    out(f"  imaging study: {', '.join(summary.ehr_report_study_uids) or 'none'}")
    for run in summary.edge_runs:
        if run.shadow:
            out(f"Shadow mode: {run.model_name} ran ({run.stage}); its results stay on the edge")
            out(f"  in {summary.edge_deliveries}/{run.run_id}, never sent to PACS or EHR")
    out(f"Ground truth nodules (diameter mm): {summary.truth_nodules_mm}")
    diameters = [value for name, value, _ in summary.ehr_measurements if name == "Long Axis"]
    out(f"Reported longest diameters (mm):    {sorted(round(d, 1) for d in diameters)}")
    out(line)
    privacy = summary.privacy
    _print_privacy(
        privacy,
        f"cloud objects ({privacy.get('bytes_scanned', 0) / 1e6:.1f} MB decrypted and unpacked)",
        f"{len(phi_to_search(study))} fake PHI values and original UIDs",
        out,
    )
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
    if args.study is not None:
        return run_user_study(args, say, work_dir)
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
    say(f"Generating a synthetic trauma head CT (gantry tilt {args.head_tilt:g} deg), fake PHI")
    head = write_head_ct_study(
        work_dir / "head-study", tilt_deg=args.head_tilt, patient=HEAD_PATIENT
    )
    bleeds = ", ".join(f"{b.volume_ml:.1f} mL" for b in head.head.bleeds) or "none"
    say(f"  {len(head.paths)} instances, bleed(s): {bleeds}")
    # Each study goes only to its model: the routing rules follow each card's intended use.
    models = (LocalModel(DEMO_MODEL_DIR), LocalModel(HEMORRHAGE_MODEL_DIR))
    with LocalPipeline(
        work_dir=work_dir,
        quiet_seconds=args.quiet_seconds,
        printer=say,
        pacs_dicomweb=args.view,
        models=models,
    ) as pipeline:
        port = pipeline.forwarder_port
        say(f"Sending both studies by C-STORE (DCMTK storescu) to 127.0.0.1:{port}")
        say("Timeline (each stage when the first study reaches it):")
        started = pipeline.timeline.start_clock()
        pipeline.send_study(work_dir / "study")
        pipeline.send_study(work_dir / "head-study")
        delivered = pipeline.wait_until_delivered(args.timeout)
        remaining = max(1.0, args.timeout - (time.monotonic() - started))
        both = delivered and wait_for_runs(pipeline, count=len(models), timeout_s=remaining)
        _say_run_ends(pipeline, say)
        summary = collect_summary(pipeline, study, both, started, more_phi=head_phi(head))
        head_summary = collect_head_summary(
            pipeline, head, ehr_communications(pipeline, HEAD_PATIENT.patient_id)
        )
        print_summary(summary, pipeline, study, out=say)
        print_head_summary(head_summary, out=say)
        (work_dir / "summary.json").write_text(
            json.dumps({**asdict(summary), "head": asdict(head_summary)}, indent=2, default=str)
        )
        if args.view and pipeline.pacs is not None:
            keep_viewing(
                pipeline.pacs, say, scan_folder(work_dir / "study"), study.study_instance_uid
            )
    return 0 if summary.ok and head_summary.critical and head_summary.notified else 1


def keep_viewing(
    pacs: Orthanc, say: Any, original: StudyFolder, study_instance_uid: str | None = None
) -> None:
    """`make demo VIEW=1`: serve OHIF on the PACS until Ctrl-C.

    A hospital's PACS holds the original images before any result arrives; the demo's PACS
    only got the results, so the original study is stored now for the SEG and SR to sit on.
    """
    stored = send_instances(original, "127.0.0.1", pacs.dicom_port, pacs.ae_title, SENDER_AE_TITLE)
    say(f"Stored the original study in the PACS for viewing ({stored.sent} instance(s))")
    viewer = start_viewer(pacs)
    page = viewer.study_url(study_instance_uid) if study_instance_uid else viewer.url
    say(f"OHIF viewer (the PACS's studies, with our SR and SEG): {page}")
    say("  in OHIF: double-click the SEG, then the SR thumbnail. Ctrl-C stops the viewer.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        say("viewer stopped")
    finally:
        viewer.stop()


@dataclass
class UserStudySummary:
    """What `make demo STUDY=...` found, sent, and what became of it (printed on this machine
    only: series descriptions and the identifiers searched for are PHI)."""

    outcome: str  # DELIVERED, NOT_ANALYZED, NOT_ROUTED, FAILED or TIMED_OUT
    reason: str
    seconds: float
    instances: int
    skipped: dict[str, int]
    sent: int
    send_failures: dict[str, int]
    series: list[dict[str, Any]]
    analyzed_series: list[str]
    privacy: dict[str, Any]
    stage_seconds: list[tuple[str, float]]

    @property
    def ok(self) -> bool:
        """The study reached an end the site sees, and the cloud holds none of its identifiers
        (instances the forwarder does not accept, e.g. dose SRs, are reported, not fatal)."""
        finished = self.outcome in ("DELIVERED", "NOT_ANALYZED", "NOT_ROUTED")
        return finished and bool(self.privacy.get("clean")) and self.sent > 0


def _say_run_ends(pipeline: LocalPipeline, say: Callable[[str], None]) -> None:
    """One line per run of the study (one per model): how it ended."""
    for run_id, end in sorted(pipeline.timeline.run_ends().items()):
        say(f"  run {run_id}: {end}")


def _outcome(pipeline: LocalPipeline, delivered: bool) -> tuple[str, str]:
    if delivered:
        return "DELIVERED", ""
    ended = pipeline.timeline.ended()
    if ended is None:
        return "TIMED_OUT", "no final state before the timeout"
    return ended.upper(), pipeline.timeline.details.get(ended, "")


def collect_user_summary(
    pipeline: LocalPipeline,
    found: StudyFolder,
    report: SendReport,
    delivered: bool,
    started: float,
) -> UserStudySummary:
    """What the PACS holds for the study, what the cloud decided, and the privacy audit with
    the identifying values read from the study's own headers."""
    assert pipeline.pacs and pipeline.resources
    outcome, reason = _outcome(pipeline, delivered)
    analyzed: set[str] = set()
    study_uids = {
        str(pydicom.dcmread(series.files[0], stop_before_pixels=True).StudyInstanceUID)
        for series in found.series.values()
    }
    for study_uid in study_uids:
        for instance in pipeline.pacs.study_instances(study_uid):
            tags = instance["Tags"]
            if str(tags.get("SOPClassUID", "")) != SEGMENTATION:
                continue
            for referenced in tags.get("ReferencedSeriesSequence", []) or []:
                analyzed.add(str(referenced.get("SeriesInstanceUID", "")))
    bucket_report = audit_bucket(
        pipeline.resources.data_bucket, pipeline.resources.kms_key_arn, found.identifiers
    )
    table_report = audit_table(pipeline.resources.state_table, found.identifiers)
    return UserStudySummary(
        outcome=outcome,
        reason=reason,
        seconds=time.monotonic() - started,
        instances=len(found.instances),
        skipped=found.skipped_counts(),
        sent=report.sent,
        send_failures=dict(report.failed),
        series=[
            {
                "number": series.series_number,
                "modality": series.modality,
                "body_part": series.body_part,
                "description": series.description,
                "instances": len(series.files),
                "analyzed": uid in analyzed,
            }
            for uid, series in found.series.items()
        ],
        analyzed_series=[
            found.series[uid].series_number for uid in analyzed if uid in found.series
        ],
        privacy={
            **_privacy_dict(bucket_report, table_report),
            "values_searched": len(found.identifiers),
        },
        stage_seconds=pipeline.timeline.durations(),
    )


def print_user_summary(summary: UserStudySummary, out: Any = print) -> None:
    line = "-" * 78
    out(line)
    skipped = ", ".join(f"{count} {kind}" for kind, count in summary.skipped.items()) or "none"
    out(f"Files: {summary.instances} DICOM instance(s) sent {summary.sent}; skipped: {skipped}")
    for reason, count in summary.send_failures.items():
        out(f"  not accepted by the forwarder: {count} ({reason})")
    out("Series in the folder:")
    for series in summary.series:
        mark = "ANALYZED" if series["analyzed"] else "-"
        out(
            f"  #{series['number']:<5} {series['modality']:<6} "
            f"{series['body_part'] or '(no body part)':<16}"
            f" {series['instances']:5d} image(s)  {series['description'][:30]:<30} {mark}"
        )
    out(line)
    if summary.outcome == "DELIVERED":
        numbers = ", ".join(f"#{n}" for n in summary.analyzed_series) or "(unknown)"
        out(f"Result: DELIVERED in {summary.seconds:.1f} s: series {numbers} analyzed;")
        out("  every other series was left out by the model's intended use (see the log).")
    elif summary.outcome == "NOT_ANALYZED":
        reason = summary.reason.removeprefix("not analyzed: ")
        out(f"Result: NOT ANALYZED (outside the model's intended use): {reason}")
        out("  No findings were delivered to the PACS or the EHR.")
    elif summary.outcome == "NOT_ROUTED":
        out("Result: NOT SENT to the cloud: no routing rule matched (a hospital keeps it on site)")
    else:
        out(f"Result: {summary.outcome}: {summary.reason}")
    out(line)
    privacy = summary.privacy
    _print_privacy(
        privacy,
        "cloud objects",
        f"{privacy.get('values_searched')} identifying values read from this study's headers",
        out,
    )
    out(line)
    out("Results are from a DEMO MODEL trained on synthetic phantoms: NOT FOR CLINICAL USE.")


def run_user_study(args: argparse.Namespace, say: Any, work_dir: Path) -> int:
    """`make demo STUDY=folder`: the user's own study through the whole pipeline."""
    folder: Path = args.study
    found = scan_folder(folder)
    skipped = ", ".join(f"{n} {kind}" for kind, n in found.skipped_counts().items()) or "none"
    say(
        f"Study folder {folder}: {len(found.instances)} DICOM instance(s) in "
        f"{len(found.series)} series; skipped: {skipped}"
    )
    if not found.instances:
        say("Nothing to send: no DICOM instance in the folder")
        return 1
    with LocalPipeline(
        work_dir=work_dir, quiet_seconds=args.quiet_seconds, printer=say, pacs_dicomweb=args.view
    ) as pipeline:
        port = pipeline.forwarder_port
        say(f"Sending every series by C-STORE to the forwarder on 127.0.0.1:{port}")
        say("Timeline:")
        started = pipeline.timeline.start_clock()
        report = pipeline.send_folder(found)
        delivered = pipeline.wait_until_delivered(args.timeout)
        _say_run_ends(pipeline, say)
        summary = collect_user_summary(pipeline, found, report, delivered, started)
        print_user_summary(summary, out=say)
        say(f"Logs and spool: {pipeline.work_dir}")
        (work_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str))
        if args.view and pipeline.pacs is not None:
            keep_viewing(pipeline.pacs, say, found)
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
    parser.add_argument(
        "--head-tilt", type=float, default=15.0, help="gantry tilt of the head CT (degrees)"
    )
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for delivery")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-isolation", action="store_true", help="skip the network namespace")
    parser.add_argument(
        "--view",
        action="store_true",
        help="afterwards, serve the OHIF viewer on the PACS until Ctrl-C (no network namespace)",
    )
    parser.add_argument(
        "--study",
        type=Path,
        default=None,
        help="a folder with your own study (DICOMDIR and non-DICOM files are skipped)",
    )
    args = parser.parse_args(argv)
    if args.study is not None:
        args.study = args.study.resolve()
        if not args.study.is_dir():
            parser.error(f"--study {args.study} is not a folder")
        # The re-run in the network namespace must find the same folder.
        argv = [a for a in argv if a != "--study" and Path(a).resolve() != args.study]
        argv += ["--study", str(args.study)]
    # npm needs the registry: install the EHR's server before leaving the network behind.
    ensure_installed()
    if args.view:
        ensure_viewer_installed()
        # A browser outside a private namespace could not reach the viewer inside it.
        print("note: --view runs without a network namespace; the viewer binds 127.0.0.1")
    elif not args.no_isolation:
        _isolate(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
