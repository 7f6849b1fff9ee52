"""The forwarder's validated TOML config file: one model composing every section."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_forwarder.intake.settings import IntakeSettings
from edge_forwarder.result_objects import DEFAULT_PACS_OBJECTS, ResultObject
from edge_forwarder.secret_files import read_private
from edge_forwarder.transport.errors import ConfigError
from imaging_ai.contracts import check_site, site_results_queue_name
from imaging_ai.errors import ContractError


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Section):
    """A secret read from a file (preferred: mode 0600) or an environment variable, as hex."""

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def read(self) -> bytes:
        if self.file is not None:
            try:
                text = read_private(self.file).decode("ascii").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"secret file {self.file} must be hex encoded") from None
        else:
            text = os.environ.get(str(self.env), "").strip()
            if not text:
                raise ConfigError(f"environment variable {self.env} is empty or unset")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ConfigError("secret must be hex encoded") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_https(url: str) -> str:
    """https, or http to this machine only: a bearer token or PHI never crosses a wire in clear."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("must be an absolute URL with a host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url
    raise ValueError("must use https (plain http is accepted only on loopback)")


class DeidSection(_Section):
    site_secret: SecretRef
    # Passed to edge_forwarder.deid.DeidOptions; that model validates the names.
    options: dict[str, Any] = Field(default_factory=dict)


class CrosswalkSection(_Section):
    path: Path
    key: SecretRef


class AwsSection(_Section):
    bucket: str = Field(min_length=3, max_length=63)
    kms_key_arn: str = Field(pattern=r"^arn:aws[a-z-]*:kms:")
    # Default: the contract's per-site queue name, resolved to a URL at start.
    results_queue_name: str | None = None
    region: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model_name" in data:
            raise ValueError(
                "aws.model_name is gone: every [[intake.routing]] rule names its model(s)"
            )
        return data


class UploadSection(_Section):
    # S3 refuses parts under 5 MiB (except the last one).
    part_size_mib: int = Field(default=8, ge=5, le=512)
    parallel_parts: int = Field(default=4, ge=1, le=32)
    # 0 = unlimited; hospitals often cap the WAN share of a forwarder.
    bandwidth_limit_mbps: float = Field(default=0.0, ge=0.0)
    max_backoff_s: float = Field(default=60.0, gt=0.0)
    base_backoff_s: float = Field(default=0.5, gt=0.0)


class ResultsSection(_Section):
    wait_time_s: int = Field(default=20, ge=0, le=20)
    visibility_timeout_s: int = Field(default=300, ge=10)


class PacsTlsSection(_Section):
    """DICOM TLS (PS3.15 B.1) to the PACS: verify its certificate, present ours."""

    ca_file: Path  # the CA that signed the PACS's certificate (PEM)
    cert_file: Path | None = None  # our client certificate (PEM); with key_file
    key_file: Path | None = None  # its private key (PEM, mode 0600)
    # The name the PACS certificate must carry; default: pacs.host. Never skipped.
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> PacsTlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both 'cert_file' and 'key_file', or neither")
        return self


class PacsSection(_Section):
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(min_length=1, max_length=16)
    calling_ae_title: str = Field(default="EDGEFWD", min_length=1, max_length=16)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=2.0, ge=0.0)
    timeout_s: float = Field(default=30.0, gt=0.0)
    tls: PacsTlsSection | None = None
    # A one-line Basic Text SR into the study when the cloud did not analyze it.
    not_analyzed_notice: bool = False
    # What this destination receives: sr, seg, key_images (burned-in Secondary Capture), pdf.
    objects: list[ResultObject] = Field(default_factory=lambda: list(DEFAULT_PACS_OBJECTS))

    @field_validator("objects")
    @classmethod
    def _objects(cls, value: list[ResultObject]) -> list[ResultObject]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list each result object once, at least one")
        return value


