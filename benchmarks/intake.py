"""Benchmark: durable C-STORE ingest of our SCP against DCMTK storescp, in one run.

Both receivers run as their own process on 127.0.0.1; DCMTK storescu is the modality for
both, with TCP_NODELAY on every socket (DCMTK reads `TCP_NODELAY=1` from the environment;
without it both sides wait ~45 ms per instance for a delayed ACK). storescp runs as its
users run it: `--fork`, files into `-od`, max receive PDU 128 KiB. It does not fsync; ours
acknowledges an instance only once it and its journal row are on disk.
One association sends the whole study, then 4 parallel associations send a quarter each.
DCMTK caps the PDU at 128 KiB both ways (storescp refuses a larger --max-pdu, and storescu
sends 128 KiB PDUs to a receiver that announces 1 MiB), so a larger PDU changes nothing here.

On one association each instance waits for two disk flushes in turn (its file and folder,
then the journal); the fsync latency of the spool's disk, measured before each of our runs,
is printed with the ceiling it puts on one association.

    python -m benchmarks.intake [--slices 200] [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from imaging_ai.local.moto_server import free_port
from imaging_ai.synthetic import write_ct_study

AE_TITLE = "EDGE_FWD"
MODALITY = "BENCH_CT"
# DCMTK's largest receive PDU; we offer the same to the modality.
MAX_PDU = 131072


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["TCP_NODELAY"] = "1"
    # The SCP subprocess must import this checkout, not whatever is installed.
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return env


def _storescu(port: int, paths: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["storescu", "-aet", MODALITY, "-aec", AE_TITLE, "--max-pdu", str(MAX_PDU),
         "127.0.0.1", str(port), *map(str, paths)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _send(port: int, paths: list[Path], associations: int) -> float:
    """Seconds from the first association to the last acknowledged instance."""
    chunks = [paths[i::associations] for i in range(associations)]
    start = time.perf_counter()
    senders = [_storescu(port, chunk) for chunk in chunks]
    for sender in senders:
        _, stderr = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {stderr.decode(errors='replace')[-400:]}")
    return time.perf_counter() - start


def _wait_for_echo(port: int) -> None:
    for _ in range(200):
        echo = subprocess.run(
            ["echoscu", "-aet", MODALITY, "-aec", AE_TITLE, "127.0.0.1", str(port)],
            capture_output=True,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("receiver never answered C-ECHO")


@contextmanager
def _ours(folder: Path) -> Iterator[int]:
    folder.mkdir(parents=True)
    settings = folder / "intake.json"
    settings.write_text(
        json.dumps(
            {
                "port": 0,
                "spool_dir": str(folder / "spool"),
                "min_free_disk_bytes": 0,
                "maximum_pdu_size": MAX_PDU,
                "senders": [{"name": "bench", "ae_title": MODALITY, "addresses": ["127.0.0.1"]}],
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_forwarder.intake", str(settings)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"our SCP did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def _storescp(folder: Path) -> Iterator[int]:
    folder.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "--fork", "-aet", AE_TITLE, "--max-pdu", str(MAX_PDU),
         "-od", str(folder), str(port)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_echo(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _flush_ms(folder: Path, count: int = 20) -> float:
    """Median milliseconds of one fsync of a 4 KiB append in `folder`: one disk flush, now."""
    probe = folder / "flush-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(count):
            os.write(fd, bytes(4096))
            start = time.perf_counter()
            os.fsync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        probe.unlink()
    return statistics.median(latencies) * 1000


# Starts a DICOM receiver storing into a folder; yields its port.
Receiver = Callable[[Path], AbstractContextManager[int]]


def _best(run: Callable[[], float], repeat: int) -> float:
    return min(run() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="best of N per figure")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        study = write_ct_study(tmp / "study", shape=(args.slices, args.size, args.size))
        paths = study.paths
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        seconds: dict[tuple[str, int], float] = {}
        flushes: list[float] = []
        receivers = {"ours": _ours, "storescp": _storescp}
        for associations in (1, 4):
            for name, receiver in receivers.items():

                def store_once(n: int = associations, start: Receiver = receiver) -> float:
                    # A fresh spool each repeat: a resend would be a duplicate, not a store.
                    folder = tmp / f"{start.__name__}-{n}-{time.monotonic_ns()}"
                    if start is _ours:
                        flushes.append(_flush_ms(tmp))
                    with start(folder) as port:
                        taken = _send(port, paths, n)
                    shutil.rmtree(folder)
                    return taken

                seconds[(name, associations)] = _best(store_once, args.repeat)

    load = os.getloadavg()
    print(f"study: {len(paths)} CT slices of {args.size}², {megabytes:.1f} MB; "
          f"storescu -> receiver on 127.0.0.1, TCP_NODELAY both ends, max PDU {MAX_PDU}; "
          f"best of {args.repeat}; load average {load[0]:.2f} {load[1]:.2f} on "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'receiver':52} {'assocs':>6} {'seconds':>8} {'MB/s':>8} {'ratio':>6}")
    summary: dict[str, float] = {}
    for associations in (1, 4):
        ours = seconds[("ours", associations)]
        peer = seconds[("storescp", associations)]
        ratio = peer / ours
        print(f"{'ours: durable (fsync + journal before the ack)':52} {associations:6} "
              f"{ours:8.2f} {megabytes / ours:8.1f} {ratio:6.2f}")  # fmt: skip
        print(f"{'DCMTK storescp --fork (no fsync)':52} {associations:6} "
              f"{peer:8.2f} {megabytes / peer:8.1f} {1.0:6.2f}")  # fmt: skip
        summary[f"ours_{associations}_mb_s"] = round(megabytes / ours, 1)
        summary[f"storescp_{associations}_mb_s"] = round(megabytes / peer, 1)
        summary[f"ratio_{associations}"] = round(ratio, 2)
    flush = statistics.median(flushes)
    ceiling = megabytes / len(paths) / (2 * flush / 1000)
    print(f"disk flush (fsync of a 4 KiB append) before each of our runs: median {flush:.2f} ms, "
          f"{min(flushes):.2f}-{max(flushes):.2f}; two per instance cap one association at "
          f"{ceiling:.0f} MB/s before any receiving")  # fmt: skip
    summary["flush_ms"] = round(flush, 2)
    summary["one_association_flush_ceiling_mb_s"] = round(ceiling, 1)
    sys.stdout.flush()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
