"""Intake fixtures: a started SCP on 127.0.0.1 with a throwaway spool, and a multi-series study."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from edge_forwarder.intake import Intake, IntakeSettings
from edge_forwarder.intake.settings import SenderRule
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]

# The senders the intake tests use: every one on loopback, named by its calling AE title.
TEST_SENDERS = [
    SenderRule(name="modality", ae_title="MODALITY", addresses=["127.0.0.1"]),
    SenderRule(name="fuzzer", ae_title="FUZZER", addresses=["127.0.0.1"]),
]


@dataclass
class SpooledStudy:
    study_uid: str
    series: dict[str, list[Path]]  # series UID -> files

    @property
    def paths(self) -> list[Path]:
        return [p for files in self.series.values() for p in files]


def write_study(out_dir: Path, series_count: int = 2, slices: int = 4) -> SpooledStudy:
    """A CT study with `series_count` series (thin lung series first) and fake PHI."""
    phantom = make_chest_phantom(11, shape=(slices, 32, 32), spacing_mm=(2.0, 10.0, 10.0))
    study_uid, frame = generate_uid(), generate_uid()
    study = SpooledStudy(study_uid, {})
    out_dir.mkdir(parents=True, exist_ok=True)
    for number in range(series_count):
        series_uid = generate_uid()
        description = "CHEST LUNG 1MM" if number == 0 else f"CHEST SOFT TISSUE {number}"
        slices_iter = iter_ct_slices(
            phantom, FakePatient(), study_uid, series_uid, frame,
            series_number=number + 2, series_description=description,
        )  # fmt: skip
        for ds in slices_iter:
            path = out_dir / f"S{number}_{int(ds.InstanceNumber):03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            study.series.setdefault(series_uid, []).append(path)
    return study


@pytest.fixture
def study(tmp_path: Path) -> SpooledStudy:
    return write_study(tmp_path / "study")


@pytest.fixture
def start_intake(tmp_path: Path) -> Iterator[Callable[..., Intake]]:
    started: list[Intake] = []

    def start(**overrides: Any) -> Intake:
        values: dict[str, Any] = {
            "port": 0,
            "spool_dir": tmp_path / "spool",
            "quiet_seconds_study": 5.0,
            "quiet_seconds_series": 2.0,
            "min_free_disk_bytes": 0,
            "senders": TEST_SENDERS,
            **overrides,
        }
        intake = Intake(IntakeSettings(**values))
        intake.start()
        started.append(intake)
        return intake

    yield start
    for intake in started:
        intake.stop()


def send(port: int, items: Sequence[Dataset | Path], calling: str = "MODALITY") -> list[int]:
    """C-STORE each item over one association; return the DIMSE status of each."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = {
        str(item.SOPClassUID) if isinstance(item, Dataset) else _sop_class(item) for item in items
    }
    for uid in contexts:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE_FWD")
    assert assoc.is_established
    statuses = []
    try:
        for item in items:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def _sop_class(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class IntakeProcess:
    """The intake as its own process (`python -m edge_forwarder.intake`), for RSS and kill -9."""

    process: subprocess.Popen[str]
    port: int

    def rss_kib(self) -> int:
        return _status_kib(self.process.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.process.pid, "VmHWM")

    def reset_peak_rss(self) -> None:
        # Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS (Linux >= 4.0).
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def start_intake_process(settings_path: Path, settings: dict[str, Any]) -> IntakeProcess:
    """Write `settings` as JSON and start the intake on them; returns once it listens."""
    settings_path.write_text(json.dumps(settings))
    env = os.environ.copy()
    # The child must import this checkout (the worktree), not the installed package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_forwarder.intake", str(settings_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("READY "), line
    return IntakeProcess(process, int(line.split()[1]))


def report_rss(label: str, before_kib: int, peak_kib: int) -> None:
    """Print the figures the issue asks for (visible with `pytest -s`)."""
    growth = (peak_kib - before_kib) / 1024
    print(f"\n[rss] {label}: before {before_kib / 1024:.1f} MiB, peak {peak_kib / 1024:.1f} MiB, "
          f"growth {growth:.1f} MiB")  # fmt: skip
