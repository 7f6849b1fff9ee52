"""The durable spool: an instance is fsync'ed and renamed into place before it is journaled."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


class Spool:
    """Files under `root`: objects/<study_key>/<hash>.dcm, quarantine/, tmp/ for writes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.quarantine_dir = root / "quarantine"
        self.tmp = root / "tmp"
        for folder in (self.objects, self.quarantine_dir, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    def clear_partial_writes(self) -> int:
        """Drop files a crash left half-written; none of them was ever acknowledged."""
        count = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        return count

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def path_for(self, study_key: str, sop_uid: str) -> Path:
        # Hashed names keep UIDs (identifiers) out of the file system listing.
        name = hashlib.sha256(sop_uid.encode("ascii", "replace")).hexdigest()[:32]
        return self.objects / study_key / f"{name}.dcm"

    def quarantine_path(self, data: bytes) -> Path:
        return self.quarantine_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.dcm"

    def write_durably(self, target: Path, data: bytes) -> None:
        """Write, fsync the file, rename into place, fsync the directory."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / (target.name + f".{os.getpid()}.{id(data)}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
