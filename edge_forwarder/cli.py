"""`edge-forwarder` command line: run, status, send, retry, rerun, purge, validate."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge_forwarder.composition import build_forwarder
from edge_forwarder.config import ForwarderConfig, load_config
from edge_forwarder.observability import MetricsServer, configure_logging, log_event
from edge_forwarder.transport.errors import ConfigError, ForwarderError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from edge_forwarder.transport.result_gate import PathOutside, inside
from imaging_ai.edge_stage import TERMINAL_EDGE_STAGES, EdgeStage
from imaging_ai.errors import ContractError
from imaging_ai.model_registry import split_model_reference

# Finished runs `purge` may forget: ended, or parked with a dead-lettered delivery.
_PURGEABLE = (
    *TERMINAL_EDGE_STAGES,
    EdgeStage.DEAD_LETTER_PACS,
    EdgeStage.DEAD_LETTER_EHR,
    EdgeStage.DEAD_LETTER_HL7,
    EdgeStage.DEAD_LETTER_CRITICAL,
)


def cmd_run(config: ForwarderConfig) -> int:
    forwarder = build_forwarder(config)
    metrics_server = None
    if config.observability.metrics_port:
        metrics_server = MetricsServer(
            config.observability.metrics_host,
            config.observability.metrics_port,
            forwarder.telemetry.metrics,
            forwarder.telemetry.health,
        )
        metrics_server.start()
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    forwarder.start()
    log_event("started", endpoint=metrics_server.port if metrics_server else None)
    stopping.wait()
    log_event("stopping")
    forwarder.stop()
    if metrics_server is not None:
        metrics_server.stop()
    return 0


def spool_report(config: ForwarderConfig) -> dict[str, Any]:
    """Spool use for `status`: counts and bytes only (the spool holds PHI; this does not)."""
    from edge_forwarder.intake.journal import Journal as IntakeJournal

    spool = config.intake.spool_dir
    journal_path = spool / "journal.sqlite3"
    report: dict[str, Any] = {"spool_dir": str(spool)}
    if journal_path.exists():
        intake_journal = IntakeJournal(journal_path)
        try:
            report.update(asdict(intake_journal.spool_use()))
        finally:
            intake_journal.close()
    if spool.exists():
        disk = shutil.disk_usage(spool)
        report.update(disk_free_bytes=disk.free, disk_total_bytes=disk.total)
    report.update(
        retention_delivered_days=config.retention.delivered_days,
        retention_quarantine_days=config.retention.quarantine_days,
        low_disk_free_bytes=config.retention.low_disk_free_bytes,
        intake_refuses_below_bytes=config.intake.min_free_disk_bytes,
    )
    return report


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def _print_spool(report: dict[str, Any]) -> None:
    print(f"spool {report['spool_dir']}")
    if "pending_instances" in report:
        print(
            f"    awaiting forwarding: {report['pending_studies']} studies,"
            f" {report['pending_instances']} instances, {_mib(report['pending_bytes'])}"
        )
        print(
            f"    forwarded, kept {report['retention_delivered_days']:g} days:"
            f" {report['delivered_studies']} studies, {report['delivered_instances']} instances,"
            f" {_mib(report['delivered_bytes'])}"
        )
        print(
            f"    quarantined: {report['quarantined']}"
            f" (kept {report['retention_quarantine_days']:g} days)"
        )
    if "disk_free_bytes" in report:
        print(
            f"    disk free {_mib(report['disk_free_bytes'])} of"
            f" {_mib(report['disk_total_bytes'])}; forwarded studies purged first below"
            f" {_mib(report['low_disk_free_bytes'])}, intake refuses below"
            f" {_mib(report['intake_refuses_below_bytes'])}"
        )


def cmd_status(
    config: ForwarderConfig, run_id: str | None, as_json: bool, spool_only: bool = False
) -> int:
    if spool_only:
        report = spool_report(config)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            _print_spool(report)
        return 0
    journal = Journal(config.database_path)
    runs = [r for r in journal.runs() if run_id is None or r.run_id == run_id]
    if as_json:
        out = [
            {
                "run_id": r.run_id,
                "model": r.model_name,
                "shadow": r.shadow,
                "pseudo_study_uid": r.pseudo_study_uid,
                "run_number": r.run_number,
                "stage": r.stage,
                "reason": r.reason,
                "updated_at": r.updated_at,
                "deliveries": [
                    {
                        "target": d.target,
                        "state": d.state,
                        "attempts": d.attempts,
                        "last_error": d.last_error,
                    }
                    for d in journal.deliveries(run_id=r.run_id)
                ],
                "timeline": [
                    {"at": at, "stage": stage, "detail": detail}
                    for at, stage, detail in journal.timeline(r.run_id)
                ],
            }
            for r in runs
        ]
        print(json.dumps(out, indent=2))
        return 0
    if run_id is None:
        _print_spool(spool_report(config))
    if not runs:
        print("no studies yet")
    for r in runs:
        model = f"{r.model_name} (shadow)" if r.shadow else r.model_name
        print(
            f"{r.run_id}  {r.stage:<16} study {r.pseudo_study_uid}  model {model or '-'}"
            f"  (updated {r.updated_at})"
        )
        if r.reason:
            print(f"    reason: {r.reason}")
        for d in journal.deliveries(run_id=r.run_id):
            print(
                f"    {d.target}: {d.state} after {d.attempts} attempt(s)"
                + (f" - {d.last_error}" if d.last_error else "")
            )
        for at, stage, detail in journal.timeline(r.run_id):
            print(f"    {at}  {stage}" + (f"  {detail}" if detail else ""))
    rejected = [x for x in journal.rejected_results() if run_id is None or x.run_id == run_id]
    if rejected:
        print(f"{len(rejected)} result message(s) rejected at the inbound boundary:")
        for x in rejected:
            print(f"    {x.at}  result rejected ({x.run_id or 'no valid run'}): {x.reason}")
    return 0


def cmd_send(folder: Path, host: str, port: int, ae_title: str, calling: str) -> int:
    """C-STORE every DICOM instance under `folder` (e.g. into the forwarder's own intake).

    DICOMDIRs and non-DICOM files (a CD's viewer, a readme) are skipped and counted, not
    sent; each instance goes in its own transfer syntax, as the same scan does for the demo.
    """
    from imaging_ai.dicom_folder import scan_folder, send_instances

    found = scan_folder(folder)
    skipped = ", ".join(f"{n} {kind}" for kind, n in found.skipped_counts().items()) or "none"
    report = send_instances(found, host, port, ae_title, calling)
    print(
        f"sent {report.sent} of {len(found.instances)} DICOM instance(s) in "
        f"{len(found.series)} series; skipped: {skipped}"
    )
    for reason, count in report.failed.items():
        print(f"  not stored: {count} ({reason})", file=sys.stderr)
    if report.failed.get("association refused"):
        return 2
    return 1 if report.failed else 0


def cmd_validate(folder: Path, model_dir: Path, out_dir: Path) -> int:
    """Run the model on the site's annotated studies through the embedded pipeline, delivering
    nowhere real, and write the validation report (it names studies: it stays on-prem)."""
    from edge_forwarder.validation.command import validate

    report = validate(folder, model_dir, out_dir)
    print(json.dumps(report.summary(), indent=2))
    print(f"report: {out_dir}")
    return 0


def cmd_retry(
    config: ForwarderConfig, run_id: str | None, target: DeliveryTarget | None, now: bool
) -> int:
    """Move dead-lettered deliveries back to PENDING (the running service picks them up)."""
    from tqdm import tqdm

    journal = Journal(config.database_path)
    rows = [
        d
        for d in journal.deliveries(state=DeliveryState.DEAD_LETTER)
        if (run_id is None or d.run_id == run_id) and (target is None or d.target == target)
    ]
    for row in rows:
        journal.set_delivery(
            row.run_id, row.target, DeliveryState.PENDING, last_error=row.last_error
        )
        journal.note(row.run_id, f"retry_requested_{row.target}")
    print(f"{len(rows)} delivery(ies) queued again")
    if now and rows:
        forwarder = build_forwarder(config)
        for _ in tqdm(range(1), desc="delivering"):
            forwarder.inbound.delivery.deliver_pending()
    return 0


def cmd_rerun(config: ForwarderConfig, study: str, model_reference: str) -> int:
    """Re-run a forwarded study whose originals are still spooled, with a pinned model version.

    STUDY is its pseudonymous study UID or one of its run ids (as `status` prints them). The
    running forwarder de-identifies and uploads it again as the next run; the cloud runs the
    pinned version and the SR it delivers revises the model's earlier SR of the study.
    """
    from edge_forwarder.intake.journal import Journal as IntakeJournal
    from edge_forwarder.intake.journal import RerunRefused

    try:
        name, version = split_model_reference(model_reference)
    except ContractError as error:
        print(f"rerun refused: {error}", file=sys.stderr)
        return 2
    routed = {model for rule in config.intake.routing for model in rule.models}
    if name not in routed:
        print(f"rerun refused: no routing rule of this site sends to {name!r}", file=sys.stderr)
        return 2
    journal = Journal(config.database_path)
    known = journal.run(study)
    runs = [known] if known is not None else journal.runs_of_study(study)
    if not runs:
        print("rerun refused: no run of this forwarder names that study or run", file=sys.stderr)
        return 2
    intake_journal = IntakeJournal(config.intake.spool_dir / "journal.sqlite3")
    try:
        run_number = intake_journal.request_rerun(runs[0].study_key, model_reference)
    except RerunRefused as error:
        print(f"rerun refused: {error}", file=sys.stderr)
        return 1
    finally:
        intake_journal.close()
    log_event("rerun_requested", study_key=runs[0].study_key, run_number=run_number,
              name=name, version=version)  # fmt: skip
    print(
        f"rerun queued: study {runs[0].pseudo_study_uid} run {run_number} with "
        f"{name}@{version or 'current'}; `status` follows it"
    )
    return 0


def cmd_purge(config: ForwarderConfig, older_than_days: float, dry_run: bool) -> int:
    """Forget finished runs (delivered, failed, dead-lettered) older than the given age."""
    from tqdm import tqdm

    journal = Journal(config.database_path)
    cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).isoformat()
    finished = [r for r in journal.runs(*_PURGEABLE) if r.updated_at < cutoff]
    if dry_run:
        for r in finished:
            print(f"would purge {r.run_id} ({r.stage})")
        return 0
    refused = 0
    for r in tqdm(finished, unit="run", desc="purge"):
        try:
            # Resolved and checked: a run id edited into the journal, or a symlinked folder,
            # cannot aim rmtree outside state_dir.
            folders = [inside(root, r.run_id) for root in (config.spool_dir, config.deliveries_dir)]
        except PathOutside:
            refused += 1
            log_event("purge_refused", logging.ERROR, reason="run folder outside state_dir")
            continue
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        journal.delete_run(r.run_id)
    if refused:
        print(f"refused {refused} run(s) whose folder is outside {config.state_dir}")
    print(f"purged {len(finished) - refused} run(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-forwarder", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("/etc/edge-forwarder/config.toml"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the forwarder service")
    status = sub.add_parser("status", help="per-study timeline")
    status.add_argument("run_id", nargs="?")
    status.add_argument("--json", action="store_true")
    status.add_argument("--spool", action="store_true", help="spool use and retention only")
    send = sub.add_parser("send", help="C-STORE a folder of DICOM files")
    send.add_argument("folder", type=Path)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=11112)
    send.add_argument("--ae-title", default="EDGE_FWD")  # the intake's default called AE
    send.add_argument("--calling-ae-title", default="SENDER")
    check = sub.add_parser("validate", help="validate a model on annotated studies (on-prem)")
    check.add_argument("folder", type=Path, help="CT studies with truth as DICOM SEG or CSV")
    check.add_argument("--model-dir", type=Path, required=True)
    check.add_argument("--out", type=Path, default=Path("validation"))
    again = sub.add_parser("retry", help="re-queue dead-lettered deliveries")
    again.add_argument("run_id", nargs="?")
    again.add_argument("--target", choices=list(DeliveryTarget), type=DeliveryTarget)
    again.add_argument("--now", action="store_true", help="deliver now, in this process")
    rerun = sub.add_parser("rerun", help="re-run a retained study with a pinned model version")
    rerun.add_argument("study", help="pseudonymous study UID or run id (from `status`)")
    rerun.add_argument("--model", required=True, help="NAME or NAME@VERSION")
    purge = sub.add_parser("purge", help="forget finished runs")
    purge.add_argument("--older-than-days", type=float, default=30.0)
    purge.add_argument("--dry-run", action="store_true")
    # Also accept `--config` after the sub-command, as operators tend to type it.
    for p in (status, send, again, rerun, purge, sub.choices["run"]):
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "send":
        return cmd_send(args.folder, args.host, args.port, args.ae_title, args.calling_ae_title)
    if args.command == "validate":
        # Its own embedded pipeline: no forwarder config, and nothing reaches the site's peers.
        return cmd_validate(args.folder, args.model_dir, args.out)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    configure_logging(config.observability.log_level)
    try:
        if args.command == "run":
            return cmd_run(config)
        if args.command == "status":
            return cmd_status(config, args.run_id, args.json, args.spool)
        if args.command == "retry":
            return cmd_retry(config, args.run_id, args.target, args.now)
        if args.command == "rerun":
            return cmd_rerun(config, args.study, args.model)
        if args.command == "purge":
            return cmd_purge(config, args.older_than_days, args.dry_run)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except ForwarderError as error:
        log_event("fatal", logging.CRITICAL, error=type(error).__name__, reason=str(error))
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
