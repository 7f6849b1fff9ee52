"""Build the forwarder service from a config, with a list-backed intake standing in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_forwarder.config import ForwarderConfig, load_config
from edge_forwarder.crosswalk import CrosswalkVault
from edge_forwarder.service import DeliverySettings, ForwarderService
from edge_forwarder.transport.backoff import Backoff
from edge_forwarder.transport.wiring import (
    build_ehr,
    build_pacs,
    build_parts,
    build_poller,
    build_uploader,
    identity_from_crosswalk,
)
from imaging_ai.contracts import DeidRecord
from imaging_ai.deid import Deidentifier, DeidOptions


def service_from_config(path: Path, intake: Any) -> tuple[ForwarderService, ForwarderConfig]:
    config = load_config(path)
    parts = build_parts(config)
    options = DeidOptions()
    deidentifier = Deidentifier(config.deid.site_secret.read(), options)
    config.crosswalk.path.parent.mkdir(parents=True, exist_ok=True)
    vault = CrosswalkVault(config.crosswalk.path, config.crosswalk.key.read())

    def lookup(pseudo: str) -> Any:
        entry = vault.study_by_pseudo(pseudo)
        return None if entry is None else identity_from_crosswalk(entry)

    service = ForwarderService(
        site=config.site,
        state_dir=config.state_dir,
        journal=parts.journal,
        intake=intake,
        deidentifier=deidentifier,
        crosswalk=vault,
        identity_lookup=lookup,
        deid_record=lambda r: DeidRecord(
            table_edition=r.table_edition,
            options=options.option_names(),
            method_codes=list(r.method_codes) or ["113100"],
        ),
        pseudo_ids=lambda r: (
            r.pseudo.study_instance_uid,
            r.pseudo.series_instance_uid,
            r.pseudo.sop_instance_uid,
        ),
        uploader=build_uploader(config, parts),
        poller=build_poller(config),
        ehr=build_ehr(config),
        delivery=DeliverySettings(
            pacs=build_pacs(config),
            pacs_attempts=config.pacs.max_attempts,
            pacs_backoff=Backoff(config.pacs.retry_base_s, 0.2),
            ehr_attempts=config.ehr.max_attempts,
            ehr_backoff=Backoff(config.ehr.retry_base_s, 0.2),
            patient_identifier_system=config.ehr.patient_identifier_system,
            accession_identifier_system=config.ehr.accession_identifier_system,
        ),
        audit=parts.audit,
        metrics=parts.metrics,
        health=parts.health,
        poll_interval_s=config.poll_interval_s,
    )
    return service, config
