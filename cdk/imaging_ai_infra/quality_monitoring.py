"""Ongoing quality: the scheduled drift check, its alarm, and the dashboard of what the
pipeline did (studies per day, turnaround p50 / p95, failed and not analyzed with reasons)
and whether its inputs and outputs still look like the validation's."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import acknowledge
from imaging_ai_infra.names import (
    METRIC_DRIFT_DETECTED,
    METRIC_DRIFT_SCORE,
    METRIC_RUNS_ENDED,
    METRIC_TURNAROUND_SECONDS,
    METRICS_NAMESPACE,
    lambda_stages,
    resource_prefix,
)
from imaging_ai_infra.pipeline_function import PipelineFunction
from imaging_ai_infra.pipeline_function import construct_id as function_id
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import dead_letter_queue

# Attempts after the first failed delivery (EventBridge) or failed pass (Lambda).
SCHEDULE_RETRY_ATTEMPTS = 2


def _search(metric_name: str, dimensions: tuple[str, ...], statistic: str, period: Duration,
            label: str) -> cloudwatch.MathExpression:  # fmt: skip
    """Every series of a metric whose sites and models are only known at run time."""
    schema = ",".join((METRICS_NAMESPACE, "service", *dimensions))
    return cloudwatch.MathExpression(
        expression=(
            f"SEARCH('{{{schema}}} MetricName=\"{metric_name}\"', '{statistic}', "
            f"{int(period.to_seconds())})"
        ),
        label=label,
        period=period,
    )


class QualityMonitoring(Construct):
    """The scheduled stages of lambda_stages.toml (the drift check) and what they report."""

    def __init__(self, scope: Construct, construct_id: str, *, platform: Platform) -> None:
        super().__init__(scope, construct_id)
        self.functions: dict[str, PipelineFunction] = {}
        # Stage name -> the DLQ of its schedule's target.
        self.dead_letter_queues: dict[str, sqs.Queue] = {}
        for entry in lambda_stages("schedule"):
            name = entry["name"]
            function = PipelineFunction(
                self, platform=platform, name=name, environment=platform.function_environment()
            )
            function.grant_stage_data()
            function.acknowledge_grants()
            period = Duration.minutes(entry["schedule_minutes"])
            # Invocations EventBridge could not deliver (throttled, refused) after its retries;
            # the DLQ-depth alarm watches it, the failure function does not (no run in it).
            self.dead_letter_queues[name] = dead_letter_queue(
                self,
                f"{function_id(name)}ScheduleDlq",
                config=platform.config,
                key=platform.data_key,
                queue_name=f"{resource_prefix(platform.config.stage)}-{name}-schedule-dlq",
            )
            acknowledge(
                self.dead_letter_queues[name],
                "This queue is the dead-letter queue of the schedule's EventBridge target (rules"
                " name a DLQ on the target, not through an SQS redrive policy, which is all this"
                " rule sees); its depth alarm is the end of the line.",
                "AwsSolutions-SQS3",
            )
            events.Rule(
                self,
                f"{name.title()}Schedule",
                description=f"Runs {name} every {entry['schedule_minutes']} minutes; a missed run"
                " is covered by the next one",
                schedule=events.Schedule.rate(period),
                targets=[
                    targets.LambdaFunction(
                        function.function,
                        dead_letter_queue=self.dead_letter_queues[name],
                        # Retried within one period: an older event is the next run's job.
                        retry_attempts=SCHEDULE_RETRY_ATTEMPTS,
                        max_event_age=period,
                    )
                ],
            )
            # Lambda's own retries of a failed pass, bounded the same way.
            function.function.configure_async_invoke(
                retry_attempts=SCHEDULE_RETRY_ATTEMPTS, max_event_age=period
            )
            self.functions[name] = function
        service, name = METRIC_DRIFT_DETECTED
        self.drift_alarm = cloudwatch.Alarm(
            self,
            "DriftDetected",
            alarm_description=(
                "A site's inputs or a model's outputs moved away from its validation baseline"
                " (PSI or KS above threshold): see the dashboard's drift widgets"
            ),
            metric=cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=name,
                dimensions_map={"service": service},
                statistic="Maximum",
                period=Duration.hours(1),
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def report_to(
        self,
        alarm_topic: sns.ITopic,
        dashboard: cloudwatch.Dashboard,
        function_log_groups: list[logs.ILogGroup],
    ) -> None:
        """The drift alarm to the operators' topic; on their dashboard, the monthly value
        report's figures live, and drift per feature."""
        self.drift_alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
        day, hour = Duration.days(1), Duration.hours(1)
        site_model = ("site", "model")
        ended = METRIC_RUNS_ENDED[1]
        turnaround = METRIC_TURNAROUND_SECONDS[1]
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Studies per day, by site, model and outcome",
                left=[_search(ended, (*site_model, "outcome"), "Sum", day, "")],
                width=12,
            ),
            cloudwatch.LogQueryWidget(
                title="Failed and not analyzed, with reasons",
                log_group_names=[group.log_group_name for group in function_log_groups],
                query_lines=[
                    'filter message = "run ended" and run_outcome != "delivered"',
                    "stats count(*) as runs by site, model, run_outcome, reason",
                    "sort runs desc",
                ],
                width=12,
            ),
        )
        dashboard.add_widgets(
            *(
                cloudwatch.GraphWidget(
                    title=f"Turnaround to each stage, {statistic} (s), by site and model",
                    left=[_search(turnaround, (*site_model, "stage"), statistic, hour, "")],
                    width=12,
                )
                for statistic in ("p50", "p95")
            )
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Drift score per feature (statistic / threshold; above 1 is drift)",
                left=[
                    _search(
                        METRIC_DRIFT_SCORE[1], (*site_model, "kind", "feature"), "Maximum", hour, ""
                    )
                ],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=1, label="threshold")],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Drifting sites and models",
                left=[_search(METRIC_DRIFT_DETECTED[1], site_model, "Maximum", hour, "")],
                width=8,
            ),
            cloudwatch.AlarmStatusWidget(title="Drift alarm", alarms=[self.drift_alarm], width=4),
        )
