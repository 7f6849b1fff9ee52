"""Low disk on a real small file system: forwarded studies make room, intake keeps accepting."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from edge_forwarder.intake import Intake
from edge_forwarder.observability import AuditTrail
from edge_forwarder.retention import Retention, RetentionPolicy
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom
from tests.integration.intake.conftest import encode

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
FS_SIZE = 8 * MIB
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a real file system that really fills (needs root to mount)."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (the unit tests cover the same rules)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _study(slices: int, seed: int) -> list[Dataset]:
    """A CT series of 256x256 slices (~129 KiB each) with fake PHI."""
    phantom = make_chest_phantom(seed, shape=(slices, 256, 256), spacing_mm=(2.0, 1.5, 1.5))
    study_uid = generate_uid()
    return list(iter_ct_slices(phantom, FakePatient(), study_uid, generate_uid(), generate_uid()))


def test_low_disk_frees_forwarded_studies_and_intake_keeps_accepting(
    small_fs: Path, tmp_path: Path, start_intake: Callable[..., Intake]
) -> None:
    # Given an intake on an 8 MiB file system that refuses below 1 MiB free, and retention
    # that purges forwarded studies below 3 MiB free
    intake = start_intake(
        spool_dir=small_fs / "spool",
        min_free_disk_bytes=1 * MIB,
        quiet_seconds_study=0.0,
        quiet_seconds_series=0.0,
    )
    audit_path = tmp_path / "audit.jsonl"
    retention = Retention(
        intake.journal,
        intake.spool.root,
        RetentionPolicy(low_disk_free_bytes=3 * MIB),
        AuditTrail(audit_path, "site-a"),
        pseudo_study_uid=lambda key, run: None,
    )
    statuses: list[int] = []

    def receive(datasets: list[Dataset]) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CT_IMAGE)
        assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
        assert assoc.is_established
        try:
            for dataset in datasets:
                statuses.append(int(assoc.send_c_store(dataset).Status))
                retention.purge()  # what the retention loop does every check_interval_s
        finally:
            assoc.release()

    def forward_all() -> list[str]:
        done = intake.poll_completed(now=time.time() + 60)
        for study in done:
            intake.mark_forwarded(study.study_key, study.run_number)
        return [study.study_key for study in done]

    # And two studies already forwarded (oldest first), one still waiting
    studies = [_study(slices, seed) for seed, slices in enumerate((12, 12, 8, 32))]
    receive(studies[0])
    (oldest,) = forward_all()
    receive(studies[1])
    (newer,) = forward_all()
    receive(studies[2])
    # When a large study arrives, taking the total past what the file system holds
    receive(studies[3])
    sent = sum(len(encode(ds)) for study in studies for ds in study)
    assert sent > shutil.disk_usage(small_fs).total  # without purging, intake had to refuse
    # Then every instance was accepted
    assert statuses == [0x0000] * (12 + 12 + 8 + 32)
    # And the forwarded studies were purged, oldest first, each with an audit row
    rows = [json.loads(line) for line in audit_path.read_text().splitlines()]
    purged = [row["entity"][0]["what"]["identifier"]["value"] for row in rows]
    assert purged == [oldest, newer]
    assert all("reason=low_disk instances=12" in row["outcomeDesc"] for row in rows)
    assert intake.journal.instance_paths(oldest) == intake.journal.instance_paths(newer) == {}
    # And the studies not yet forwarded are whole on disk
    on_disk = {
        key: sum(len(paths) for paths in intake.journal.instance_paths(key).values())
        for key in [s.study_key for s in intake.journal.open_studies()]
    }
    assert sorted(on_disk.values()) == [8, 32]
    for key in on_disk:
        for paths in intake.journal.instance_paths(key).values():
            assert all(p.exists() for p in paths)
