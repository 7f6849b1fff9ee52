"""Build the service's parts from a validated config (the only place that knows them all)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_forwarder.config import ForwarderConfig
from edge_forwarder.crosswalk import StudyCrosswalk
from edge_forwarder.observability import AuditTrail, HealthState, Metrics
from edge_forwarder.transport.backoff import Backoff
from edge_forwarder.transport.ehr import EhrClient, token_source_from_files
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.pacs import PacsPeer, client_tls_context
from edge_forwarder.transport.reidentify import Identity
from edge_forwarder.transport.results import ResultsPoller
from edge_forwarder.transport.uploader import Uploader, UploadSettings

FORWARDER_VERSION = "0.1.0"


def identity_from_crosswalk(entry: StudyCrosswalk) -> Identity:
    """Adapt the crosswalk vault's StudyCrosswalk to what re-identification needs."""
    return Identity(
        pseudo_study_uid=entry.pseudo_study_uid,
        original_study_uid=entry.study_instance_uid,
        uid_map={**entry.series, **entry.frames_of_reference, **entry.instances},
        patient_name=entry.patient_name,
        patient_id=entry.patient_id,
        patient_birth_date=entry.patient_birth_date,
        patient_sex=entry.patient_sex,
        accession_number=entry.accession_number,
        pseudo_patient_id=entry.pseudo_patient_id,
        study_date=entry.study_date or None,
        study_time=entry.study_time or None,
    )


@dataclass
class Parts:
    journal: Journal
    metrics: Metrics
    health: HealthState
    audit: AuditTrail


def build_parts(config: ForwarderConfig) -> Parts:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Parts(
        journal=Journal(config.database_path),
        metrics=Metrics(),
        health=HealthState(stale_after_s=max(120.0, 6 * config.results.wait_time_s)),
        audit=AuditTrail(config.audit_log_path, config.site),
    )


def build_uploader(config: ForwarderConfig, parts: Parts) -> Uploader:
    return Uploader(
        UploadSettings(
            bucket=config.aws.bucket,
            kms_key_arn=config.aws.kms_key_arn,
            site=config.site,
            model_name=config.aws.model_name,
            forwarder_version=FORWARDER_VERSION,
            part_size=config.upload.part_size_mib * 1024 * 1024,
            parallel_parts=config.upload.parallel_parts,
            bandwidth_limit_bytes_s=config.upload.bandwidth_limit_mbps * 1e6 / 8,
            backoff=Backoff(config.upload.base_backoff_s, config.upload.max_backoff_s),
        ),
        parts.journal,
        on_bytes=parts.metrics.uploaded_bytes.inc,
        on_retry=lambda attempt, error, wait: parts.metrics.upload_retries.inc(),
    )


def build_poller(config: ForwarderConfig) -> ResultsPoller:
    return ResultsPoller(
        site=config.site,
        bucket=config.aws.bucket,
        kms_key_arn=config.aws.kms_key_arn,
        queue_name=config.results_queue_name,
        wait_time_s=config.results.wait_time_s,
        visibility_timeout_s=config.results.visibility_timeout_s,
        region=config.aws.region,
    )


def build_ehr(config: ForwarderConfig) -> EhrClient:
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


def build_pacs(config: ForwarderConfig) -> PacsPeer:
    p = config.pacs
    if p.tls is None:
        return PacsPeer(p.host, p.port, p.ae_title, p.calling_ae_title, p.timeout_s)
    return PacsPeer(
        p.host,
        p.port,
        p.ae_title,
        p.calling_ae_title,
        p.timeout_s,
        ssl_context=client_tls_context(p.tls.ca_file, p.tls.cert_file, p.tls.key_file),
        server_name=p.tls.server_name,
    )
