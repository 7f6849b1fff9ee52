"""The stage stack: composes the constructs; holds no resources of its own."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from imaging_ai_infra.audit_monitoring import AuditMonitoring
from imaging_ai_infra.config import StageConfig
from imaging_ai_infra.edge_access import EdgeAccess
from imaging_ai_infra.inference import Inference
from imaging_ai_infra.ingest import Ingest
from imaging_ai_infra.network import Network
from imaging_ai_infra.pipeline_function import stage_timeout
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.quality_monitoring import QualityMonitoring
from imaging_ai_infra.results import Results
from imaging_ai_infra.state import State
from imaging_ai_infra.storage import Storage


class ImagingAiStage(Stack):
    """Everything one stage (dev or prod) of the pipeline runs on."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        Tags.of(self).add("project", "imaging-ai")
        Tags.of(self).add("stage", config.stage)
        Tags.of(self).add("data-classification", "de-identified-phi-risk")

        storage = Storage(self, "Storage", config=config)
        network = Network(self, "Network", config=config, audit_key=storage.audit_key)
        state = State(self, "State", config=config, data_key=storage.data_key)
        platform = Platform(
            config, network, storage.data_bucket, storage.data_key, storage.audit_key, state.table
        )
        inference = Inference(self, "Inference", platform=platform)
        ingest = Ingest(
            self,
            "Ingest",
            platform=platform,
            model_endpoints=inference.model_endpoints,
            stat_model_endpoints=inference.stat_model_endpoints,
        )
        results = Results(
            self,
            "Results",
            platform=platform,
            success_topic=inference.success_topic,
            error_topic=inference.error_topic,
            upstream_dlqs=[
                queues.dlq
                for queues in [*ingest.stage_queues.values(), *ingest.stat_queues.values()]
            ],
        )
        ingest.tell_sites(results.site_queue_urls, [q.queue for q in results.site_queues.values()])
        site_queues = {site: q.queue for site, q in results.site_queues.items()}
        edge = EdgeAccess(self, "EdgeAccess", platform=platform, site_queues=site_queues)
        stage_queues = {**ingest.stage_queues, **results.stage_queues}
        quality = QualityMonitoring(self, "QualityMonitoring", platform=platform)
        functions = {**ingest.functions, **results.functions, **quality.functions}
        audit = AuditMonitoring(
            self,
            "AuditMonitoring",
            platform=platform,
            access_logs_bucket=storage.access_logs_bucket,
            dlqs={
                **{name: q.dlq for name, q in stage_queues.items()},
                **{f"{name}-stat": q.dlq for name, q in ingest.stat_queues.items()},
                **{f"results-{site}": q.dlq for site, q in results.site_queues.items()},
            },
            functions={name: function.function for name, function in functions.items()},
            timeouts={name: stage_timeout(name) for name in functions},
            endpoint_names=inference.labelled_endpoints,
            alarm_email=self.node.try_get_context("alarm_email"),
        )
        quality.report_to(
            audit.alarm_topic,
            audit.dashboard,
            [function.log_group for function in functions.values()],
        )

        CfnOutput(self, "DataBucketName", value=storage.data_bucket.bucket_name)
        CfnOutput(self, "DataKeyArn", value=storage.data_key.key_arn)
        for model in config.models:
            CfnOutput(
                self,
                f"EndpointName-{model.slug}",
                value=inference.model_endpoints[model.name],
                description=f"The async endpoint serving {model.name}@{model.version}",
            )
            if model.name in inference.stat_model_endpoints:
                CfnOutput(
                    self,
                    f"StatEndpointName-{model.slug}",
                    value=inference.stat_model_endpoints[model.name],
                    description=f"The async endpoint serving STAT runs of {model.name}",
                )
        CfnOutput(self, "EdgeProfileArn", value=edge.profile.attr_profile_arn)
        for site, role in edge.site_roles.items():
            CfnOutput(self, f"SiteRoleArn-{site}", value=role.role_arn)
            CfnOutput(
                self, f"TrustAnchorArn-{site}", value=edge.trust_anchors[site].attr_trust_anchor_arn
            )
            CfnOutput(
                self, f"SiteResultsQueueUrl-{site}", value=results.site_queues[site].queue.queue_url
            )
