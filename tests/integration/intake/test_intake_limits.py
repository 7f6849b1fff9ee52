"""Bounded memory and slots: oversized instances, deflate bombs, idle and trickling peers.

Each attack runs against the intake as its own process, whose peak RSS is reset before the
attack and read after it: the figures are printed (`pytest -s`) and bounded.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from edge_forwarder.intake import Intake
from edge_forwarder.intake.journal import Journal
from tests.integration.intake.conftest import (
    IntakeProcess,
    SpooledStudy,
    report_rss,
    send,
    start_intake_process,
    write_study,
)

pytestmark = pytest.mark.integration
CT = "1.2.840.10008.5.1.4.1.1.2"
MIB = 1024 * 1024
# 8192 x 16384 pixels of 16 bits: a 256 MiB pixel data element.
HUGE_ROWS, HUGE_COLUMNS = 8192, 16384
HUGE_PIXEL_BYTES = HUGE_ROWS * HUGE_COLUMNS * 2
# 8000 x 16384 x 16 bits of zeros: 250 MiB that deflate to just under 255 KiB.
BOMB_ROWS = 8000
BOMB_PIXEL_BYTES = BOMB_ROWS * HUGE_COLUMNS * 2


def _sender(name: str, ae_title: str, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "addresses": [address]}


@pytest.fixture
def intake_process(tmp_path: Path) -> Iterator[Any]:
    started: list[IntakeProcess] = []

    def start(**settings: Any) -> IntakeProcess:
        values = {
            "port": 0,
            "spool_dir": str(tmp_path / "spool"),
            "min_free_disk_bytes": 0,
            "senders": [_sender("modality", "MODALITY")],
            **settings,
        }
        started.append(start_intake_process(tmp_path / "intake.json", values))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def _header_without_pixels(study: SpooledStudy, rows: int = HUGE_ROWS) -> bytes:
    """A real CT header (explicit VR LE data set, no file meta) claiming `rows` x 16384 pixels."""
    ds = pydicom.dcmread(study.paths[0])
    del ds.PixelData
    ds.Rows, ds.Columns = rows, HUGE_COLUMNS
    path = study.paths[0].with_suffix(".header")
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    return data[meta_end:]


def _file_meta(ds_class: str, instance: str, syntax: str) -> bytes:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    return buffer.getvalue()


def _pixel_element_header(length: int) -> bytes:
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def _not_stored(spool: Path, study: SpooledStudy) -> None:
    journal = Journal(spool / "journal.sqlite3")
    try:
        assert journal.sop_uids() == set()
    finally:
        journal.close()
    assert list((spool / "tmp").iterdir()) == []
    assert study.study_uid  # the instance was part of this study


def _echo(port: int) -> int:
    echo = ["echoscu", "-aet", "MODALITY", "-aec", "EDGE_FWD", "127.0.0.1", str(port)]
    return subprocess.run(echo, capture_output=True, timeout=30).returncode


def test_a_256_mib_instance_against_a_1_mib_limit_is_refused_while_receiving(
    intake_process: Any, tmp_path: Path
) -> None:
    # Given the intake with a 1 MiB instance limit, and a 256 MiB instance on disk (sparse)
    scp = intake_process(max_instance_bytes=MIB)
    study = write_study(tmp_path / "study", series_count=1, slices=1)
    huge = tmp_path / "huge.dcm"
    ds = pydicom.dcmread(study.paths[0], stop_before_pixels=True)
    with huge.open("wb") as out:
        out.write(_file_meta(CT, str(ds.SOPInstanceUID), ExplicitVRLittleEndian))
        out.write(_header_without_pixels(study))
        out.write(_pixel_element_header(HUGE_PIXEL_BYTES))
        out.truncate(out.tell() + HUGE_PIXEL_BYTES)
    assert huge.stat().st_size > 256 * MIB
    scp.reset_peak_rss()
    before = scp.rss_kib()
    # When DCMTK storescu sends it
    sent = subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "EDGE_FWD", "127.0.0.1", str(scp.port), str(huge)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    peak = scp.peak_rss_kib()
    report_rss("256 MiB instance, 1 MiB limit", before, peak)
    # Then the association is aborted before the instance is stored, memory stays flat,
    assert sent.returncode != 0
    assert peak - before < 64 * 1024
    _not_stored(tmp_path / "spool", study)
    # and the SCP still answers
    assert _echo(scp.port) == 0


def test_a_255_kib_deflate_bomb_is_refused_without_inflating_it_in_memory(
    intake_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the intake with a 1 MiB instance limit, and a deflated instance whose 250 MiB of
    # zero pixels compress to 255 KiB
    scp = intake_process(max_instance_bytes=MIB)
    study = write_study(tmp_path / "study", series_count=1, slices=1)
    ds = pydicom.dcmread(study.paths[0], stop_before_pixels=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = _header_without_pixels(study, BOMB_ROWS) + _pixel_element_header(BOMB_PIXEL_BYTES)
    body = [deflater.compress(header)]
    zeros = bytes(BOMB_PIXEL_BYTES // 25)
    body += [deflater.compress(zeros) for _ in range(25)]
    body.append(deflater.flush())
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(
        _file_meta(CT, str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian) + b"".join(body)
    )
    assert 240 * 1024 < bomb.stat().st_size <= 255 * 1024
    scp.reset_peak_rss()
    before = scp.rss_kib()
    # When a pynetdicom SCU sends its bytes as they are (no re-encoding on the sending side)
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT, [DeflatedExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="EDGE_FWD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(bomb)
    finally:
        assoc.release()
    peak = scp.peak_rss_kib()
    report_rss("255 KiB deflate bomb (250 MiB inflated), 1 MiB limit", before, peak)
    # Then it is refused as out of resources, memory stays flat and nothing is kept
    assert int(status.Status) == 0xA700
    assert peak - before < 64 * 1024
    _not_stored(tmp_path / "spool", study)


def test_sixteen_idle_associations_from_one_sender_do_not_block_another(
    intake_process: Any, tmp_path: Path
) -> None:
    # Given two senders on different loopback addresses, 4 slots each, a 2 s idle timeout
    scp = intake_process(
        senders=[_sender("ct-a", "CT_A", "127.0.0.1"), _sender("ct-b", "CT_B", "127.0.0.2")],
        max_associations_per_sender=4,
        network_timeout_s=2,
    )
    study = write_study(tmp_path / "study", series_count=1, slices=1)
    scp.reset_peak_rss()
    before = scp.rss_kib()
    # When sender A opens 16 associations and sends nothing on them
    idle_ae = AE(ae_title="CT_A")
    idle_ae.add_requested_context(CT)
    idle_ae.acse_timeout = idle_ae.dimse_timeout = idle_ae.network_timeout = 30
    idle = [idle_ae.associate("127.0.0.1", scp.port, ae_title="EDGE_FWD") for _ in range(16)]
    established = [a for a in idle if a.is_established]
    # Then A gets its 4 slots and a transient rejection for the other 12
    assert len(established) == 4
    assert sum(a.is_rejected for a in idle) == 12
    # And sender B stores an instance meanwhile
    started = time.monotonic()
    other = AE(ae_title="CT_B")
    other.add_requested_context(CT)
    other.acse_timeout = other.dimse_timeout = other.network_timeout = 10
    assoc = other.associate(
        "127.0.0.1", scp.port, ae_title="EDGE_FWD", bind_address=("127.0.0.2", 0)
    )
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(pydicom.dcmread(study.paths[0])).Status) == 0
    finally:
        assoc.release()
    assert time.monotonic() - started < 5
    # And the idle timeout frees A's slots: the SCP aborts them, A can associate again
    deadline = time.monotonic() + 15
    while any(a.is_established for a in established) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(a.is_aborted for a in established)
    # (the SCP's side may still be closing an aborted one: a modality retries a transient
    # rejection, and so does this test, for a second)
    for _ in range(10):
        again = idle_ae.associate("127.0.0.1", scp.port, ae_title="EDGE_FWD")
        if again.is_established:
            break
        time.sleep(0.1)
    assert again.is_established
    again.release()
    peak = scp.peak_rss_kib()
    report_rss("16 idle associations + another sender", before, peak)
    assert peak - before < 64 * 1024


def test_a_pdu_longer_than_announced_or_trickled_ends_the_connection(
    intake_process: Any,
) -> None:
    # Given the intake with a 1 s idle timeout
    scp = intake_process(network_timeout_s=1)
    scp.reset_peak_rss()
    before = scp.rss_kib()
    # When one peer announces a 2 GiB A-ASSOCIATE-RQ
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as huge:
        huge.sendall(struct.pack(">BBL", 0x01, 0, 0x7FFFFFFF) + b"\x00" * 1024)
        # Then the SCP closes the connection instead of reading it into memory
        assert _closed_by_peer(huge)
    # When another sends a PDU header and then trickles one byte every 0.3 s
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as slow:
        slow.sendall(struct.pack(">BBL", 0x01, 0, 200))
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.3):
                try:
                    slow.send(b"\x00")
                except OSError:
                    return

        dripping = threading.Thread(target=trickle)
        dripping.start()
        started = time.monotonic()
        try:
            # Then the PDU deadline closes it, although bytes keep arriving
            assert _closed_by_peer(slow)
            assert time.monotonic() - started < 5
        finally:
            stop.set()
            dripping.join()
    peak = scp.peak_rss_kib()
    report_rss("2 GiB PDU header + trickling peer", before, peak)
    assert peak - before < 16 * 1024
    assert _echo(scp.port) == 0


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass  # an A-ABORT or A-ASSOCIATE-RJ may come first
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_unknown_hosts_are_dropped_before_dicom(start_intake: Any) -> None:
    # Given the intake allowing MODALITY from 127.0.0.1 only
    intake: Intake = start_intake()
    # When a host at 127.0.0.2 connects with the right AE titles
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    refused = ae.associate(
        "127.0.0.1", intake.port, ae_title="EDGE_FWD", bind_address=("127.0.0.2", 0)
    )
    # Then it never gets an association, while the allowed host does
    assert not refused.is_established
    allowed = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert allowed.is_established
    allowed.release()


def test_accepted_sockets_have_tcp_nodelay(start_intake: Any) -> None:
    # Given the intake and an association from an allowed sender
    intake: Intake = start_intake()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT)
    assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert assoc.is_established
    try:
        # Then the socket the SCP accepted has Nagle's algorithm off
        server = intake._server
        assert server is not None
        [accepted] = server.active_associations
        sock = accepted.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def test_a_p_data_pdu_whose_items_do_not_add_up_aborts_the_association(
    start_intake: Any, study: SpooledStudy
) -> None:
    # Given the intake and an association from an allowed sender
    intake: Intake = start_intake()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert assoc.is_established
    # When the sender writes a P-DATA-TF PDU whose one PDV item runs past the PDU's end
    items = struct.pack(">LBB", 0xFFFF, 1, 0x03) + b"\x00" * 16
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, len(items)) + items)
    # Then the SCP aborts the association (A-ABORT), instead of reading past the item
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted
    # and a new association still stores an instance
    assert send(intake.port, study.paths[:1]) == [0]
