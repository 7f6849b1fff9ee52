"""DICOM TLS to a real DCMTK storescp: our client certificate gets us in; a fake PACS does not."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_forwarder.composition import pacs_peer
from edge_forwarder.config import PacsSection, PacsTlsSection
from edge_forwarder.transport.errors import TransientError
from edge_forwarder.transport.pacs import PacsPeer, client_tls_context, store
from tests.integration.transport.conftest import Pacs, start_storescp
from tests.tls_support import Issued, TestCa

pytestmark = pytest.mark.integration


@pytest.fixture
def hospital_ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki", "hospital")


def _tls_storescp(folder: Path, server: Issued, trusted_client_ca: Path) -> Pacs:
    # -rc: the PACS refuses a peer without a certificate from the CA it trusts.
    return start_storescp(
        folder,
        extra=["+tls", str(server.key), str(server.cert), "-pw", "+cf", str(trusted_client_ca)],
    )


@pytest.fixture
def tls_pacs(tmp_path: Path, hospital_ca: TestCa) -> Iterator[Pacs]:
    server = hospital_ca.issue("pacs", server=True)
    peer = _tls_storescp(tmp_path / "pacs", server, hospital_ca.cert)
    yield peer
    peer.process.terminate()
    peer.process.wait(10)


def _sample() -> bytes:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_client_certificate_from_the_hospital_ca_delivers(
    tls_pacs: Pacs, hospital_ca: TestCa
) -> None:
    # Given a PACS that requires a client certificate from the hospital CA, and [pacs.tls]
    # naming the CA, our certificate from it and its key
    ours = hospital_ca.issue("edge-forwarder", server=False)
    section = PacsSection(
        host="127.0.0.1",
        port=tls_pacs.port,
        ae_title="PACS",
        timeout_s=10,
        tls=PacsTlsSection(ca_file=hospital_ca.cert, cert_file=ours.cert, key_file=ours.key),
    )
    # When the forwarder's PACS peer, built from that section, C-STOREs
    statuses = pacs_peer(section).store([_sample()])
    # Then the PACS stored it
    assert statuses == [0x0000]
    assert len(tls_pacs.received()) == 1


def test_without_client_certificate_the_pacs_lets_nothing_in(
    tls_pacs: Pacs, hospital_ca: TestCa
) -> None:
    # Given our TLS settings without a client certificate (the PACS requires one)
    peer = PacsPeer(
        "127.0.0.1",
        tls_pacs.port,
        "PACS",
        timeout_s=10,
        ssl_context=client_tls_context(hospital_ca.cert, None, None),
    )
    # When we try to deliver, Then the association fails and nothing was stored
    with pytest.raises(TransientError):
        store(peer, [_sample()])
    assert tls_pacs.received() == []


def _forwarder_is_refused_by(listener: Pacs, hospital_ca: TestCa) -> None:
    """Deliver to `listener` with our hospital-issued certificate: the TLS handshake must fail
    (TransientError) and the listener receive nothing. Stops the listener."""
    try:
        ours = hospital_ca.issue("edge-forwarder", server=False)
        peer = PacsPeer(
            "127.0.0.1",
            listener.port,
            "PACS",
            timeout_s=10,
            ssl_context=client_tls_context(hospital_ca.cert, ours.cert, ours.key),
        )
        with pytest.raises(TransientError):
            store(peer, [_sample()])
        assert listener.received() == []
    finally:
        listener.process.terminate()
        listener.process.wait(10)


def test_a_peer_posing_as_pacs_with_another_ca_gets_no_result(
    tmp_path: Path, hospital_ca: TestCa
) -> None:
    # Given a listener on the PACS address whose certificate a different CA signed
    rogue_ca = TestCa(tmp_path / "rogue-pki", "rogue")
    rogue = _tls_storescp(
        tmp_path / "rogue", rogue_ca.issue("pacs", server=True), trusted_client_ca=hospital_ca.cert
    )
    # When we deliver, Then the handshake fails on its certificate: it received nothing
    _forwarder_is_refused_by(rogue, hospital_ca)


def test_pacs_certificate_for_another_name_is_refused(tmp_path: Path, hospital_ca: TestCa) -> None:
    # Given a PACS whose (hospital-signed) certificate names another host than we dial
    other = _tls_storescp(
        tmp_path / "other",
        hospital_ca.issue("other", server=True, san="other-pacs.hospital.example"),
        hospital_ca.cert,
    )
    # When we deliver, Then the name check refuses it: it received nothing
    _forwarder_is_refused_by(other, hospital_ca)
