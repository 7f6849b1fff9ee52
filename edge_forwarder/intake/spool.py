"""The durable spool: instances arrive in tmp/ in chunks, are fsync'ed, then moved into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import struct
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

# Written as PDUs arrive; the OS gets the data in large writes, not one per PDV.
_WRITE_BUFFER = 1024 * 1024


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _meta_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" " if vr == b"SH" else b"\x00"
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, group_element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, group_element, vr, len(value)) + value


def part10_prefix(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """Preamble, DICM and the file meta group of a Part 10 file holding one received data set.

    Encoded by hand (PS3.10 7.1): it runs once per instance, and pydicom's writer, with its
    value validation, cost more than the rest of the store path together.
    """
    for uid in (sop_class, sop_instance, syntax):
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise ValueError("not a valid UID in the command set")
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class.encode("ascii")),
            _meta_element(0x0003, b"UI", sop_instance.encode("ascii")),
            _meta_element(0x0010, b"UI", syntax.encode("ascii")),
            _meta_element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
        )
    )
    group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


class IncomingFile:
    """One instance being received: a Part 10 file in tmp/, its data set size capped.

    The data set bytes go to disk as the PDUs arrive, so memory does not grow with the
    instance. `write` returns False once the data set exceeds `limit`; the caller refuses it.
    """

    def __init__(self, path: Path, limit: int, sop_class: str, sop_instance: str, syntax: str):
        self.path = path
        self.limit = limit
        self.dataset_bytes = 0
        self.transfer_syntax = syntax
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        prefix = part10_prefix(sop_class, sop_instance, syntax)
        self.dataset_offset = len(prefix)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self._file.write(prefix)
        self._syncs: tuple[Future[None], ...] = ()

    def write(self, chunk: bytes | memoryview) -> bool:
        self.dataset_bytes += len(chunk)
        if self.dataset_bytes > self.limit:
            return False
        self._file.write(chunk)
        return True

    def complete(self) -> None:
        """The last fragment arrived: hand the bytes to the OS (fsync comes with the store)."""
        self._file.flush()

    def start_sync(self, syncs: Executor) -> None:
        """Start the fsync of the data and of its folder (its new name) on `syncs`, together.

        The two are independent: a disk that flushes its cache at every fsync (most virtual
        disks) then flushes once for both, where one after the other cost two flushes. The
        caller reads the header meanwhile; `finish_sync` waits.
        """
        self._file.flush()
        self._syncs = (
            syncs.submit(os.fsync, self._file.fileno()),
            syncs.submit(fsync_directory, self.path.parent),
        )

    def finish_sync(self) -> int:
        """Wait for `start_sync`'s fsyncs (raising their OSError), close; return the file size."""
        for sync in self._syncs:
            sync.result()
        size = self._file.tell()
        self._file.close()
        return size

    def move_to(self, target: Path) -> None:
        """Rename into place before the fsyncs: the folder's fsync then makes the new name
        durable, and a crash before the journal commit leaves it for the start-up sweep."""
        os.replace(self.path, target)
        self.path = target

    def discard(self) -> None:
        wait(self._syncs)  # never close the descriptor under a running fsync
        with contextlib.suppress(OSError):  # the disk is full or gone: the file goes anyway
            self._file.close()
        self.path.unlink(missing_ok=True)


class Spool:
    """Files under `root`: objects/<study_key>/<hash>.dcm, quarantine/, tmp/ for receiving."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.quarantine_dir = root / "quarantine"
        self.tmp = root / "tmp"
        # Each store's two fsyncs run here side by side (`IncomingFile.start_sync`): two per
        # association at a time, for the per-sender limit of a few associations.
        self.syncs = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-fsync")
        for folder in (self.objects, self.quarantine_dir, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        if not all((self.objects / shard).is_dir() for shard in "0123456789abcdef"):
            for shard in "0123456789abcdef":
                (self.objects / shard).mkdir(mode=0o700, exist_ok=True)
            fsync_directory(self.objects)

    def close(self) -> None:
        self.syncs.shutdown(wait=True)

    def clear_partial_writes(self) -> int:
        """Drop files a crash left half-written; none of them was ever acknowledged."""
        count = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        return count

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def incoming(self, limit: int, sop_class: str, sop_instance: str, syntax: str) -> IncomingFile:
        path = self.tmp / f"{secrets.token_hex(12)}.part"
        return IncomingFile(path, limit, sop_class, sop_instance, syntax)

    def scratch_path(self) -> Path:
        """A private file name in tmp/ for a derived file (an inflated copy to check)."""
        return self.tmp / f"{secrets.token_hex(12)}.scratch"

    def object_path(self) -> Path:
        """Where a received instance lives for good: a random name (no UID, no PHI) in one of
        16 folders made at start, so placing it creates no folder."""
        name = secrets.token_hex(16)
        return self.objects / name[0] / f"{name}.dcm"

    def path_for(self, study_key: str, sop_uid: str) -> Path:
        """A per-study file name (tools and tests that write outside the SCP); hashed, so no
        UID (an identifier) shows in a listing."""
        name = hashlib.sha256(sop_uid.encode("ascii", "replace")).hexdigest()[:32]
        return self.objects / study_key / f"{name}-{secrets.token_hex(4)}.dcm"

    def write_durably(self, target: Path, data: bytes) -> None:
        """Write, fsync the file, rename into place, fsync the directory."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{secrets.token_hex(12)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, target)
        fsync_directory(target.parent)

    def sweep_unjournaled(self, journaled: set[str]) -> int:
        """Delete object files no journal row names: moved in by a store that crashed before
        its commit (never acknowledged), or replaced versions a crash kept from deletion."""
        count = 0
        for path in self.objects.rglob("*.dcm"):
            if str(path) not in journaled:
                path.unlink(missing_ok=True)
                count += 1
        return count

    def quarantine_path(self, digest: str) -> Path:
        return self.quarantine_dir / f"{digest[:32]}-{secrets.token_hex(4)}.dcm"


def fsync_directory(folder: Path) -> None:
    """Make renames and new entries in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
