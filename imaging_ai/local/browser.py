"""Headless chromium (Debian's) driven by playwright-core (npm) through a study in OHIF."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imaging_ai.errors import PipelineError
from imaging_ai.local.node_packages import npm_ci_once
from imaging_ai.local.processes import first_on_path

PACKAGE_DIR = Path(__file__).with_name("browser")
PACKAGE_FILES = ("package.json", "package-lock.json", "open_study.mjs")
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
    return first_on_path(_CHROMIUM)


def ensure_installed(timeout_s: float = 300.0) -> Path:
    """The directory of open_study.mjs and its node_modules: `npm ci` runs once, installing
    playwright-core only (no browser download)."""
    return npm_ci_once(PACKAGE_DIR, PACKAGE_FILES, "viewer-check", timeout_s, BrowserError)


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
