"""Our clients turn Nagle's algorithm off: the PACS C-STORE SCU and the EHR's HTTP client."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from edge_forwarder.transport.ehr import EhrClient
from edge_forwarder.transport.pacs import PacsPeer, open_association
from imaging_ai.http_handler import QuietHandler
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from tests.integration.transport.conftest import Pacs

pytestmark = pytest.mark.integration


def test_the_pacs_association_has_tcp_nodelay(pacs: Pacs) -> None:
    # Given a real PACS (DCMTK storescp) and one CT slice to deliver
    phantom = make_chest_phantom(3, shape=(1, 16, 16), spacing_mm=(2.0, 2.0, 2.0))
    uid = pydicom.uid.generate_uid
    [ds] = list(iter_ct_slices(phantom, FakePatient(), uid(), uid(), uid()))
    # When the forwarder opens its C-STORE association
    assoc = open_association(PacsPeer("127.0.0.1", pacs.port, pacs.ae_title), [ds])
    try:
        # Then its socket has Nagle's algorithm off
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


class _FhirStub(QuietHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection goes back to its pool

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
        self.reply(200, body, "application/fhir+json")


@pytest.fixture
def fhir_stub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FhirStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def test_the_ehr_connection_has_tcp_nodelay(fhir_stub: str, tmp_path: Path) -> None:
    # Given the EHR client on a session whose pooled connection we can look at afterwards
    session = requests.Session()
    client = EhrClient(fhir_stub, timeout_s=10, session=session)
    # When it posts a transaction
    client.post_transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    # Then the connection it used (urllib3's default socket options) has Nagle off
    pools = session.get_adapter(fhir_stub).poolmanager.pools
    [key] = pools.keys()
    connection = pools[key].pool.get(block=False)
    assert connection is not None and connection.sock is not None
    assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    session.close()
