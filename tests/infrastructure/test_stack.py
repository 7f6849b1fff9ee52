"""Assertion tests on the synthesized stage templates: the properties the BAA story rests on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imaging_ai.lambda_stages import LAMBDA_STAGES
from tests.infrastructure.conftest import PROD_MODELS, SITES, Synthesized

pytestmark = pytest.mark.infrastructure

# Action prefixes that read or write pipeline data: never allowed on a "*" resource.
DATA_ACTION_PREFIXES = (
    "s3:",
    "dynamodb:",
    "sqs:",
    "sns:",
    "kms:",
    "sagemaker:invoke",
    "secretsmanager:",
    "ssm:get",
)

# The stages of lambda_stages.toml that own a work queue (the dead-letter stage owns none).
# A stage's own queue, and its STAT queue where it has one (docs/priority.md).
_WORK_QUEUES = sum(stage.has_queue + stage.has_stat_queue for stage in LAMBDA_STAGES)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(synthesized: Synthesized) -> list[tuple[str, dict[str, Any]]]:
    """Every identity-policy statement: policies, managed policies and role inline policies."""
    found: list[tuple[str, dict[str, Any]]] = []
    for logical_id, resource in synthesized.template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents = [props["PolicyDocument"]]
        elif resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        else:
            continue
        for document in documents:
            found += [(logical_id, s) for s in _as_list(document["Statement"])]
    return found


def _granted(synthesized: Synthesized, function: dict[str, Any], action: str) -> str:
    """The resources the function's role is granted `action` on, as JSON text to search."""
    role = json.dumps({"Ref": function["Role"]["Fn::GetAtt"][0]})
    return json.dumps(
        [
            statement["Resource"]
            for logical_id, statement in _statements(synthesized)
            if action in _as_list(statement["Action"])
            and role in json.dumps(synthesized.template["Resources"][logical_id]["Properties"])
        ]
    )


def _tls_only(document: dict[str, Any]) -> bool:
    return any(
        s["Effect"] == "Deny"
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for s in _as_list(document["Statement"])
    )


# ---- Storage --------------------------------------------------------------------------------


def test_every_kms_key_is_customer_managed_with_rotation(dev: Synthesized) -> None:
    keys = dev.resources("AWS::KMS::Key")
    assert len(keys) == 2  # data and audit
    assert all(k["Properties"]["EnableKeyRotation"] is True for k in keys.values())


def test_buckets_block_public_access_are_versioned_and_tls_only(dev: Synthesized) -> None:
    buckets = dev.resources("AWS::S3::Bucket")
    policies = {
        json.dumps(p["Properties"]["Bucket"]): p["Properties"]["PolicyDocument"]
        for p in dev.resources("AWS::S3::BucketPolicy").values()
    }
    assert len(buckets) == 3  # data, CloudTrail, access logs
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert _tls_only(policies[json.dumps({"Ref": logical_id})]), logical_id


def _data_bucket(synthesized: Synthesized) -> dict[str, Any]:
    return next(
        b["Properties"]
        for logical_id, b in synthesized.resources("AWS::S3::Bucket").items()
        if logical_id.startswith("StorageDataBucket")
    )


def test_data_bucket_is_sse_kms_logged_and_feeds_eventbridge(dev: Synthesized) -> None:
    bucket = _data_bucket(dev)
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert "KMSMasterKeyID" in sse["ServerSideEncryptionByDefault"]
    assert bucket["LoggingConfiguration"]["LogFilePrefix"] == "data-bucket/"
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"] == {
        "EventBridgeEnabled": True
    }


def test_deidentified_inputs_and_intermediates_expire(dev: Synthesized) -> None:
    rules = {
        r.get("Prefix"): r
        for r in _data_bucket(dev)["LifecycleConfiguration"]["Rules"]
        if r["Status"] == "Enabled"
    }
    for prefix in ("incoming/", "preprocessed/", "inference-output/", "inference-failure/"):
        assert rules[prefix]["ExpirationInDays"] <= 30, prefix
        assert "NoncurrentVersionExpiration" in rules[prefix]


# ---- Queues, topics, events ---------------------------------------------------------------


