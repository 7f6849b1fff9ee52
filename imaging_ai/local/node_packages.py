"""Node.js packages the local runtime needs (the EHR, the viewer check): npm installs each
once into a cache shared by every checkout and run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from imaging_ai.errors import PipelineError

CACHE_ENV = "IMAGING_AI_NODE_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "imaging-ai" / "node"))


def npm(error: type[PipelineError]) -> str:
    """The npm executable; `error` (the caller's own) naming the Debian packages when absent."""
    found = shutil.which("npm")
    if found is None:
        raise error("npm is not installed (Debian packages 'nodejs' and 'npm')")
    return found


def npm_ci_once(
    package_dir: Path,
    files: Sequence[str],
    name: str,
    timeout_s: float,
    error: type[PipelineError],
    npm_options: Sequence[str] = (),
) -> Path:
    """Copy `files` of `package_dir` into the cache directory of `name` and that lock file's
    content, and run `npm ci` there unless it already ran; return the directory. Failures
    raise `error`, the caller's own exception."""
    lock = (package_dir / "package-lock.json").read_bytes()
    target = cache_root() / f"{name}-{hashlib.sha256(lock).hexdigest()[:16]}"
    target.mkdir(parents=True, exist_ok=True)
    for file_name in files:
        shutil.copyfile(package_dir / file_name, target / file_name)
    if (target / "node_modules" / ".package-lock.json").is_file():
        return target
    result = subprocess.run(
        [npm(error), "ci", "--no-audit", "--no-fund", *npm_options,
         "--loglevel=error"],
        cwd=target, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    if result.returncode != 0:
        shutil.rmtree(target / "node_modules", ignore_errors=True)
        raise error(f"npm ci failed: {result.stderr[-2000:]}")
    return target