class ExtraPacsSection(PacsSection):
    """One more PACS (e.g. a viewer that shows neither SR nor SEG), with its own objects."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")


class Hl7Section(_Section):
    """The optional HL7 v2 ORU^R01 destination (a RIS or EHR interface engine, over MLLP)."""

    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = Field(default="EDGEFWD", max_length=180)
    sending_facility: str = Field(default="", max_length=180)
    receiving_application: str = Field(default="", max_length=180)
    receiving_facility: str = Field(default="", max_length=180)
    # PID-3.4: the assigning authority of the hospital MRN the ORU carries.
    patient_id_authority: str = Field(default="", max_length=180)
    processing_id: str = Field(default="P", pattern=r"^[PTD]$")
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=2.0, ge=0.0)


class OAuth2Section(_Section):
    """SMART backend services: client credentials, secret or private-key JWT assertion."""

    token_url: str
    client_id: str
    scope: str = "system/*.write"
    client_secret: SecretRef | None = None
    private_key_file: Path | None = None  # PEM, RS384 assertion (SMART backend services)
    key_id: str | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> OAuth2Section:
        if (self.client_secret is None) == (self.private_key_file is None):
            raise ValueError("give exactly one of 'client_secret' or 'private_key_file'")
        return self

    _https = field_validator("token_url")(check_https)


class EhrSection(_Section):
    base_url: str
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=2.0, ge=0.0)
    # The hospital's MRN identifier system, written on the re-identified Patient.
    patient_identifier_system: str = "urn:oid:2.16.840.1.113883.3.9999.1"
    accession_identifier_system: str = "urn:oid:2.16.840.1.113883.3.9999.2"
    oauth2: OAuth2Section | None = None

    _https = field_validator("base_url")(check_https)


class CriticalSection(_Section):
    """Where a critical finding (the model card says which) is announced at once: the EHR
    as a FHIR Communication (default), or a webhook that receives the same JSON."""

    channel: Literal["ehr", "webhook"] = "ehr"
    webhook_url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0.0)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=0.5, ge=0.0)

    @field_validator("webhook_url")
    @classmethod
    def _https_webhook(cls, url: str | None) -> str | None:
        return None if url is None else check_https(url)

    @model_validator(mode="after")
    def _webhook_named(self) -> CriticalSection:
        if self.channel == "webhook" and not self.webhook_url:
            raise ValueError("channel 'webhook' needs a webhook_url")
        return self


class ObservabilitySection(_Section):
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)  # 0 = no HTTP endpoint
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    audit_log: Path | None = None  # default: <state_dir>/audit.jsonl


class RetentionSection(_Section):
    """How long identified originals stay on the edge once forwarded, and the low-disk rule."""

    # Original instances of a forwarded study, and quarantined ones, after this many days.
    delivered_days: float = Field(default=7.0, gt=0.0)
    quarantine_days: float = Field(default=7.0, gt=0.0)
    # Below this much free space in the spool, forwarded studies go first, oldest first,
    # before their time: intake refuses at intake.min_free_disk_bytes, which must be lower.
    low_disk_free_bytes: int = Field(default=2 * 1024**3, ge=0)
    check_interval_s: float = Field(default=10.0, gt=0.0)


class ModelMode(StrEnum):
    LIVE = "live"  # results go to the PACS and the EHR
    # Runs and keeps its results in the cloud and on the edge, never sends them to the PACS
    # or the EHR: a model is tried at a site before go-live, then promoted by setting "live".
    SHADOW = "shadow"


class ModelSection(_Section):
    """How this site runs one model (the routing rules decide which studies reach it)."""

    mode: ModelMode = ModelMode.LIVE


class ForwarderConfig(_Section):
    """The whole config file; `load_config` turns errors into messages that name the field."""

    site: str
    state_dir: Path
    poll_interval_s: float = Field(default=2.0, gt=0.0)
    intake: IntakeSettings
    deid: DeidSection
    crosswalk: CrosswalkSection
    aws: AwsSection
    upload: UploadSection = UploadSection()
    results: ResultsSection = ResultsSection()
    pacs: PacsSection
    extra_pacs: list[ExtraPacsSection] = Field(default_factory=list)
    ehr: EhrSection
    hl7: Hl7Section | None = None  # off unless configured
    critical: CriticalSection = CriticalSection()
    observability: ObservabilitySection = ObservabilitySection()
    retention: RetentionSection = RetentionSection()
    # Per model, by the name routing rules use: [models.NAME] mode = "shadow".
    models: dict[str, ModelSection] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _models_are_routed(self) -> ForwarderConfig:
        # A misspelt name would leave the intended shadow model live: refuse it instead.
        routed = {model for rule in self.intake.routing for model in rule.models}
        unknown = sorted(set(self.models) - routed)
        if unknown:
            raise ValueError(f"[models] names models no routing rule sends to: {unknown}")
        return self

    @property
    def shadow_models(self) -> frozenset[str]:
        return frozenset(n for n, m in self.models.items() if m.mode is ModelMode.SHADOW)

    @model_validator(mode="after")
    def _retention_before_refusal(self) -> ForwarderConfig:
        # Retention must free space before intake starts refusing modalities, not after.
        if self.retention.low_disk_free_bytes <= self.intake.min_free_disk_bytes:
            raise ValueError(
                "retention.low_disk_free_bytes must be above intake.min_free_disk_bytes"
            )
        return self

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        try:
            return check_site(value)
        except ContractError as error:
            raise ValueError(str(error)) from None

    @field_validator("extra_pacs")
    @classmethod
    def _extra_pacs(cls, value: list[ExtraPacsSection]) -> list[ExtraPacsSection]:
        names = [destination.name for destination in value]
        if len(set(names)) != len(names) or "pacs" in names:
            raise ValueError("each extra PACS needs its own name (and 'pacs' is the main one)")
        return value

    @property
    def results_queue_name(self) -> str:
        return self.aws.results_queue_name or site_results_queue_name(self.site)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "forwarder.sqlite"

    @property
    def spool_dir(self) -> Path:
        """The outbox: one folder per run, its encrypted series and manifest until uploaded."""
        return self.state_dir / "outbox"

    @property
    def deliveries_dir(self) -> Path:
        """One folder per run (mode 0700): re-identified results until PACS and EHR have them."""
        return self.state_dir / "deliveries"

    @property
    def audit_log_path(self) -> Path:
        return self.observability.audit_log or self.state_dir / "audit.jsonl"

    def secret_files(self) -> list[Path]:
        """Every file whose content is a secret: each must be readable by its owner only."""
        refs = [self.deid.site_secret, self.crosswalk.key]
        oauth = self.ehr.oauth2
        paths = [ref.file for ref in refs if ref.file is not None]
        if oauth is not None:
            if oauth.client_secret is not None and oauth.client_secret.file is not None:
                paths.append(oauth.client_secret.file)
            if oauth.private_key_file is not None:
                paths.append(oauth.private_key_file)
        if self.pacs.tls is not None and self.pacs.tls.key_file is not None:
            paths.append(self.pacs.tls.key_file)
        if self.intake.tls_key is not None:
            paths.append(self.intake.tls_key)
        return paths


def describe_errors(error: ValidationError) -> str:
    """One line per problem, `section.field: message`, never echoing the (maybe secret) value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "(file)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> ForwarderConfig:
    try:
        return ForwarderConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def load_config(path: Path) -> ForwarderConfig:
    """Read and validate a TOML config file; relative paths resolve against its folder."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(_resolve_paths(data, path.parent.resolve()))


_PATH_FIELDS = {
    ("state_dir",),
    ("intake", "spool_dir"),
    ("intake", "tls_cert"),
    ("intake", "tls_key"),
    ("intake", "tls_ca"),
    ("crosswalk", "path"),
    ("crosswalk", "key", "file"),
    ("deid", "site_secret", "file"),
    ("ehr", "oauth2", "private_key_file"),
    ("ehr", "oauth2", "client_secret", "file"),
    ("pacs", "tls", "ca_file"),
    ("pacs", "tls", "cert_file"),
    ("pacs", "tls", "key_file"),
    ("observability", "audit_log"),
}


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for field_path in _PATH_FIELDS:
        node: Any = data
        for part in field_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        leaf = field_path[-1]
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = str(base / Path(node[leaf]).expanduser())
    return data
