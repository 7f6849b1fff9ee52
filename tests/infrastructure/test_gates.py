"""The CI gates: cdk-nag (zero unacknowledged findings), cfn-lint (zero errors), checkov."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.infrastructure.conftest import CHECKOV, REPO_ROOT, Synthesized

pytestmark = pytest.mark.infrastructure


def _nag_reports(synthesized: Synthesized) -> dict[str, dict[str, object]]:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    return {plugin["pluginName"]: plugin for plugin in report["pluginReports"]}


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_nag_packs_pass_with_zero_unacknowledged_findings(
    stage: str, request: pytest.FixtureRequest
) -> None:
    # Given a stage synthesized with HIPAA.Security and AwsSolutions registered (the fixture
    # would have raised ValidationFailed on a finding)
    synthesized: Synthesized = request.getfixturevalue(stage)
    # When the validation report is read
    reports = _nag_reports(synthesized)
    # Then both packs ran and found nothing unacknowledged
    for pack in ("HIPAA.Security", "AwsSolutions"):
        assert reports[pack]["conclusion"] == "success", reports[pack]
        assert reports[pack]["violations"] == []


def test_an_unacknowledged_finding_fails_synthesis(tmp_path: Path) -> None:
    # Given a stack with a bucket that breaks the HIPAA pack and the gate registered the
    # project's way
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3
    from imaging_ai_infra.nag import register_nag_packs

    app = cdk.App(outdir=str(tmp_path))
    s3.Bucket(cdk.Stack(app, "Bad"), "Unencrypted")
    register_nag_packs(app)
    # When it is synthesized, Then synthesis fails
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_every_acknowledgement_is_narrow_and_has_a_written_reason(
    stage: str, request: pytest.FixtureRequest
) -> None:
    # Given the findings the packs suppressed because of an acknowledgement
    synthesized: Synthesized = request.getfixturevalue(stage)
    suppressed = [
        violation
        for report in _nag_reports(synthesized).values()
        for violation in report.get("suppressedViolations", [])  # type: ignore[attr-defined]
    ]
    assert suppressed  # the stack has known, reasoned exceptions
    for violation in suppressed:
        # Then each carries a real reason and sits below a concern construct, never on the
        # stack or the app
        assert len(violation["reason"]) >= 40, violation["ruleName"]
        assert violation["acknowledgedAt"].count("/") >= 2, violation["acknowledgedAt"]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_cfn_lint_reports_no_errors(stage: str, request: pytest.FixtureRequest) -> None:
    from cfnlint.api import ManualArgs, lint_file

    synthesized: Synthesized = request.getfixturevalue(stage)
    # When cfn-lint checks the template (warnings such as CDK's W3005 are allowed)
    matches = lint_file(synthesized.template_path, config=ManualArgs(regions=["us-east-1"]))
    errors = [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")]
    # Then there are no errors
    assert errors == []


@pytest.mark.skipif(
    not CHECKOV.exists(),
    reason=f"checkov venv absent ({CHECKOV}); `make checkov-venv` (part of `make cdk-gates`)"
    " creates it",
)
def test_checkov_reports_no_failed_checks(dev: Synthesized, prod: Synthesized) -> None:
    # When checkov scans both templates with the checked-in config
    command = [str(CHECKOV), "--config-file", str(REPO_ROOT / ".checkov.yaml"), "-o", "json"]
    for synthesized in (dev, prod):
        command += ["-f", str(synthesized.template_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    # Then nothing failed
    assert failed == [], failed
    assert result.returncode == 0, result.stderr[-2000:]
