"""Headless chromium (Debian's) driven by playwright-core (npm) through a study in OHIF."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imaging_ai.errors import PipelineError

PACKAGE_DIR = Path(__file__).with_name("browser")
PACKAGE_FILES = ("package.json", "package-lock.json", "open_study.mjs")
CACHE_ENV = "IMAGING_AI_NODE_CACHE"
_CHROMIUM = ("chromium", "/usr/bin/chromium")


class BrowserError(PipelineError):
    """The headless browser could not be installed or run."""


@dataclass(frozen=True)
class ViewedStudy:
    """What OHIF showed: the segmentation panel's text and the SR viewport's labels."""

    segmentation_panel: str
    sr_viewport_labels: tuple[str, ...]
    screenshots: tuple[Path, ...]
    errors: tuple[str, ...]  # texts that never appeared, or the step that failed


def chromium_binary() -> str | None:
    """Debian's chromium, or None when it is not installed."""
    for name in _CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_dir() -> Path:
    """Where `npm ci` installs playwright-core: one cache directory per package-lock content."""
    lock = (PACKAGE_DIR / "package-lock.json").read_bytes()
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "imaging-ai" / "node"))
    return root / f"viewer-check-{hashlib.sha256(lock).hexdigest()[:16]}"


def ensure_installed(timeout_s: float = 300.0) -> Path:
    """Run `npm ci` into the cache directory once (playwright-core only: no browser download).

    Returns
    -------
    pathlib.Path
        The directory holding open_study.mjs and its node_modules.
    """
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES:
        shutil.copyfile(PACKAGE_DIR / name, target / name)
    if (target / "node_modules" / ".package-lock.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise BrowserError("npm is not installed (Debian packages 'nodejs' and 'npm')")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        shutil.rmtree(target / "node_modules", ignore_errors=True)
        raise BrowserError(f"npm ci failed: {result.stderr[-2000:]}")
    return target


def view_study(
    study_url: str,
    out_dir: Path,
    segments: list[str],
    measurements: list[str],
    timeout_s: float = 400.0,
) -> ViewedStudy:
    """Open a study in OHIF headless: load its SEG, then its SR; screenshot each step.

    Parameters
    ----------
    study_url: str
        The viewer page of the study (`imaging_ai.local.ohif.Viewer.study_url`).
    out_dir: pathlib.Path
        Where ohif-seg.png and ohif-sr.png go.
    segments, measurements: list[str]
        Texts to wait for in the segmentation panel and among the SR's labels; the caller
        still checks the returned texts itself.
    timeout_s: float, optional
        The whole run's limit.

    Returns
    -------
    ViewedStudy
        What the viewer showed.
    """
    chromium = chromium_binary()
    if chromium is None:
        raise BrowserError("chromium is not installed (Debian package 'chromium')")
    node = shutil.which("node")
    if node is None:
        raise BrowserError("node is not installed (Debian package 'nodejs')")
    package = ensure_installed()
    out_dir.mkdir(parents=True, exist_ok=True)
    expect = json.dumps({"segments": segments, "measurements": measurements})
    result = subprocess.run(
        [node, "open_study.mjs", chromium, study_url, str(out_dir), expect],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise BrowserError(f"open_study.mjs failed: {result.stderr[-2000:]}")
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    return ViewedStudy(
        segmentation_panel=seen["segmentation_panel"],
        sr_viewport_labels=tuple(seen["sr_viewport_labels"]),
        screenshots=tuple(Path(p) for p in seen["screenshots"]),
        errors=tuple(seen["errors"]),
    )
