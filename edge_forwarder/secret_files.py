"""Secret files (keys, client secrets, private keys): owner-only, checked before they are read."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from edge_forwarder.transport.errors import ConfigError


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others may read or write, or that is not a file.

    A key another local account can read is already disclosed: starting anyway would hide
    that. The error names the file and its mode, never a byte of its content.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"secret file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"secret file {path} cannot be read ({type(error).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"secret file {path} is not a regular file")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if loose:
        raise ConfigError(
            f"secret file {path} is accessible by group or others (mode"
            f" {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )


def read_private(path: Path) -> bytes:
    """The bytes of a secret file, after `check_private`."""
    check_private(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"secret file {path} cannot be read ({type(error).__name__})") from None


def check_all_private(paths: Iterable[Path]) -> None:
    """Check every secret file of a config at start, so none is found loose mid-run."""
    for path in paths:
        check_private(path)
