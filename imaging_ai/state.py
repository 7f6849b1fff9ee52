"""Run state in DynamoDB: one item per (site, pseudo study, run), moved by conditional writes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from imaging_ai.contracts import (
    NEXT_STAGE,
    NOT_ANALYZED_FROM,
    Stage,
    check_run_id,
    check_site,
    check_uid,
)
from imaging_ai.errors import PipelineError

# Single-table layout: the partition groups every run of a study (one query = its timeline).
PARTITION_KEY = "pk"
SORT_KEY = "sk"
KEY_SCHEMA = [
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
]
ATTRIBUTE_DEFINITIONS = [
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "S"},
]
# The work lease: who is processing a run right now, and until when (epoch seconds).
LEASE_HOLDER = "lease_holder"
LEASE_UNTIL = "lease_until"
_STAGE_VALUES = frozenset(stage.value for stage in Stage)
_REASON_LIMIT = 500


class StateError(PipelineError):
    """The run-state store refused or could not perform a write."""


class StageConflict(StateError):
    """A conditional write lost: the run is not in the stage the writer expected."""

    def __init__(self, run: RunKey, expected: Stage | None, actual: Stage | None) -> None:
        super().__init__(
            f"run {run.run_id} is in stage {actual.value if actual else 'absent'}, "
            f"expected {expected.value if expected else 'absent'}"
        )
        self.expected = expected
        self.actual = actual


class RunBusy(StateError):
    """Another delivery holds the run's work lease: retry after it ends (or expires)."""


@dataclass(frozen=True)
class RunKey:
    site: str
    pseudo_study_uid: str
    run_id: str

    def __post_init__(self) -> None:
        check_site(self.site)
        check_uid(self.pseudo_study_uid)
        check_run_id(self.run_id)

    @property
    def item_key(self) -> dict[str, dict[str, str]]:
        return {
            PARTITION_KEY: {"S": study_partition(self.site, self.pseudo_study_uid)},
            SORT_KEY: {"S": f"RUN#{self.run_id}"},
        }


def study_partition(site: str, pseudo_study_uid: str) -> str:
    return f"STUDY#{check_site(site)}#{check_uid(pseudo_study_uid)}"


