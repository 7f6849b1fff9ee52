"""The pipeline's Lambda stages, typed: `lambda_stages.toml` read once and checked."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from imaging_ai.errors import PipelineError

STAGE_TABLE = Path(__file__).with_name("lambda_stages.toml")
# Physical-name prefix of the local stack, which is the CDK prod stage's.
NAME_PREFIX = "imaging-ai"


class StageTableError(PipelineError):
    """`lambda_stages.toml` names an unknown field or trigger, or misses a required one."""


class Trigger(StrEnum):
    """What feeds a stage (the table's comment says how each is wired)."""

    MANIFEST_CREATED = "manifest-created"
    INFERENCE_NOTIFICATIONS = "inference-notifications"
    DEAD_LETTERS = "dead-letters"
    SCHEDULE = "schedule"  # an EventBridge schedule every `schedule_minutes`; no queue


@dataclass(frozen=True)
class LambdaStage:
    """One Lambda function of the pipeline and what it needs to run."""

    name: str
    description: str
    trigger: Trigger
    timeout_s: int
    memory_mb: int
    reserved_concurrency: tuple[int, int]  # prod, other stages
    batch_size: int
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    invokes_endpoint: bool = False
    reads_manifests: bool = False
    stat_headroom: int = 0  # > 0: a STAT queue of its own, and this many instances kept for it
    schedule_minutes: int = 0
    writes_state: bool = True  # False: reads the state table only, no data key, no bucket

    @property
    def handler(self) -> str:
        """The handler string of the function configuration (Lambda resolves it the same way)."""
        return f"functions.{self.name}.handler.lambda_handler"

    @property
    def has_queue(self) -> bool:
        """Whether the stage polls a work queue of its own (with a dead-letter queue)."""
        return self.trigger not in (Trigger.DEAD_LETTERS, Trigger.SCHEDULE)

    @property
    def queue_name(self) -> str:
        return f"{NAME_PREFIX}-{self.name}"

    @property
    def dlq_name(self) -> str:
        return f"{self.queue_name}-dlq"

    @property
    def has_stat_queue(self) -> bool:
        """Whether STAT studies reach the stage on a queue of their own, polled first."""
        return self.stat_headroom > 0

    @property
    def stat_queue_name(self) -> str:
        return f"{self.queue_name}-stat"

    @property
    def stat_dlq_name(self) -> str:
        return f"{self.stat_queue_name}-dlq"


def _stage(entry: dict[str, Any]) -> LambdaStage:
    try:
        stage = LambdaStage(
            **{
                **entry,
                "trigger": Trigger(entry["trigger"]),
                "reserved_concurrency": tuple(entry["reserved_concurrency"]),
                "reads": tuple(entry.get("reads", ())),
                "writes": tuple(entry.get("writes", ())),
            }
        )
    except (KeyError, TypeError, ValueError) as error:
        raise StageTableError(f"{STAGE_TABLE.name}: stage {entry.get('name')!r}: {error}") from None
    if stage.has_stat_queue and (
        stage.trigger is not Trigger.MANIFEST_CREATED
        or min(stage.reserved_concurrency) - stage.stat_headroom < 2
    ):
        raise StageTableError(
            f"{STAGE_TABLE.name}: stage {stage.name!r}: stat_headroom needs a manifest-created"
            " trigger and at least 2 reserved instances left for routine work"
        )
    return stage


def load_stages(path: Path = STAGE_TABLE) -> tuple[LambdaStage, ...]:
    """Every stage of `path`, in table order (the order the local runtime polls them)."""
    stages = tuple(_stage(entry) for entry in tomllib.loads(path.read_text())["stage"])
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise StageTableError(f"{path.name}: a stage name appears twice: {names}")
    return stages


LAMBDA_STAGES = load_stages()


def lambda_stage(name: str) -> LambdaStage:
    for stage in LAMBDA_STAGES:
        if stage.name == name:
            return stage
    raise StageTableError(f"no Lambda stage {name!r} in {STAGE_TABLE.name}")
