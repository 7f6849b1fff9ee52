#!/usr/bin/env python3
"""CDK entry point: `python cdk/app.py -c stage=dev` (no CLI) or `npx aws-cdk@2.1148.1 synth`.

Plain `python` runs read context from cdk.json and from `-c key=value` arguments here; the CDK
CLI passes its context through the environment instead.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_ai_infra.app_builder import build_app


def _cli_context(argv: list[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag in ("-c", "--context"):
            key, _, item = value.partition("=")
            context[key] = item
    return context


def main() -> None:
    cdk_json = Path(__file__).resolve().parent / "cdk.json"
    context = dict(json.loads(cdk_json.read_text()).get("context", {}))
    context.update(_cli_context(sys.argv[1:]))
    build_app(context).synth()


if __name__ == "__main__":
    main()