@dataclass(frozen=True)
class RunState:
    """One run as stored: its stage, when it entered each stage, and why it failed if it did."""

    key: RunKey
    stage: Stage
    stage_times: dict[Stage, datetime]
    model_name: str | None = None
    reason: str | None = None
    failed_from: Stage | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def stage_latencies_s(self) -> dict[Stage, float]:
        """Seconds spent reaching each stage from the one before it, in pipeline order."""
        ordered = sorted(self.stage_times.items(), key=lambda item: item[1])
        return {
            stage: (at - ordered[index - 1][1]).total_seconds()
            for index, (stage, at) in enumerate(ordered)
            if index > 0
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _time_attribute(stage: Stage) -> str:
    return f"at_{stage.value}"


class RunStateStore:
    """Conditional writes over a DynamoDB client (pass `imaging_ai.aws.client("dynamodb")`)."""

    def __init__(self, dynamodb: Any, table_name: str) -> None:
        self._db = dynamodb
        self._table = table_name

    def start(self, run: RunKey, model_name: str, attributes: dict[str, str] | None = None) -> bool:
        """Record RECEIVED unless the run exists; True when this call created it."""
        item: dict[str, Any] = {
            **run.item_key,
            "site": {"S": run.site},
            "pseudo_study_uid": {"S": run.pseudo_study_uid},
            "run_id": {"S": run.run_id},
            "stage": {"S": Stage.RECEIVED.value},
            "model_name": {"S": model_name},
            _time_attribute(Stage.RECEIVED): {"S": _now()},
        }
        for name, value in (attributes or {}).items():
            item[f"attr_{name}"] = {"S": value}
        try:
            self._db.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(#pk)",
                ExpressionAttributeNames={"#pk": PARTITION_KEY},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def advance(self, run: RunKey, to: Stage, attributes: dict[str, str] | None = None) -> None:
        """Move to `to` only from its predecessor; raise StageConflict otherwise."""
        expected = next((prior for prior, after in NEXT_STAGE.items() if after == to), None)
        if expected is None:
            raise StateError(f"stage {to.value} has no predecessor; use start() or fail()")
        names = {"#stage": "stage", "#at": _time_attribute(to)}
        values: dict[str, Any] = {
            ":to": {"S": to.value},
            ":expected": {"S": expected.value},
            ":now": {"S": _now()},
        }
        updates = ["#stage = :to", "#at = :now"]
        for index, (name, value) in enumerate((attributes or {}).items()):
            names[f"#a{index}"] = f"attr_{name}"
            values[f":a{index}"] = {"S": value}
            updates.append(f"#a{index} = :a{index}")
        if not self._updated_if(
            run, "SET " + ", ".join(updates), "#stage = :expected", names, values
        ):
            current = self.get(run)
            raise StageConflict(run, expected, current.stage if current else None)

    def claim(
        self, run: RunKey, stages: tuple[Stage, ...], holder: str, lease_s: float
    ) -> RunState | None:
        """Take the run's work lease while it is in one of `stages` and return the run as
        claimed; None when it is in another stage or another holder's lease is still live.

        Conditional stage moves alone leave a window: two deliveries that both read
        PREPROCESSED would both call the endpoint before either recorded INFERRING. The lease
        closes it, and it expires (a crashed holder must not block the run's retries forever).
        """
        if not stages:
            raise StateError("claim needs at least one stage")
        now = time.time()
        values: dict[str, Any] = {
            ":holder": {"S": holder},
            ":until": {"N": f"{now + lease_s:.3f}"},
            ":now": {"N": f"{now:.3f}"},
        }
        for index, stage in enumerate(stages):
            values[f":s{index}"] = {"S": stage.value}
        allowed = ", ".join(f":s{index}" for index in range(len(stages)))
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=run.item_key,
                ReturnValues="ALL_NEW",
                UpdateExpression="SET #holder = :holder, #until = :until",
                ConditionExpression=f"#stage IN ({allowed}) AND "
                "(attribute_not_exists(#until) OR #until < :now)",
                ExpressionAttributeNames={
                    "#stage": "stage",
                    "#holder": LEASE_HOLDER,
                    "#until": LEASE_UNTIL,
                },
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return None
            raise
        return _to_state(response["Attributes"])

    def claim_work(
        self, run: RunKey, stages: tuple[Stage, ...], lease_s: float
    ) -> tuple[RunState, str] | None:
        """Claim the run for this delivery: (the run as claimed, the holder id to release).

        None when the run has moved past `stages` (a duplicate delivery, to acknowledge);
        RunBusy when another delivery's live lease holds it (the message must be retried).
        """
        holder = uuid.uuid4().hex
        claimed = self.claim(run, stages, holder, lease_s)
        if claimed is not None:
            return claimed, holder
        current = self.get(run)
        if current is not None and current.stage in stages:
            raise RunBusy(f"run {run.run_id} is being processed by another delivery")
        return None

    def release(self, run: RunKey, holder: str) -> None:
        """Give the work lease back, if `holder` still has it (a taken-over lease stays)."""
        try:
            self._db.update_item(
                TableName=self._table,
                Key=run.item_key,
                UpdateExpression="REMOVE #holder, #until",
                ConditionExpression="#holder = :holder",
                ExpressionAttributeNames={"#holder": LEASE_HOLDER, "#until": LEASE_UNTIL},
                ExpressionAttributeValues={":holder": {"S": holder}},
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise

    def fail(self, run: RunKey, reason: str, model_name: str | None = None) -> bool:
        """Record FAILED with a reason from any non-terminal stage (creating the item if absent).

        Returns False when the run had already ended (DELIVERED, FAILED or NOT_ANALYZED):
        nothing changes.
        """
        names = {
            "#stage": "stage",
            "#at": _time_attribute(Stage.FAILED),
            "#reason": "reason",
            "#from": "failed_from",
            "#site": "site",
            "#study": "pseudo_study_uid",
            "#run": "run_id",
        }
        values: dict[str, Any] = {
            ":failed": {"S": Stage.FAILED.value},
            ":delivered": {"S": Stage.DELIVERED.value},
            ":not_analyzed": {"S": Stage.NOT_ANALYZED.value},
            ":now": {"S": _now()},
            ":reason": {"S": reason[:_REASON_LIMIT]},
            ":absent": {"S": "ABSENT"},
            ":site": {"S": run.site},
            ":study": {"S": run.pseudo_study_uid},
            ":run": {"S": run.run_id},
        }
        update = (
            "SET #from = if_not_exists(#stage, :absent), #stage = :failed, #at = :now, "
            "#reason = :reason, #site = :site, #study = :study, #run = :run"
        )
        if model_name:
            names["#model"] = "model_name"
            values[":model"] = {"S": model_name}
            update += ", #model = if_not_exists(#model, :model)"
        return self._updated_if(
            run,
            update,
            "attribute_not_exists(#stage) OR "
            "(#stage <> :failed AND #stage <> :delivered AND #stage <> :not_analyzed)",
            names,
            values,
        )

    def not_analyze(self, run: RunKey, reason: str) -> bool:
        """Record NOT_ANALYZED with its reason, from a stage before inference only.

        Returns False when the run is elsewhere (already ended, or past preprocessing): a
        redelivered event must neither re-record it nor tell the site twice.
        """
        values: dict[str, Any] = {
            ":to": {"S": Stage.NOT_ANALYZED.value},
            ":now": {"S": _now()},
            ":reason": {"S": reason[:_REASON_LIMIT]},
        }
        for index, stage in enumerate(NOT_ANALYZED_FROM):
            values[f":s{index}"] = {"S": stage.value}
        allowed = ", ".join(f":s{index}" for index in range(len(NOT_ANALYZED_FROM)))
        names = {
            "#stage": "stage",
            "#from": "failed_from",
            "#at": _time_attribute(Stage.NOT_ANALYZED),
            "#reason": "reason",
        }
        return self._updated_if(
            run,
            "SET #from = #stage, #stage = :to, #at = :now, #reason = :reason",
            f"#stage IN ({allowed})",
            names,
            values,
        )

    def _updated_if(
        self,
        run: RunKey,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> bool:
        """Apply `update` if `condition` holds; False (nothing changed) when it does not."""
        try:
            self._db.update_item(
                TableName=self._table,
                Key=run.item_key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def get(self, run: RunKey) -> RunState | None:
        response = self._db.get_item(TableName=self._table, Key=run.item_key, ConsistentRead=True)
        item = response.get("Item")
        return _to_state(item) if item else None

    def timeline(self, site: str, pseudo_study_uid: str) -> list[RunState]:
        """Every run of a study with its per-stage times, oldest first."""
        states: list[RunState] = []
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="#pk = :pk AND begins_with(#sk, :run)",
            ExpressionAttributeNames={"#pk": PARTITION_KEY, "#sk": SORT_KEY},
            ExpressionAttributeValues={
                ":pk": {"S": study_partition(site, pseudo_study_uid)},
                ":run": {"S": "RUN#"},
            },
            ConsistentRead=True,
        ):
            states.extend(_to_state(item) for item in page.get("Items", []))
        return sorted(
            states, key=lambda state: min(state.stage_times.values(), default=datetime.min)
        )

    def runs(self) -> list[RunState]:
        """Every run in the table (a Scan: for reports over all sites, not the request path)."""
        states: list[RunState] = []
        paginator = self._db.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self._table,
            FilterExpression="begins_with(#sk, :run)",
            ExpressionAttributeNames={"#sk": SORT_KEY},
            ExpressionAttributeValues={":run": {"S": "RUN#"}},
        ):
            states.extend(_to_state(item) for item in page.get("Items", []))
        return states

    def put_baseline(self, site: str, model_name: str, baseline_json: str) -> None:
        """Store the drift baseline of (site, model): the validation's profiles, no PHI."""
        self._db.put_item(
            TableName=self._table,
            Item={
                PARTITION_KEY: {"S": _baseline_partition(site, model_name)},
                SORT_KEY: {"S": "BASELINE"},
                "baseline": {"S": baseline_json},
            },
        )

    def baseline(self, site: str, model_name: str) -> str | None:
        response = self._db.get_item(
            TableName=self._table,
            Key={
                PARTITION_KEY: {"S": _baseline_partition(site, model_name)},
                SORT_KEY: {"S": "BASELINE"},
            },
            ConsistentRead=True,
        )
        item = response.get("Item")
        return str(item["baseline"]["S"]) if item else None


def _baseline_partition(site: str, model_name: str) -> str:
    return f"BASELINE#{check_site(site)}#{model_name}"


def _is_condition_failure(error: ClientError) -> bool:
    return bool(error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _to_state(item: dict[str, Any]) -> RunState:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value["S"]) if value else None

    stage_times = {
        stage: datetime.fromisoformat(str(item[_time_attribute(stage)]["S"]))
        for stage in Stage
        if _time_attribute(stage) in item
    }
    failed_from = text("failed_from")
    return RunState(
        key=RunKey(
            site=str(text("site")),
            pseudo_study_uid=str(text("pseudo_study_uid")),
            run_id=str(text("run_id")),
        ),
        stage=Stage(str(text("stage"))),
        stage_times=stage_times,
        model_name=text("model_name"),
        reason=text("reason"),
        failed_from=Stage(failed_from) if failed_from in _STAGE_VALUES else None,
        attributes={
            name.removeprefix("attr_"): str(value["S"])
            for name, value in item.items()
            if name.startswith("attr_")
        },
    )
