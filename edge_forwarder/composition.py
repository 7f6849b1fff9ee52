"""The composition root: the one place that builds the forwarder from its config.

`edge-forwarder run` (and through it the local runtime), `edge-forwarder retry --now` and the
transport tests all build the forwarder here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from edge_forwarder.config import (
    CriticalSection,
    EhrSection,
    ForwarderConfig,
    Hl7Section,
    PacsSection,
)
from edge_forwarder.crosswalk import CrosswalkVault
from edge_forwarder.deid import Deidentifier, DeidOptions
from edge_forwarder.delivery import Delivery, PacsDestination
from edge_forwarder.inbound import IdentifierSystems, Inbound
from edge_forwarder.intake import Intake
from edge_forwarder.observability import AuditTrail, HealthState, Metrics, Telemetry
from edge_forwarder.on_prem_reports import OnPremReports
from edge_forwarder.oru import OruParties
from edge_forwarder.outbound import CompletedStudies, Outbound
from edge_forwarder.result_objects import ResultObject
from edge_forwarder.retention import RetentionLoop, build_retention
from edge_forwarder.secret_files import check_all_private
from edge_forwarder.service import ForwarderService
from edge_forwarder.transport.backoff import Backoff, RetryPolicy
from edge_forwarder.transport.ehr import EhrClient, token_source_from_files
from edge_forwarder.transport.hl7 import MllpPeer
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.pacs import PacsPeer, client_tls_context
from edge_forwarder.transport.results import ResultsPoller
from edge_forwarder.transport.uploader import Uploader, UploadSettings
from edge_forwarder.transport.webhook import WebhookClient

FORWARDER_VERSION = "0.1.0"


@dataclass
class Forwarder:
    """Everything `edge-forwarder run` starts and stops."""

    service: ForwarderService
    journal: Journal
    telemetry: Telemetry
    listener: Intake | None  # the C-STORE SCP, where the intake is the real one
    retention: RetentionLoop | None = None  # purges the real intake's spool

    @property
    def outbound(self) -> Outbound:
        return self.service.outbound

    @property
    def inbound(self) -> Inbound:
        return self.service.inbound

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        if self.retention is not None:
            self.retention.start()
        self.service.start()

    def stop(self) -> None:
        self.service.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.listener is not None:
            self.listener.stop()
        self.journal.close()


def build_forwarder(
    config: ForwarderConfig,
    intake: CompletedStudies | None = None,
    max_backoff_s: float = 60.0,
) -> Forwarder:
    """Build the forwarder as deployed: the real intake unless one is given.

    Tests pass a list-backed intake and a short backoff cap; everything else is as deployed.
    """
    # Before anything opens or listens: a key others can read means the start is refused.
    check_all_private(config.secret_files())
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    journal = Journal(config.database_path)
    telemetry = Telemetry(
        metrics=Metrics(),
        health=HealthState(stale_after_s=max(120.0, 6 * config.results.wait_time_s)),
        audit=AuditTrail(config.audit_log_path, config.site),
    )
    stop = threading.Event()
    vault = CrosswalkVault(config.crosswalk.path, config.crosswalk.key.read())
    listener: Intake | None = None
    if intake is None:
        intake = listener = Intake(config.intake)
    outbound = Outbound(
        site=config.site,
        journal=journal,
        intake=intake,
        deidentifier=Deidentifier(
            config.deid.site_secret.read(), DeidOptions(**config.deid.options)
        ),
        crosswalk=vault,
        uploader=_uploader(config, journal, telemetry.metrics),
        telemetry=telemetry,
        outbox=config.spool_dir,
        stop=stop,
        shadow_models=config.shadow_models,
    )
    delivery = Delivery(
        journal=journal,
        pacs=pacs_peer(config.pacs),
        ehr=_ehr(config),
        pacs_retry=_retry_policy(config.pacs, max_backoff_s),
        ehr_retry=_retry_policy(config.ehr, max_backoff_s),
        telemetry=telemetry,
        deliveries_dir=config.deliveries_dir,
        stop=stop,
        pacs_objects=tuple(config.pacs.objects),
        extra_pacs=[
            PacsDestination(
                extra.name,
                pacs_peer(extra),
                tuple(extra.objects),
                _retry_policy(extra, max_backoff_s),
            )
            for extra in config.extra_pacs
        ],
        hl7=MllpPeer(config.hl7.host, config.hl7.port, config.hl7.timeout_s)
        if config.hl7
        else None,
        hl7_retry=_retry_policy(config.hl7 or config.pacs, max_backoff_s),
        critical=_critical_notifier(config),
        critical_retry=_retry_policy(config.critical, max_backoff_s),
    )
    inbound = Inbound(
        journal=journal,
        results=_results(config),
        identities=vault,
        identifier_systems=IdentifierSystems(
            patient=config.ehr.patient_identifier_system,
            accession=config.ehr.accession_identifier_system,
        ),
        delivery=delivery,
        telemetry=telemetry,
        deliveries_dir=config.deliveries_dir,
        reports=_on_prem_reports(config),
        not_analyzed_notice=config.pacs.not_analyzed_notice,
    )
    service = ForwarderService(outbound, inbound, telemetry, stop, config.poll_interval_s)
    retention = None
    if listener is not None:
        retention = build_retention(
            config.retention,
            listener.journal,
            listener.spool.root,
            telemetry.audit,
            lambda study_key, run_number: _pseudo_study_uid(journal, study_key, run_number),
        )
    return Forwarder(
        service=service,
        journal=journal,
        telemetry=telemetry,
        listener=listener,
        retention=retention,
    )


def _pseudo_study_uid(journal: Journal, study_key: str, run_number: int) -> str | None:
    runs = journal.runs_for(study_key, run_number)
    return runs[0].pseudo_study_uid if runs else None


def pacs_peer(section: PacsSection) -> PacsPeer:
    """The PACS peer of `[pacs]`, with its DICOM TLS context when `[pacs.tls]` is set."""
    tls = section.tls
    return PacsPeer(
        section.host,
        section.port,
        section.ae_title,
        section.calling_ae_title,
        section.timeout_s,
        ssl_context=None
        if tls is None
        else client_tls_context(tls.ca_file, tls.cert_file, tls.key_file),
        server_name=None if tls is None else tls.server_name,
    )


def _uploader(config: ForwarderConfig, journal: Journal, metrics: Metrics) -> Uploader:
    return Uploader(
        UploadSettings(
            bucket=config.aws.bucket,
            kms_key_arn=config.aws.kms_key_arn,
            site=config.site,
            forwarder_version=FORWARDER_VERSION,
            part_size=config.upload.part_size_mib * 1024 * 1024,
            parallel_parts=config.upload.parallel_parts,
            bandwidth_limit_bytes_s=config.upload.bandwidth_limit_mbps * 1e6 / 8,
            backoff=Backoff(config.upload.base_backoff_s, config.upload.max_backoff_s),
        ),
        journal,
        on_bytes=metrics.uploaded_bytes.inc,
        on_retry=lambda attempt, error, wait: metrics.upload_retries.inc(),
    )


def _on_prem_reports(config: ForwarderConfig) -> OnPremReports | None:
    """The PDF where a PACS destination lists it; the ORU where `[hl7]` is configured."""
    pdf = any(ResultObject.PDF in p.objects for p in (config.pacs, *config.extra_pacs))
    hl7 = config.hl7
    if not pdf and hl7 is None:
        return None
    parties = None
    if hl7 is not None:
        parties = OruParties(
            sending_application=hl7.sending_application,
            sending_facility=hl7.sending_facility,
            receiving_application=hl7.receiving_application,
            receiving_facility=hl7.receiving_facility,
            patient_id_authority=hl7.patient_id_authority,
            processing_id=hl7.processing_id,
        )
    return OnPremReports(pdf=pdf, oru=parties)


def _results(config: ForwarderConfig) -> ResultsPoller:
    return ResultsPoller(
        site=config.site,
        bucket=config.aws.bucket,
        kms_key_arn=config.aws.kms_key_arn,
        queue_name=config.results_queue_name,
        wait_time_s=config.results.wait_time_s,
        visibility_timeout_s=config.results.visibility_timeout_s,
        region=config.aws.region,
    )


def _retry_policy(
    target: PacsSection | EhrSection | Hl7Section | CriticalSection, max_backoff_s: float
) -> RetryPolicy:
    return RetryPolicy(target.max_attempts, Backoff(target.retry_base_s, max_backoff_s))


def _critical_notifier(config: ForwarderConfig) -> WebhookClient | None:
    """The webhook where configured; None lets Delivery send a Communication to the EHR."""
    section = config.critical
    if section.channel == "webhook" and section.webhook_url:
        return WebhookClient(section.webhook_url, timeout_s=section.timeout_s)
    return None


def _ehr(config: ForwarderConfig) -> EhrClient:
    tokens = None
    oauth = config.ehr.oauth2
    if oauth is not None:
        tokens = token_source_from_files(
            oauth.token_url,
            oauth.client_id,
            oauth.scope,
            client_secret=oauth.client_secret.read() if oauth.client_secret else None,
            private_key_file=oauth.private_key_file,
            key_id=oauth.key_id,
        )
    return EhrClient(config.ehr.base_url, timeout_s=config.ehr.timeout_s, tokens=tokens)
