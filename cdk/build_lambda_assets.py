#!/usr/bin/env python3
"""Packages each Lambda function into `cdk/.build/<function>/` without Docker.

For every function: `pip install` its `functions/<name>/requirements.txt` as manylinux2014
x86_64 CPython 3.12 wheels (the Lambda platform, whatever this machine is), then copy the
`functions/` package and the shared `imaging_ai/` library, minus the parts that never run in
Lambda (the inference model code, the local runtime and the synthetic study generator).
`--no-deps` skips the pip step: the asset then synthesizes (CI gates, tests) but cannot run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / ".build"
# Every `functions/<name>/handler.py` is a function: a new stage needs no edit here.
FUNCTION_NAMES = tuple(
    sorted(path.parent.name for path in (REPO_ROOT / "functions").glob("*/handler.py"))
)
LAMBDA_PLATFORM = ("manylinux2014_x86_64", "3.12", "cp")
# Never shipped to Lambda: model code runs in the container; `local` is the laptop runtime;
# `synthetic*.py` make fake-PHI studies for tests and the demo; `dicom_folder.py` sends a
# user's folder (edge CLI, demo). The import-linter contract
# "The Lambda functions reach nothing their assets leave out" keeps this list honest.
LIBRARY_EXCLUDES = (
    "inference",
    "local",
    "synthetic.py",
    "synthetic_series.py",
    "synthetic_head.py",
    "dicom_folder.py",
)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "node_modules", ".mypy_cache")


class AssetBuildError(RuntimeError):
    """A function's sources or requirements are missing, or pip failed."""


def _check_sources(source_root: Path, names: tuple[str, ...]) -> None:
    missing = [
        str(path.relative_to(source_root))
        for name in names
        for path in (
            source_root / "functions" / name / "handler.py",
            source_root / "functions" / name / "requirements.txt",
        )
        if not path.is_file()
    ]
    if not (source_root / "imaging_ai" / "__init__.py").is_file():
        missing.append("imaging_ai/__init__.py")
    if missing:
        raise AssetBuildError(
            "cannot package the Lambda functions; missing under "
            f"{source_root}: {', '.join(missing)}"
        )


def _pip_install(requirements: Path, target: Path) -> None:
    platform, python_version, implementation = LAMBDA_PLATFORM
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--requirement",
        str(requirements),
        "--target",
        str(target),
        "--platform",
        platform,
        "--python-version",
        python_version,
        "--implementation",
        implementation,
        "--only-binary=:all:",
        "--upgrade",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetBuildError(f"pip failed for {requirements}:\n{result.stderr[-4000:]}")


def _copy_sources(source_root: Path, target: Path) -> None:
    shutil.copytree(source_root / "functions", target / "functions", ignore=_IGNORE)
    library = source_root / "imaging_ai"

    def ignore_library(directory: str, names: list[str]) -> set[str]:
        ignored = set(_IGNORE(directory, names))
        if Path(directory) == library:
            ignored.update(name for name in names if name in LIBRARY_EXCLUDES)
        return ignored

    shutil.copytree(library, target / "imaging_ai", ignore=ignore_library)


def build_assets(
    *,
    source_root: Path = REPO_ROOT,
    out_dir: Path = DEFAULT_OUT,
    names: tuple[str, ...] = FUNCTION_NAMES,
    install_dependencies: bool = True,
) -> dict[str, Path]:
    """Build one asset directory per function; return {function: directory}."""
    _check_sources(source_root, names)
    built: dict[str, Path] = {}
    for name in names:
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if install_dependencies:
            _pip_install(source_root / "functions" / name / "requirements.txt", target)
        _copy_sources(source_root, target)
        built[name] = target
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="asset root directory")
    parser.add_argument("--source-root", type=Path, default=REPO_ROOT, help="repository root")
    parser.add_argument(
        "--no-deps",
        action="store_true",
        default=os.environ.get("IMAGING_AI_LAMBDA_NO_DEPS") == "1",
        help="skip pip (synth-only assets; also IMAGING_AI_LAMBDA_NO_DEPS=1)",
    )
    parser.add_argument("functions", nargs="*", default=list(FUNCTION_NAMES))
    args = parser.parse_args(argv)
    try:
        built = build_assets(
            source_root=args.source_root,
            out_dir=args.out,
            names=tuple(args.functions),
            install_dependencies=not args.no_deps,
        )
    except AssetBuildError as error:
        print(f"build_lambda_assets: {error}", file=sys.stderr)
        return 2
    for name, path in built.items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{name:<12} {size / 1e6:8.1f} MB  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
