"""Each Lambda asset, as cdk/build_lambda_assets.py builds it, imports its handler on its own.

Lambda's INIT imports `functions/<name>/handler.py` with nothing on the path but the asset and
the runtime's boto3: a library module the asset leaves out, or a package the function's
requirements.txt forgets, fails there and nowhere else. Here each handler is imported by a
fresh interpreter without site-packages (`-I -S`), its path the synth-only asset (our code,
copied exactly as for CDK) plus a folder linking the installed distributions that the
function's requirements.txt and the runtime's boto3 pull in, and nothing else: not the
repository, not the rest of the venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import build_lambda_assets
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.infrastructure

# The Python 3.12 Lambda runtime ships boto3 (and its dependencies) to every function.
LAMBDA_RUNTIME_PACKAGES = ("boto3",)
_IMPORT_TIMEOUT_S = 60


def _closure(requirements: list[Requirement]) -> set[metadata.Distribution]:
    """The installed distributions `requirements` pull in, extras and markers honoured."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(requirement, "") for requirement in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        distribution = metadata.distribution(name)  # not installed: the asset could not be built
        first_visit = name not in found
        found[name] = distribution
        for wanted_extra in ("", *requirement.extras) if first_visit else requirement.extras:
            pending += [(Requirement(r), wanted_extra) for r in distribution.requires or []]
    return set(found.values())


def _requirements(function: str) -> list[Requirement]:
    text = (build_lambda_assets.REPO_ROOT / "functions" / function / "requirements.txt").read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [Requirement(line) for line in [*lines, *LAMBDA_RUNTIME_PACKAGES] if line]


def _link_distributions(distributions: set[metadata.Distribution], target: Path) -> None:
    """Link every top-level file or folder the distributions installed into `target`."""
    target.mkdir(parents=True)
    for distribution in distributions:
        base = Path(str(distribution.locate_file("")))
        for entry in {file.parts[0] for file in distribution.files or [] if file.parts}:
            if entry in ("..", "__pycache__") or (target / entry).exists():
                continue
            if (base / entry).exists():
                (target / entry).symlink_to(base / entry)


def _import_handler(
    function: str, asset: Path, dependencies: Path
) -> subprocess.CompletedProcess[str]:
    module = f"functions.{function}.handler"
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(asset)!r}, {str(dependencies)!r}]\n"
        f"handler = importlib.import_module({module!r}).lambda_handler\n"
        "assert callable(handler)\n"
        # What answered each import: nothing of ours may come from outside the asset.
        "for name, loaded in sorted(sys.modules.items()):\n"
        "    origin = getattr(loaded, '__file__', None) or ''\n"
        "    if name.split('.')[0] in ('functions', 'imaging_ai')"
        f" and not origin.startswith({str(asset)!r}):\n"
        "        raise SystemExit(f'{name} imported from outside the asset: {origin}')\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=_IMPORT_TIMEOUT_S,
        cwd=asset,
        env={"PATH": "/usr/bin:/bin", "POWERTOOLS_TRACE_DISABLED": "true"},
    )


def _dependencies(function: str, root: Path) -> Path:
    folder = root / f"{function}-site-packages"
    _link_distributions(_closure(_requirements(function)), folder)
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synth-only assets of the real functions/ (no pip: the packages come linked)."""
    return build_lambda_assets.build_assets(
        out_dir=tmp_path_factory.mktemp("assets"), install_dependencies=False
    )


def test_every_function_asset_imports_its_handler_with_only_its_requirements(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    # Given each function's asset and the packages its requirements.txt (and Lambda) provide
    assert set(assets) == set(build_lambda_assets.FUNCTION_NAMES) and assets
    jobs = {name: (asset, _dependencies(name, tmp_path)) for name, asset in assets.items()}
    # When a bare interpreter imports its handler from them, as Lambda's INIT does
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = dict(
            zip(jobs, pool.map(lambda job: _import_handler(job, *jobs[job]), jobs), strict=True)
        )
    # Then every handler imports, each module of ours from its asset
    failures = {name: r.stderr.strip()[-300:] for name, r in results.items() if r.returncode}
    assert failures == {}, "\n".join(f"{name}: {error}" for name, error in failures.items())


def test_an_asset_missing_a_library_module_fails_the_import(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    # Given the drift asset with the state module left out (as a wrong LIBRARY_EXCLUDES would)
    asset = tmp_path / "drift"
    shutil.copytree(assets["drift"], asset, symlinks=True)
    (asset / "imaging_ai" / "state.py").unlink()
    # When its handler is imported the same way, Then it fails and names the missing module,
    # although the repository (and the installed project) hold it
    result = _import_handler("drift", asset, _dependencies("drift", tmp_path))
    assert result.returncode != 0
    assert "No module named 'imaging_ai.state'" in result.stderr, result.stderr[-1500:]
