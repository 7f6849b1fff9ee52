"""Bad input never stops the SCP; kill -9 during a transfer loses no acknowledged instance."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from edge_forwarder.intake import Intake
from edge_forwarder.intake.journal import Journal
from tests.integration.intake.conftest import SpooledStudy, encode, write_study

pytestmark = pytest.mark.integration
CT = "1.2.840.10008.5.1.4.1.1.2"
KNOWN_STATUSES = {0x0000, 0xA700, 0xA900, 0xC210}


def _mutations(body: bytes) -> st.SearchStrategy[bytes]:
    """Malformed data sets: truncations, flipped bytes, absurd lengths, plain garbage."""
    size = len(body)
    truncated = st.integers(0, size - 1).map(lambda n: body[:n])
    flipped = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1,
                       max_size=8).map(lambda edits: _apply(body, edits))  # fmt: skip
    absurd = st.integers(0, size - 8).map(lambda n: body[:n] + b"\xff\xff\xff\x7f" + body[n + 4 :])
    garbage = st.binary(min_size=0, max_size=512)
    return st.one_of(truncated, flipped, absurd, garbage)


def _apply(body: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(body)
    for index, value in edits:
        data[index] = value
    return bytes(data)


def _malformed_bodies(body: bytes, count: int) -> list[bytes]:
    """`count` malformed data sets, the same ones every run (derandomized, no shrinking)."""
    bodies: list[bytes] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_mutations(body))
    def collect(candidate: bytes) -> None:
        bodies.append(candidate)

    collect()
    return list(dict.fromkeys(bodies))  # distinct inputs, in generation order


def _disable_nagle(assoc: Association) -> None:
    # pynetdicom leaves Nagle on: a small data set PDU after its command PDU waits for the
    # peer's delayed ACK, about 40 ms a message. DCMTK's storescu turns it off.
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _keep_responses_for_the_sender(assoc: Association) -> None:
    """Give back a C-STORE response that the SCU's own reactor thread took off the queue.

    pynetdicom's requestor pauses its reactor before `send_c_store` waits for the answer,
    but the handshake has a window (the reactor has passed its checkpoint and not yet said
    so): under CPU load the reactor then takes the response, logs "Received unexpected
    C-STORE service message" and drops it, and the SCP, left waiting, times the association
    out. The SCU here serves no requests, so whatever its reactor takes is a response.
    """
    serve = assoc._serve_request

    def serve_or_give_back(msg: Any, context_id: int) -> None:
        if msg.is_valid_request:
            serve(msg, context_id)
        else:
            assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = serve_or_give_back  # type: ignore[method-assign]


@pytest.mark.slow
def test_a_thousand_malformed_instances_leave_the_scp_serving(
    start_intake: Callable[..., Intake],
    study: SpooledStudy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a live SCP with short timeouts, so no association lingers after a client goes
    intake = start_intake(acse_timeout_s=5, dimse_timeout_s=5, network_timeout_s=5)
    valid = study.paths[0].read_bytes()
    meta_start = valid.index(b"DICM") + 4
    header_end = meta_start + 12 + int.from_bytes(valid[meta_start + 8 : meta_start + 12], "little")
    meta = valid[:header_end]  # preamble + file meta: tells the SCU the class and syntax
    bodies = _malformed_bodies(valid[header_end:], 1250)
    assert len(bodies) >= 1000
    # The SCU sends a file's data set as raw bytes after its (valid) file meta, so every
    # malformed input reaches the SCP; none is refused by the sending side first.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.1"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    target = tmp_path / "fuzz.dcm"
    seen: list[int] = []
    # When they are sent as C-STOREs, a few hundred per association
    for batch_start in range(0, len(bodies), 300):
        assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
        assert assoc.is_established
        _disable_nagle(assoc)
        _keep_responses_for_the_sender(assoc)
        try:
            for body in bodies[batch_start : batch_start + 300]:
                target.write_bytes(meta + body)
                status = assoc.send_c_store(target)
                assert "Status" in status, "the SCP dropped the association"
                seen.append(int(status.Status))
        finally:
            assoc.release()
    # Then each got a known DIMSE status, undecodable ones 0xC210
    assert len(seen) == len(bodies)
    assert set(seen) <= KNOWN_STATUSES
    assert {0xC210} & set(seen)
    # and a fresh association still stores a valid instance
    ae2 = AE(ae_title="MODALITY")
    ae2.add_requested_context(CT)
    again = ae2.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert again.is_established, (again.is_rejected, again.is_aborted)
    assert int(again.send_c_store(pydicom.dcmread(study.paths[1])).Status) == 0
    again.release()


def _start_subprocess(settings_path: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_forwarder.intake", str(settings_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("READY "), line
    return process, int(line.split()[1])


def test_kill_9_during_a_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    # Given the intake running as its own process
    study = write_study(tmp_path / "study", series_count=1, slices=40)
    settings_path = tmp_path / "intake.json"
    spool = tmp_path / "spool"
    settings_path.write_text(
        json.dumps({"port": 0, "spool_dir": str(spool), "min_free_disk_bytes": 0})
    )
    process, port = _start_subprocess(settings_path)
    acknowledged: list[str] = []
    killed = threading.Event()

    def kill_mid_data_set(event: Any) -> None:
        # Runs on pynetdicom's socket thread as soon as a PDU has left: the kill lands after
        # the first data-set fragment of the 11th instance, before the SCP could answer it.
        # (A timer thread raced the sender: its kill could land between `is_established`
        # and `send_c_store`, and pynetdicom then raises RuntimeError.)
        if killed.is_set() or len(acknowledged) < 10:
            return
        items = getattr(event.pdu, "presentation_data_value_items", [])
        if any(not item.presentation_data_value[0] & 1 for item in items):  # bit 0: command
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            killed.set()

    try:
        # When it is killed with SIGKILL while a modality is sending
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CT)
        ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 5
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="EDGE_FWD",
            evt_handlers=[(evt.EVT_PDU_SENT, kill_mid_data_set)],
        )
        assert assoc.is_established
        for path in study.paths:
            if killed.is_set():
                break
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if "Status" in status and int(status.Status) == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
        assoc.abort()
    finally:
        process.kill()
        process.wait(timeout=10)
    assert killed.is_set()
    assert 10 <= len(acknowledged) < len(study.paths)
    # Then after a restart every acknowledged instance is journaled and readable in full
    process, _ = _start_subprocess(settings_path)
    try:
        journal = Journal(spool / "journal.sqlite3")
        assert set(acknowledged) <= journal.sop_uids()
        paths = [
            p
            for files in journal.instance_paths(journal.open_studies()[0].study_key).values()
            for p in files
        ]
        journal.close()
        by_uid = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in paths}
        for path in study.paths:
            sent = pydicom.dcmread(path)
            if str(sent.SOPInstanceUID) in acknowledged:
                assert pydicom.dcmread(by_uid[str(sent.SOPInstanceUID)]).PixelData == sent.PixelData
        assert list((spool / "tmp").iterdir()) == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_encode_helper_round_trips(study: SpooledStudy) -> None:
    ds = pydicom.dcmread(study.paths[0])
    assert encode(ds)[128:132] == b"DICM"
