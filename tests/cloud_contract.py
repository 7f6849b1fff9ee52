"""The IAM contract of the CDK stack, applied to the local runtime's resources.

Synthesizes the prod stage (whose physical names are the ones `imaging_ai.local.provision`
makes), takes each role's permission policies from the template, and resolves the
CloudFormation intrinsics in them (Ref, Fn::GetAtt, Fn::Join, Fn::Sub, Fn::Select,
Fn::Split) to the names and ARNs of the local resources. A resource the local runtime does not
have (log groups, ECR, the trail) resolves to an ARN nothing local matches.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging_ai.lambda_stages import LAMBDA_STAGES
from imaging_ai.local.identities import (
    SAGEMAKER_ROLE,
    RoleSpec,
    function_role,
    site_role,
    stack_roles,
)
from imaging_ai.local.provision import LocalResources

REPO_ROOT = Path(__file__).resolve().parents[1]
CDK_DIR = REPO_ROOT / "cdk"
ACCOUNT = "123456789012"  # moto's default account
# Every site a test acts for: the transport and function tests' and the local runtime's.
CONTRACT_SITES = ("site-a", "site-b", "demo-site")
__all__ = ["SAGEMAKER_ROLE", "function_role", "role_specs", "site_role", "synthesize_prod"]


def synthesize_prod(work_dir: Path, sites: Iterable[str] = CONTRACT_SITES) -> dict[str, Any]:
    """The prod template, synthesized as `python cdk/app.py -c stage=prod` would."""
    if str(CDK_DIR) not in sys.path:
        sys.path.insert(0, str(CDK_DIR))
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    import build_lambda_assets
    from imaging_ai_infra.app_builder import build_app

    assets = work_dir / "assets"
    build_lambda_assets.build_assets(out_dir=assets, install_dependencies=False)
    context = {"stage": "prod", "sites": ",".join(sites), "lambda_asset_root": str(assets)}
    outdir = work_dir / "cdk.out"
    build_app(context, outdir=str(outdir)).synth()
    return dict(json.loads((outdir / "ImagingAi-prod.template.json").read_text()))


class UnresolvableIntrinsic(ValueError):
    """The template uses an intrinsic function this resolver does not know."""


@dataclass(frozen=True)
class LocalNames:
    """What each template resource is called locally."""

    template: dict[str, Any]
    resources: LocalResources

    @property
    def region(self) -> str:
        return self.resources.region

    def ref(self, logical_id: str) -> str:
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "ImagingAi-prod",
        }
        if logical_id in pseudo:
            return pseudo[logical_id]
        resource = self.template["Resources"].get(logical_id)
        if resource is None:  # a parameter
            return f"unresolved-parameter-{logical_id}"
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::S3::Bucket":
            return self._bucket(logical_id)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{properties['QueueName']}"
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{self.region}:{ACCOUNT}:{properties['TopicName']}"
        if kind == "AWS::DynamoDB::Table":
            return str(properties["TableName"])
        if kind == "AWS::KMS::Key":
            return self._key(logical_id).rsplit("/", 1)[-1]
        return f"unresolved-{logical_id}"

    def get_att(self, logical_id: str, attribute: str) -> str:
        resource = self.template["Resources"][logical_id]
        kind, properties = resource["Type"], resource.get("Properties", {})
        if attribute == "Arn":
            if kind == "AWS::S3::Bucket":
                return f"arn:aws:s3:::{self._bucket(logical_id)}"
            if kind == "AWS::SQS::Queue":
                return f"arn:aws:sqs:{self.region}:{ACCOUNT}:{properties['QueueName']}"
            if kind == "AWS::DynamoDB::Table":
                return f"arn:aws:dynamodb:{self.region}:{ACCOUNT}:table/{properties['TableName']}"
            if kind == "AWS::KMS::Key":
                return self._key(logical_id)
        if attribute == "QueueName" and kind == "AWS::SQS::Queue":
            return str(properties["QueueName"])
        if attribute == "TopicName" and kind == "AWS::SNS::Topic":
            return str(properties["TopicName"])
        return f"arn:aws:unresolved:{self.region}:{ACCOUNT}:{logical_id}/{attribute}"

    def _bucket(self, logical_id: str) -> str:
        # The one data bucket is the one the runtime has; the access-log bucket is not local.
        if logical_id.startswith("StorageDataBucket"):
            return self.resources.data_bucket
        return f"unresolved-bucket-{logical_id.lower()}"

    def _key(self, logical_id: str) -> str:
        if logical_id.startswith("StorageDataKey"):
            return self.resources.kms_key_arn
        return f"arn:aws:kms:{self.region}:{ACCOUNT}:key/unresolved-{logical_id}"

    # -- intrinsics --------------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (name, argument), *_ = value.items()
            if name == "Ref":
                return self.ref(argument)
            if name == "Fn::GetAtt":
                logical_id, attribute = (
                    argument if isinstance(argument, list) else argument.split(".", 1)
                )
                return self.get_att(logical_id, attribute)
            if name == "Fn::Join":
                separator, items = argument
                return separator.join(str(self.resolve(item)) for item in items)
            if name == "Fn::Sub":
                return self._sub(argument)
            if name == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(index)]
            if name == "Fn::Split":
                separator, text = argument
                return str(self.resolve(text)).split(separator)
            if name.startswith("Fn::") or name == "Condition":
                raise UnresolvableIntrinsic(f"{name} is not resolved here")
        return {key: self.resolve(item) for key, item in value.items()}

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        resolved = {name: str(self.resolve(item)) for name, item in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in resolved:
                return resolved[name]
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


def _role_logical_ids(template: dict[str, Any]) -> dict[str, str]:
    """Local role name → the template's logical id of that role."""
    resources = template["Resources"]
    found: dict[str, str] = {}
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            short = str(properties.get("FunctionName", "")).removeprefix("imaging-ai-")
            if short in {stage.name for stage in LAMBDA_STAGES}:
                found[function_role(short)] = properties["Role"]["Fn::GetAtt"][0]
        elif resource["Type"] == "AWS::SageMaker::Model":
            found[SAGEMAKER_ROLE] = properties["ExecutionRoleArn"]["Fn::GetAtt"][0]
        elif resource["Type"] == "AWS::IAM::Role":
            match = re.match(r"Edge forwarder of ([a-z0-9-]+):", properties.get("Description", ""))
            if match:
                found[site_role(match.group(1))] = logical_id
    return found


def role_specs(template: dict[str, Any], resources: LocalResources) -> list[RoleSpec]:
    """Every role the local runtime acts as, with the policies the template attaches to it."""
    names = LocalNames(template, resources)
    roles = _role_logical_ids(template)
    missing = stack_roles(CONTRACT_SITES) - set(roles)
    if missing:
        raise AssertionError(f"the template has no role for: {sorted(missing)}")
    specs = []
    for role_name, role_id in sorted(roles.items()):
        role = template["Resources"][role_id]["Properties"]
        if role.get("ManagedPolicyArns"):
            raise AssertionError(f"{role_name} has AWS managed policies; copy them here first")
        policies: dict[str, dict[str, Any]] = {
            policy["PolicyName"]: names.resolve(policy["PolicyDocument"])
            for policy in role.get("Policies", [])
        }
        for logical_id, resource in template["Resources"].items():
            if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                continue
            if {"Ref": role_id} in resource["Properties"].get("Roles", []):
                policies[logical_id] = names.resolve(resource["Properties"]["PolicyDocument"])
        specs.append(RoleSpec(name=role_name, policies=policies))
    return specs