def test_every_queue_is_kms_encrypted_tls_only_and_work_queues_have_dlqs(dev: Synthesized) -> None:
    queues = dev.resources("AWS::SQS::Queue")
    policies = [p["Properties"] for p in dev.resources("AWS::SQS::QueuePolicy").values()]
    dlq_ids = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    # each stage's work queue and one results queue per site, each with its own DLQ
    assert len(queues) == 2 * (_WORK_QUEUES + len(SITES))
    for logical_id, queue in queues.items():
        assert "KmsMasterKeyId" in queue["Properties"], logical_id
        covered = [p for p in policies if {"Ref": logical_id} in p["Queues"]]
        assert covered and _tls_only(covered[0]["PolicyDocument"]), logical_id
        assert logical_id in dlq_ids or "RedrivePolicy" in queue["Properties"], logical_id


def test_topics_are_kms_encrypted_and_tls_only(dev: Synthesized) -> None:
    topics = dev.resources("AWS::SNS::Topic")
    policies = [p["Properties"] for p in dev.resources("AWS::SNS::TopicPolicy").values()]
    for logical_id, topic in topics.items():
        assert "KmsMasterKeyId" in topic["Properties"], logical_id
        covered = [p for p in policies if {"Ref": logical_id} in p["Topics"]]
        assert covered and _tls_only(covered[0]["PolicyDocument"]), logical_id


def test_only_manifest_objects_start_a_run_and_stat_ones_have_their_own_queue(
    dev: Synthesized,
) -> None:
    rules = [
        r["Properties"]
        for r in dev.resources("AWS::Events::Rule").values()
        if "EventPattern" in r["Properties"]  # not the drift check's schedule
    ]
    queue_of = {}
    for rule in rules:
        pattern = rule["EventPattern"]
        assert pattern["source"] == ["aws.s3"]
        assert pattern["detail-type"] == ["Object Created"]
        (target,) = rule["Targets"]
        assert "DeadLetterConfig" in target  # undeliverable events are kept, not dropped
        (key,) = pattern["detail"]["object"]["key"]
        queue_of[key["wildcard"]] = target["Arn"]["Fn::GetAtt"][0]
    assert sorted(queue_of) == [
        "incoming/*/*/manifest.json.enc",
        "incoming/*/*/manifest.stat.json.enc",
    ]
    routine, stat = (
        queue_of["incoming/*/*/manifest.json.enc"],
        queue_of["incoming/*/*/manifest.stat.json.enc"],
    )
    assert routine != stat and "Stat" in stat


def test_routine_studies_cannot_take_the_preprocess_instances_stat_studies_need(
    dev: Synthesized,
) -> None:
    preprocess = next(
        f["Properties"]
        for logical_id, f in dev.resources("AWS::Lambda::Function").items()
        if logical_id.startswith("IngestPreprocess")
    )
    mappings = [
        m["Properties"]
        for m in dev.resources("AWS::Lambda::EventSourceMapping").values()
        if "IngestPreprocess" in m["Properties"]["FunctionName"]["Ref"]
    ]
    by_queue = {m["EventSourceArn"]["Fn::GetAtt"][0]: m for m in mappings}
    (stat,) = [m for queue, m in by_queue.items() if "Stat" in queue]
    (routine,) = [m for queue, m in by_queue.items() if "Stat" not in queue]
    # The routine mapping is capped below the function's reserved concurrency; STAT is not.
    reserved = preprocess["ReservedConcurrentExecutions"]
    assert routine["ScalingConfig"]["MaximumConcurrency"] < reserved
    assert "ScalingConfig" not in stat
    assert routine["BatchSize"] == stat["BatchSize"] == 1


def test_dead_letter_queues_feed_the_failure_function(dev: Synthesized) -> None:
    mappings = dev.resources("AWS::Lambda::EventSourceMapping").values()
    failure_sources = [
        m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        for m in mappings
        if "Failure" in m["Properties"]["FunctionName"]["Ref"]
    ]
    # Every stage's DLQ; the sites' results DLQs are the forwarders' to drain
    assert sorted(failure_sources) == sorted(
        logical_id
        for logical_id in dev.resources("AWS::SQS::Queue")
        if "Dlq" in logical_id and "ResultsQueue" not in logical_id
    )
    assert len(failure_sources) == _WORK_QUEUES


# ---- Inference ------------------------------------------------------------------------------


def test_endpoint_is_async_with_kms_outputs_and_both_notification_topics(dev: Synthesized) -> None:
    config = dev.one("AWS::SageMaker::EndpointConfig")
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["KmsKeyId"]
    assert set(output["NotificationConfig"]) == {"SuccessTopic", "ErrorTopic"}
    assert output["S3OutputPath"]["Fn::Join"][1][-1] == "/inference-output/"
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"].startswith("ml.g")  # a GPU instance from context
    model = dev.one("AWS::SageMaker::Model")
    assert model["EnableNetworkIsolation"] is True
    assert model["VpcConfig"]["Subnets"]


