"""Builds the CDK app: stage config from context, the stage stack, and the cdk-nag gate."""

from __future__ import annotations

import os
from typing import Any

from aws_cdk import App, Environment

from imaging_ai_infra.config import CDK_DIR, load_stage_config
from imaging_ai_infra.nag import register_nag_packs
from imaging_ai_infra.stack import ImagingAiStage

# Feature flags this app relies on, whatever cdk.json says: S3 log delivery through a bucket
# policy (no legacy ACL), and IAM policies minimised.
FEATURE_FLAGS: dict[str, Any] = {
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    "@aws-cdk/aws-iam:minimizePolicies": True,
}


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> App:
    """The app `cdk/app.py` synthesizes; tests call it with their own context and outdir."""
    app = App(
        context={**(context or {}), **FEATURE_FLAGS},
        # The CLI sets CDK_OUTDIR; `python cdk/app.py` writes next to the app.
        outdir=outdir or os.environ.get("CDK_OUTDIR") or str(CDK_DIR / "cdk.out"),
    )
    config = load_stage_config(app.node)
    account = app.node.try_get_context("account") or os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = app.node.try_get_context("region") or os.environ.get("CDK_DEFAULT_REGION")
    ImagingAiStage(
        app,
        f"ImagingAi-{config.stage}",
        config=config,
        env=Environment(account=account, region=region) if account and region else None,
        description=f"Imaging AI pipeline, {config.stage} stage (BAA-ready configuration)",
    )
    register_nag_packs(app)
    return app
