"""Bad input never stops the SCP; kill -9 during a transfer loses no acknowledged instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import AE

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


def _file_with_body(path: Path, meta: bytes, body: bytes) -> Path:
    path.write_bytes(meta + body)
    return path


@pytest.mark.slow
def test_a_thousand_malformed_instances_leave_the_scp_serving(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given a live SCP and one association from a pynetdicom modality
    intake = start_intake()
    valid = study.paths[0].read_bytes()
    meta = valid[: valid.index(b"DICM") + 4]
    header_end = len(meta) + 12 + int.from_bytes(valid[len(meta) + 8 : len(meta) + 12], "little")
    meta = valid[:header_end]  # preamble + file meta: tells the SCU the class and syntax
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CT, ["1.2.840.10008.1.2.1"])
    ae.dimse_timeout = ae.network_timeout = 10
    current = [ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")]
    assert current[0].is_established
    seen: list[int] = []
    reconnects = [0]
    target = tmp_path / "fuzz.dcm"

    @settings(max_examples=1800, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(_mutations(valid[header_end:]))
    def store(body: bytes) -> None:
        # When each malformed data set is sent raw (pynetdicom sends a file's bytes as is)
        if not current[0].is_established:
            # pynetdicom's SCU aborts its own association on some local encoding errors;
            # the SCP must accept the next one.
            reconnects[0] += 1
            current[0] = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
            assert current[0].is_established
        try:
            status = current[0].send_c_store(_file_with_body(target, meta, body))
        except Exception:
            return  # the SCU itself gave up on it (mangled SOP class, empty file): never sent
        # Then each that was sent gets a known DIMSE status
        if "Status" in status:
            seen.append(int(status.Status))

    try:
        store()
    finally:
        current[0].release()
    assert len(seen) >= 1000
    assert set(seen) <= KNOWN_STATUSES
    assert {0xC210} & set(seen)
    # and a fresh association still stores a valid instance
    ae2 = AE(ae_title="MODALITY")
    ae2.add_requested_context(CT)
    again = ae2.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert again.is_established, (reconnects[0], again.is_rejected, again.is_aborted)
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
    try:
        # When it is killed with SIGKILL while a modality is sending
        killer = threading.Timer(0.0, lambda: None)

        def kill_after_some() -> None:
            while len(acknowledged) < 10:
                time.sleep(0.005)
            os.kill(process.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_some)
        killer.start()
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CT)
        ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 5
        assoc = ae.associate("127.0.0.1", port, ae_title="EDGE_FWD")
        for path in study.paths:
            if not assoc.is_established:
                break
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if "Status" in status and int(status.Status) == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
        assoc.abort()
        killer.join(timeout=10)
    finally:
        process.kill()
        process.wait(timeout=10)
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
