"""Synthesizes each stage once per test session (cdk-nag gate included) for every test here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_DIR = REPO_ROOT / "cdk"
CHECKOV = REPO_ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
SITES = ("site-a", "site-b")
# The models the prod stage is synthesized with (the Makefile's prod gate uses the same file).
PROD_MODELS = CDK_DIR / "models.example.json"

# `cdk/` is an app, not an installed package: tests import it the way `cdk/app.py` does.
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import build_lambda_assets  # noqa: E402


@dataclass(frozen=True)
class Synthesized:
    stage: str
    template: dict[str, Any]
    template_path: Path
    outdir: Path

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.template["Resources"].items()
            if resource["Type"] == resource_type
        }

    def one(self, resource_type: str) -> dict[str, Any]:
        found = list(self.resources(resource_type).values())
        assert len(found) == 1, f"expected one {resource_type}, found {len(found)}"
        return found[0]["Properties"]


def _stub_function_sources(root: Path) -> Path:
    """A minimal source tree for when functions/ is not written yet: synthesis needs an asset
    directory per function, never the real handler code."""
    (root / "imaging_ai").mkdir(parents=True)
    (root / "imaging_ai" / "__init__.py").write_text("")
    for name in build_lambda_assets.FUNCTION_NAMES:
        package = root / "functions" / name
        package.mkdir(parents=True)
        (package / "handler.py").write_text("def lambda_handler(event, context):\n    return {}\n")
        (package / "requirements.txt").write_text("")
    (root / "functions" / "__init__.py").write_text("")
    return root


@pytest.fixture(scope="session")
def lambda_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synth-only assets (no pip): the real functions/ when present, else a stub tree."""
    out = tmp_path_factory.mktemp("lambda-assets")
    try:
        build_lambda_assets.build_assets(out_dir=out, install_dependencies=False)
    except build_lambda_assets.AssetBuildError:
        stub_root = _stub_function_sources(tmp_path_factory.mktemp("stub-sources"))
        build_lambda_assets.build_assets(
            source_root=stub_root, out_dir=out, install_dependencies=False
        )
    return out


def _synth(stage: str, assets: Path, outdir: Path) -> Synthesized:
    from imaging_ai_infra.app_builder import build_app

    context = {"stage": stage, "sites": ",".join(SITES), "lambda_asset_root": str(assets)}
    if stage == "prod":  # as the prod gate: several models, one endpoint each
        context["models"] = PROD_MODELS.read_text()
    build_app(context, outdir=str(outdir)).synth()  # raises ValidationFailed on nag findings
    template_path = outdir / f"ImagingAi-{stage}.template.json"
    return Synthesized(stage, json.loads(template_path.read_text()), template_path, outdir)


@pytest.fixture(scope="session")
def dev(lambda_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    yield _synth("dev", lambda_assets, tmp_path_factory.mktemp("cdk-out-dev"))


@pytest.fixture(scope="session")
def prod(lambda_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    yield _synth("prod", lambda_assets, tmp_path_factory.mktemp("cdk-out-prod"))
