"""Real peers: Orthanc forwards a study through its modality store; DICOM TLS with client certs."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE
from pynetdicom.association import Association

from edge_forwarder.intake import Intake
from edge_forwarder.intake.settings import SenderRule
from imaging_ai.local.orthanc import orthanc_binary, start_orthanc
from tests.integration.intake.conftest import SpooledStudy

pytestmark = pytest.mark.integration
LATER = 3600.0
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.skipif(orthanc_binary() is None, reason="Debian package 'orthanc' not installed")
def test_orthanc_forwards_a_study_through_its_modality_store(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given our SCP accepting only Orthanc's AE title, and Orthanc knowing it as a modality
    intake = start_intake(
        senders=[SenderRule(name="orthanc", ae_title="ORTHANC", addresses=["127.0.0.1"])]
    )
    peer = {"edge": ("EDGE_FWD", "127.0.0.1", intake.port)}
    pacs = start_orthanc(tmp_path / "orthanc", modalities=peer)
    try:
        for path in study.paths:
            upload = requests.post(f"{pacs.rest_url}/instances", data=path.read_bytes(), timeout=10)
            upload.raise_for_status()
        [orthanc_study] = requests.get(f"{pacs.rest_url}/studies", timeout=10).json()
        # When Orthanc is asked to C-STORE the study to the forwarder
        stored = requests.post(
            f"{pacs.rest_url}/modalities/edge/store",
            json={"Resources": [orthanc_study], "Synchronous": True},
            timeout=60,
        )
    finally:
        pacs.stop()
    assert stored.status_code == 200, stored.text
    # Then the intake completes the study once, with every instance Orthanc had
    [done] = intake.poll_completed(now=time.time() + LATER)
    spooled = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for files in done.series.values()
        for p in files
    }
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.paths}
    assert spooled == sent
    assert len(done.series) == len(study.series)
    assert intake.poll_completed(now=time.time() + LATER) == []


@dataclass
class _Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _make_pki(folder: Path, label: str) -> _Pki:
    """A throwaway CA with one server and one client certificate, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(f"{label} test CA", ca_key, None)
    files: dict[str, Path] = {}
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"{label} {role}", key, (ca.subject, ca_key), usage)
        files[f"{role}_cert"] = folder / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = folder / f"{role}.key"
        files[f"{role}_key"].write_bytes(_key_pem(key))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return _Pki(ca=folder / "ca.pem", **files)


def _client_context(trusted_ca: Path, client: _Pki | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted_ca))
    if client is not None:
        context.load_cert_chain(client.client_cert, client.client_key)
    return context


def _associate(port: int, tls: ssl.SSLContext | None) -> Association:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(CT)
    tls_args = (tls, "localhost") if tls is not None else None
    return ae.associate("127.0.0.1", port, ae_title="EDGE_FWD", tls_args=tls_args)


def test_tls_scp_stores_from_a_trusted_client_and_refuses_the_others(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given the SCP on DICOM TLS, requiring a client certificate from the site CA
    site, stranger = _make_pki(tmp_path / "site", "site"), _make_pki(tmp_path / "other", "other")
    intake = start_intake(tls_cert=site.server_cert, tls_key=site.server_key, tls_ca=site.ca)
    # When a modality with a site-signed certificate stores a study over TLS
    assoc = _associate(intake.port, _client_context(site.ca, site))
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in study.paths]
    finally:
        assoc.release()
    # Then every instance is acknowledged and the study completes
    assert set(statuses) == {0}
    [done] = intake.poll_completed(now=time.time() + LATER)
    assert sum(len(files) for files in done.series.values()) == len(study.paths)
    # And a plain-TCP client, a client without a certificate and one whose certificate
    # another CA signed never get an association
    refused = {
        "plain": None,
        "no_client_cert": _client_context(site.ca, None),
        "wrong_ca": _client_context(site.ca, stranger),
    }
    for label, context in refused.items():
        attempt = _associate(intake.port, context)
        established = attempt.is_established
        if established:
            attempt.release()
        assert not established, label
    # and the SCP still serves the trusted client afterwards
    again = _associate(intake.port, _client_context(site.ca, site))
    assert again.is_established
    again.release()


def test_a_peer_that_never_starts_tls_does_not_block_the_others(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    # Given the SCP on mutual TLS, and a peer that opens TCP connections but never says hello
    site = _make_pki(tmp_path / "site", "site")
    intake = start_intake(
        tls_cert=site.server_cert, tls_key=site.server_key, tls_ca=site.ca, acse_timeout_s=30
    )
    silent = [socket.create_connection(("127.0.0.1", intake.port)) for _ in range(3)]
    try:
        # When a trusted modality connects meanwhile
        started = time.monotonic()
        assoc = _associate(intake.port, _client_context(site.ca, site))
        # Then it gets its association at once, not after the silent peers time out
        assert assoc.is_established
        assoc.release()
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.events.append(record.getMessage())


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        ({"senders": [], "allow_any_sender": True}, "intake_accepts_any_sender"),
        ({"tls_ca": None}, "intake_tls_without_client_authentication"),
    ],
)
def test_a_weakened_setup_is_said_at_every_start(
    start_intake: Callable[..., Intake],
    tmp_path: Path,
    settings: dict[str, object],
    warning: str,
) -> None:
    site = _make_pki(tmp_path / "site", "site")
    tls = {"tls_cert": site.server_cert, "tls_key": site.server_key, "tls_ca": site.ca}
    records = _Records()
    intake_log = logging.getLogger("edge_forwarder.intake")
    saved = intake_log.level
    intake_log.setLevel(logging.INFO)
    intake_log.addHandler(records)
    try:
        # When the intake starts twice with the setting
        for _ in range(2):
            start_intake(**{**tls, **settings}).stop()
    finally:
        intake_log.removeHandler(records)
        intake_log.setLevel(saved)
    # Then each start logs the warning; the default (mutual TLS, named senders) logs none
    assert records.events.count(warning) == 2
    assert set(records.events) == {warning}
