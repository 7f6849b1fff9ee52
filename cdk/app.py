#!/usr/bin/env python3
"""CDK entry point: `python cdk/app.py -c stage=dev` (no CLI) or `npx aws-cdk@2.1148.1 synth`.

Plain `python` runs read context from cdk.json and from `-c key=value` arguments here; the CDK
CLI passes its context through the environment instead. When the Lambda assets are missing (a
fresh clone), synth-only assets are built first and the app says so: they synthesize, but a
deploy needs `python cdk/build_lambda_assets.py` (dependencies included).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_lambda_assets
from imaging_ai_infra.app_builder import build_app
from imaging_ai_infra.config import DEFAULT_ASSET_ROOT


def _cli_context(argv: list[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag in ("-c", "--context"):
            key, _, item = value.partition("=")
            context[key] = item
    return context


def ensure_assets(context: dict[str, Any]) -> None:
    """Build synth-only Lambda assets when any function's asset is missing."""
    asset_root = Path(context.get("lambda_asset_root") or DEFAULT_ASSET_ROOT)
    missing = [
        name
        for name in build_lambda_assets.FUNCTION_NAMES
        if not (asset_root / name / "functions" / name / "handler.py").is_file()
    ]
    if not missing:
        return
    print(
        f"Lambda assets missing under {asset_root} ({', '.join(missing)}): building synth-only"
        " assets (no dependencies). They synthesize but do not run; build deployable ones with"
        " `python cdk/build_lambda_assets.py`.",
        file=sys.stderr,
    )
    build_lambda_assets.build_assets(out_dir=asset_root, install_dependencies=False)


def main() -> None:
    cdk_json = Path(__file__).resolve().parent / "cdk.json"
    context = dict(json.loads(cdk_json.read_text()).get("context", {}))
    # The CDK CLI passes context (cdk.json's and -c's) in CDK_CONTEXT_JSON.
    context.update(json.loads(os.environ.get("CDK_CONTEXT_JSON") or "{}"))
    context.update(_cli_context(sys.argv[1:]))
    ensure_assets(context)
    build_app(context).synth()


if __name__ == "__main__":
    main()