def test_endpoint_scales_to_zero_and_back_out(dev: Synthesized) -> None:
    target = dev.one("AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0
    assert target["MaxCapacity"] >= 1
    policies = {
        p["Properties"]["PolicyType"]: p
        for p in dev.resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
    }
    tracking = policies["TargetTrackingScaling"]["Properties"]
    metric = tracking["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    step_id = next(
        logical_id
        for logical_id, p in dev.resources("AWS::ApplicationAutoScaling::ScalingPolicy").items()
        if p["Properties"]["PolicyType"] == "StepScaling"
    )
    alarm = next(
        a["Properties"]
        for a in dev.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "HasBacklogWithoutCapacity"
    )
    assert alarm["AlarmActions"] == [{"Ref": step_id}]


# ---- State ---------------------------------------------------------------------------------


def test_state_table_has_pitr_and_a_cmk(dev: Synthesized) -> None:
    table = dev.one("AWS::DynamoDB::Table")
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["SSESpecification"]["SSEType"] == "KMS"
    assert "KMSMasterKeyId" in table["SSESpecification"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]


# ---- Network --------------------------------------------------------------------------------


def test_lambdas_and_endpoint_run_in_isolated_subnets_without_internet(dev: Synthesized) -> None:
    assert not dev.resources("AWS::EC2::InternetGateway")
    assert not dev.resources("AWS::EC2::NatGateway")
    subnets = set(dev.resources("AWS::EC2::Subnet"))
    assert all(
        not s["Properties"].get("MapPublicIpOnLaunch", False)
        for s in dev.resources("AWS::EC2::Subnet").values()
    )
    pipeline_functions = {
        logical_id: f["Properties"]
        for logical_id, f in dev.resources("AWS::Lambda::Function").items()
        if f["Properties"].get("Handler", "").startswith("functions.")
    }
    assert len(pipeline_functions) == len(LAMBDA_STAGES)
    for logical_id, props in pipeline_functions.items():
        assert {s["Ref"] for s in props["VpcConfig"]["SubnetIds"]} <= subnets, logical_id
        assert props["Runtime"] == "python3.12"
    model_subnets = dev.one("AWS::SageMaker::Model")["VpcConfig"]["Subnets"]
    assert {s["Ref"] for s in model_subnets} <= subnets


def test_vpc_endpoints_cover_every_service_called(dev: Synthesized) -> None:
    services = set()
    for endpoint in dev.resources("AWS::EC2::VPCEndpoint").values():
        name = json.dumps(endpoint["Properties"]["ServiceName"])
        services.add(name.rsplit(".", 1)[-1].strip('"]} '))
        if "sagemaker.runtime" in name:
            services.add("sagemaker.runtime")
    for service in ("s3", "dynamodb", "sqs", "sns", "kms", "logs", "monitoring", "sts", "xray"):
        assert service in services, service
    assert "sagemaker.runtime" in services


# ---- Least privilege ------------------------------------------------------------------------


def test_no_data_action_is_granted_on_a_wildcard_resource(dev: Synthesized) -> None:
    offending = []
    for logical_id, statement in _statements(dev):
        if statement["Effect"] != "Allow":
            continue
        resources = _as_list(statement.get("Resource", []))
        if "*" not in resources:
            continue
        for action in _as_list(statement["Action"]):
            if action == "*" or action.lower().startswith(DATA_ACTION_PREFIXES):
                offending.append(f"{logical_id}: {action}")
    assert offending == []


def test_each_function_has_its_own_role(dev: Synthesized) -> None:
    roles = [
        f["Properties"]["Role"]["Fn::GetAtt"][0]
        for f in dev.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler", "").startswith("functions.")
    ]
    assert len(roles) == len(set(roles)) == len(LAMBDA_STAGES)


def test_the_functions_are_the_stage_tables_with_its_settings(dev: Synthesized) -> None:
    # Given the one stage table the local runtime reads too (LAMBDA_STAGES)
    # When the stack is synthesized
    functions = {
        f["Properties"]["Handler"]: f["Properties"]
        for f in dev.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler", "").startswith("functions.")
    }
    # Then each stage is one function with the table's handler, timeout, memory, concurrency
    assert sorted(functions) == sorted(stage.handler for stage in LAMBDA_STAGES)
    for stage in LAMBDA_STAGES:
        settings = functions[stage.handler]
        assert settings["Description"] == stage.description
        assert (
            settings["Timeout"],
            settings["MemorySize"],
            settings["ReservedConcurrentExecutions"],
        ) == (stage.timeout_s, stage.memory_mb, stage.reserved_concurrency[1])


# ---- Edge access -----------------------------------------------------------------------------


def test_each_site_role_reaches_only_its_own_prefixes_queue_and_context(dev: Synthesized) -> None:
    for anchor in dev.resources("AWS::RolesAnywhere::TrustAnchor").values():
        assert anchor["Properties"]["Source"]["SourceType"] == "CERTIFICATE_BUNDLE"
    assert len(dev.one("AWS::RolesAnywhere::Profile")["RoleArns"]) == len(SITES)
    for site in SITES:
        other = next(s for s in SITES if s != site)
        role = next(
            r["Properties"]
            for logical_id, r in dev.resources("AWS::IAM::Role").items()
            if logical_id.startswith(f"EdgeAccessSiteRole{site.replace('-', '')}")
        )
        trust = role["AssumeRolePolicyDocument"]["Statement"]
        assert any(
            s.get("Condition", {}).get("StringEquals", {}).get("aws:PrincipalTag/x509Subject/CN")
            == site
            for s in trust
        )
        policy = next(
            p["Properties"]["PolicyDocument"]
            for logical_id, p in dev.resources("AWS::IAM::ManagedPolicy").items()
            if logical_id.startswith(f"EdgeAccessSitePolicy{site.replace('-', '')}")
        )
        text = json.dumps(policy)
        assert f"/incoming/{site}/" in text and f"/results/{site}/" in text
        assert f"/{other}/" not in text
        assert '"kms:EncryptionContext:site": "' + site + '"' in text


# ---- Audit and monitoring ---------------------------------------------------------------------


def test_cloudtrail_records_data_bucket_events_encrypted_and_validated(dev: Synthesized) -> None:
    trail = dev.one("AWS::CloudTrail::Trail")
    assert trail["EnableLogFileValidation"] is True
    assert trail["KMSKeyId"]
    assert trail["CloudWatchLogsLogGroupArn"]
    selectors = trail["EventSelectors"]
    assert any(
        r["Type"] == "AWS::S3::Object" for s in selectors for r in s.get("DataResources", [])
    )


def test_every_log_group_has_retention_and_a_kms_key(dev: Synthesized) -> None:
    for logical_id, group in dev.resources("AWS::Logs::LogGroup").items():
        assert group["Properties"]["RetentionInDays"] >= 90, logical_id
        assert "KmsKeyId" in group["Properties"], logical_id


def test_alarms_watch_dlqs_failures_and_stage_latency(dev: Synthesized) -> None:
    alarms = [a["Properties"] for a in dev.resources("AWS::CloudWatch::Alarm").values()]
    dlq_alarms = [a for a in alarms if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"]
    assert len(dlq_alarms) == _WORK_QUEUES + len(SITES)
    assert any("Failed" in json.dumps(a.get("Metrics", "")) for a in alarms)
    latency = [a for a in alarms if a.get("MetricName") == "Duration"]
    assert len(latency) == len(LAMBDA_STAGES)
    assert all(a.get("AlarmActions") for a in alarms)


def test_dashboard_shows_studies_per_hour_and_latency_per_stage(dev: Synthesized) -> None:
    body = json.dumps(dev.one("AWS::CloudWatch::Dashboard")["DashboardBody"])
    assert "Studies per hour" in body
    assert "Latency per stage" in body
    assert "ImagingAI" in body  # the custom metrics namespace


# ---- Stages ----------------------------------------------------------------------------------


def test_prod_retains_data_and_keeps_audit_logs_six_years(prod: Synthesized) -> None:
    for resource_type in ("AWS::S3::Bucket", "AWS::KMS::Key", "AWS::DynamoDB::Table"):
        for logical_id, resource in prod.resources(resource_type).items():
            assert resource.get("DeletionPolicy") == "Retain", logical_id
    assert prod.one("AWS::DynamoDB::Table")["DeletionProtectionEnabled"] is True
    for group in prod.resources("AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == 2192


def _function(synthesized: Synthesized, name: str) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (logical_id, resource["Properties"])
        for logical_id, resource in synthesized.resources("AWS::Lambda::Function").items()
        if resource["Properties"].get("Handler") == f"functions.{name}.handler.lambda_handler"
    ]
    return found


def test_preprocess_can_tell_every_site_that_its_study_was_refused(dev: Synthesized) -> None:
    # preprocess's settings read SITE_RESULTS_QUEUES ({site: url}); without it a refused
    # study could only be logged, never reported to the site
    _, preprocess = _function(dev, "preprocess")
    _, postprocess = _function(dev, "postprocess")
    site_queues = preprocess["Environment"]["Variables"]["SITE_RESULTS_QUEUES"]
    assert site_queues == postprocess["Environment"]["Variables"]["SITE_RESULTS_QUEUES"]
    rendered = json.dumps(site_queues)
    assert all(f'\\"{site}\\"' in rendered for site in SITES)
    queue_ids = {
        logical_id
        for logical_id in dev.resources("AWS::SQS::Queue")
        if f'"{logical_id}"' in rendered
    }
    assert len(queue_ids) == len(SITES)
    # and its role may send to each of those queues (and only by name, never "*")
    sendable = _granted(dev, preprocess, "sqs:SendMessage")
    assert all(f'"{queue_id}"' in sendable for queue_id in queue_ids)


def test_drift_is_checked_hourly_alarms_and_touches_no_study_object(dev: Synthesized) -> None:
    logical_id, _ = _function(dev, "drift")
    rules = [
        r["Properties"]
        for r in dev.resources("AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(1 hour)"]
    assert logical_id in json.dumps(rules[0]["Targets"])
    (alarm,) = [
        a["Properties"]
        for a in dev.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "DriftDetected"
    ]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "drift"}]
    assert alarm["Threshold"] == 1 and alarm.get("AlarmActions")
    # Its role: the state table, the data key, X-Ray and its own logs; no S3, queue, endpoint
    drift_role = _function(dev, "drift")[1]["Role"]["Fn::GetAtt"][0]
    actions = set()
    for policy in dev.resources("AWS::IAM::Policy").values():
        if {"Ref": drift_role} in policy["Properties"]["Roles"]:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions.update(_as_list(statement["Action"]))
    assert {"dynamodb:Scan", "dynamodb:GetItem"} <= actions
    assert not [a for a in actions if a.startswith(("s3:", "sqs:", "sagemaker:"))]


def test_dashboard_shows_the_value_report_and_drift(dev: Synthesized) -> None:
    body = json.dumps(dev.one("AWS::CloudWatch::Dashboard")["DashboardBody"])
    for shown in (
        "SEARCH(",
        "RunsEnded",
        "TurnaroundSeconds",
        "'p50'",
        "'p95'",
        "DriftScore",
        "run ended",
        "Failed and not analyzed, with reasons",
    ):
        assert shown in body, shown


def test_each_model_has_its_own_endpoint_and_preprocess_may_invoke_exactly_those(
    prod: Synthesized,
) -> None:
    # Given the prod stage synthesized with the example models list (three models, the
    # triage one with a STAT endpoint too)
    models = {m["name"]: m for m in json.loads(PROD_MODELS.read_text())}
    # Then there is one endpoint per model (and one more per STAT endpoint), each with the
    # model's instance type and scaling
    endpoints = {
        e["Properties"]["EndpointName"]: e
        for e in prod.resources("AWS::SageMaker::Endpoint").values()
    }
    stat = {f"imaging-ai-{name}-stat" for name, m in models.items() if "stat" in m}
    assert set(endpoints) == {f"imaging-ai-{name}" for name in models} | stat
    configs = {
        logical_id: resource["Properties"]
        for logical_id, resource in prod.resources("AWS::SageMaker::EndpointConfig").items()
    }
    for name, model in models.items():
        endpoint = endpoints[f"imaging-ai-{name}"]["Properties"]
        config_id = endpoint["EndpointConfigName"]["Fn::GetAtt"][0]
        variant = configs[config_id]["ProductionVariants"][0]
        assert variant["InstanceType"] == model["instance_type"]
        (target,) = [
            t["Properties"]
            for t in prod.resources("AWS::ApplicationAutoScaling::ScalableTarget").values()
            if t["Properties"]["ResourceId"] == f"endpoint/imaging-ai-{name}/variant/AllTraffic"
        ]
        assert (target["MinCapacity"], target["MaxCapacity"]) == (
            model["min_capacity"],
            model["max_capacity"],
        )
    # ... each container names its model and version (the artifact: the registry's, or given)
    containers = [
        m["Properties"]["PrimaryContainer"]
        for m in prod.resources("AWS::SageMaker::Model").values()
    ]
    served = sorted(
        (c["Environment"]["MODEL_NAME"], c["Environment"]["MODEL_VERSION"]) for c in containers
    )
    assert served == sorted(
        (name, m["version"]) for name, m in models.items() for _ in range(1 + ("stat" in m))
    )
    assert any(c["ModelDataUrl"] == models["lung-nodule-shadow"]["artifact"] for c in containers)
    # ... and preprocess knows which endpoint serves which model, and may invoke only those
    _, preprocess = _function(prod, "preprocess")
    routes = json.loads(preprocess["Environment"]["Variables"]["MODEL_ENDPOINTS"])
    assert routes == {name: f"imaging-ai-{name}" for name in models}
    invocable = _granted(prod, preprocess, "sagemaker:InvokeEndpointAsync")
    assert all(f":endpoint/imaging-ai-{name}" in invocable for name in models)
    assert "endpoint/*" not in invocable


def _target(synthesized: Synthesized, endpoint_name: str) -> dict[str, Any]:
    (target,) = [
        t["Properties"]
        for t in synthesized.resources("AWS::ApplicationAutoScaling::ScalableTarget").values()
        if t["Properties"]["ResourceId"] == f"endpoint/{endpoint_name}/variant/AllTraffic"
    ]
    return target


def test_a_triage_model_has_a_stat_endpoint_always_up_that_preprocess_sends_stat_runs_to(
    prod: Synthesized,
) -> None:
    # Given the example models: only the hemorrhage triage model asks for a STAT endpoint
    models = {m["name"]: m for m in json.loads(PROD_MODELS.read_text())}
    (triage,) = [name for name, m in models.items() if "stat" in m]
    routine, stat = f"imaging-ai-{triage}", f"imaging-ai-{triage}-stat"
    # Then its STAT endpoint keeps an instance up (no cold start) on its own type and range,
    # while its routine endpoint still scales to zero
    assert (_target(prod, stat)["MinCapacity"], _target(prod, stat)["MaxCapacity"]) == (1, 2)
    assert _target(prod, routine)["MinCapacity"] == 0
    endpoint = next(
        e["Properties"]
        for e in prod.resources("AWS::SageMaker::Endpoint").values()
        if e["Properties"]["EndpointName"] == stat
    )
    config = prod.template["Resources"][endpoint["EndpointConfigName"]["Fn::GetAtt"][0]]
    variant = config["Properties"]["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 1)
    # ... its results take the routine endpoint's way: the same output path and topics, so
    # postprocess and the failure path handle both alike
    routine_config = next(
        prod.template["Resources"][e["Properties"]["EndpointConfigName"]["Fn::GetAtt"][0]]
        for e in prod.resources("AWS::SageMaker::Endpoint").values()
        if e["Properties"]["EndpointName"] == routine
    )
    assert (
        config["Properties"]["AsyncInferenceConfig"]
        == routine_config["Properties"]["AsyncInferenceConfig"]
    )
    # ... it alarms when requests wait, as every endpoint does
    backlog_alarms = [
        a["Properties"]["Dimensions"]
        for a in prod.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "TimeInBacklog"
    ]
    assert [{"Name": "EndpointName", "Value": stat}] in backlog_alarms
    # ... and preprocess knows it for STAT runs of that model only, and may invoke it
    _, preprocess = _function(prod, "preprocess")
    variables = preprocess["Environment"]["Variables"]
    assert json.loads(variables["STAT_MODEL_ENDPOINTS"]) == {triage: stat}
    assert f":endpoint/{stat}" in _granted(prod, preprocess, "sagemaker:InvokeEndpointAsync")
    # ... and SageMaker may write the STAT endpoint's logs, and no other stage may invoke it
    invokers = [
        logical_id
        for logical_id, statement in _statements(prod)
        if "sagemaker:InvokeEndpointAsync" in _as_list(statement["Action"])
    ]
    assert len(invokers) == 1
    assert f"/aws/sagemaker/Endpoints/{stat}:*" in json.dumps(prod.template)


def test_without_a_stat_block_a_model_has_one_endpoint(dev: Synthesized) -> None:
    # Given the dev stage's default model, which asks for no STAT endpoint
    endpoints = [e["Properties"] for e in dev.resources("AWS::SageMaker::Endpoint").values()]
    # Then it has one endpoint, and preprocess sends STAT runs there (marked STAT)
    assert len(endpoints) == 1
    _, preprocess = _function(dev, "preprocess")
    assert json.loads(preprocess["Environment"]["Variables"]["STAT_MODEL_ENDPOINTS"]) == {}
