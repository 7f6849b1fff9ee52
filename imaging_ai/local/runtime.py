"""The embedded default: edge, cloud, inference, PACS and EHR running together on loopback.

Everything here is started as the real thing: a moto server for AWS, the Lambda handlers fed
by SQS dispatchers in the event shapes Lambda uses (named by their handler strings, as a
function configuration would), the inference container's server behind a local
InvokeEndpointAsync, the edge forwarder's own CLI, Orthanc as the PACS and a FHIR R4 server
as the EHR.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from imaging_ai import envelope
from imaging_ai.aws import Credentials, client, reset_clients
from imaging_ai.contracts import INFERENCE_FAILURE_PREFIX, INFERENCE_OUTPUT_PREFIX, Stage
from imaging_ai.dicom_folder import SendReport, StudyFolder, send_instances
from imaging_ai.edge_stage import EdgeStage
from imaging_ai.errors import PipelineError
from imaging_ai.lambda_stages import LAMBDA_STAGES, Trigger
from imaging_ai.local.async_endpoint import AsyncEndpoint, AsyncEndpointConfig
from imaging_ai.local.dispatcher import LocalEventSources, event_sources
from imaging_ai.local.fhir_server import FhirServer, start_fhir_server
from imaging_ai.local.function_process import FunctionProcess
from imaging_ai.local.identities import (
    SAGEMAKER_ROLE,
    Identities,
    RoleSpec,
    create_deployer,
    create_roles,
    function_role,
    site_role,
)
from imaging_ai.local.localstack_server import LocalStackServer, start_localstack
from imaging_ai.local.moto_server import MotoServer, free_port, start_moto_server
from imaging_ai.local.orthanc import SENDER_AE_TITLE, Orthanc, start_orthanc
from imaging_ai.local.processes import (
    ManagedProcess,
    dcmtk_tool,
    http_ready,
    peak_rss_bytes,
    tcp_ready,
)
from imaging_ai.local.provision import LocalResources, provision
from imaging_ai.local.timeline import (
    EDGE_TIMELINE_STAGES,
    FAILED,
    NOT_ANALYZED,
    NOT_ROUTED,
    SHADOW_STAGES,
    Timeline,
)
from imaging_ai.logs import get_logger
from imaging_ai.model_card import MODEL_CARD_NAME, ModelCard, load_model_card
from imaging_ai.model_registry import DEMO_MODEL_DIR, ModelRegistry
from imaging_ai.state import RunStateStore

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
FORWARDER_AE_TITLE = "EDGE_FWD"
MODALITY_AE_TITLE = "CT_MODALITY"

# Edge events after which the study cannot arrive without someone acting on it.
_EDGE_STUDY_FAILURE = "failed"
_EDGE_FAILURES = {_EDGE_STUDY_FAILURE, "dead_letter", "cloud_failed"}
_CLOUD_STAGES = {Stage.PREPROCESSED: "preprocessed", Stage.REPORTED: "reported"}
# Which stand-in serves the cloud's AWS APIs (README: `make demo BACKEND=localstack`).
BACKEND_ENV = "IMAGING_AI_BACKEND"
BACKENDS = ("moto", "localstack")
# Each model's inference server logs to `logs/inference-{model name}.log`.
INFERENCE_LOG_PREFIX = "inference-"
# Here every model's server shares the machine's cores with the others and with the rest of
# the pipeline (a SageMaker instance has its own). OpenMP threads that spin while they wait
# burn the cores another process needs: measured with the two demo models inferring at once,
# the head model took 5 CPU-seconds spinning (20-26 s wall) against 0.7 (1.4-1.6 s) waiting
# passively, and the chest model 22-27 s against 11-15 s.
SHARED_CORES_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
# Instances per Lambda function. Lambda runs each study's invocation in an instance of its own
# (reserved concurrency 4 and up, lambda_stages.toml); with one process per function, the
# demo's head CT waited ~5 s for the chest CT's preprocessing to end before its own began.
# Two: the demo's two studies; more would only share the same two cores.
LOCAL_CONCURRENCY = 2


@dataclass(frozen=True)
class LocalModel:
    """A model the local deployment runs: its own inference server and async endpoint."""

    # A model directory (e.g. a version folder of the model registry), or a model's registry
    # folder: then every version in it is kept (a re-run may pin one) and the newest is current.
    model_dir: Path
    # The local hospital runs it in shadow mode: results kept, never delivered.
    shadow: bool = False
    # A second endpoint serves its STAT runs (the CDK context's `stat`), with its own server
    # process: in AWS it is another instance, so a STAT request never waits for a routine
    # inference in progress (one server runs one inference at a time).
    stat_endpoint: bool = False

    def versions(self) -> list[ModelCard]:
        """The cards of every version this model keeps, oldest first."""
        if (self.model_dir / MODEL_CARD_NAME).is_file():
            return [load_model_card(self.model_dir)]
        registry = ModelRegistry(self.model_dir.parent)
        return [entry.card for entry in registry.kept(self.model_dir.name)]


@dataclass
class LocalPipeline:
    """Start every part, send studies, watch the timeline, stop everything.

    Parameters
    ----------
    work_dir
        Where logs, the forwarder's spool and state, Orthanc's storage and secrets go.
    site
        The site code of the local hospital.
    models
        The models deployed, each a model directory meeting the model contract (model.json +
        weights) with its own inference server and endpoint; the forwarder routes a study to
        each whose intended use it matches.
    quiet_seconds
        The forwarder's study quiet timer; short locally, a minute or more at a hospital.
    """

    work_dir: Path
    site: str = "demo-site"
    models: tuple[LocalModel, ...] = (LocalModel(DEMO_MODEL_DIR),)
    quiet_seconds: float = 3.0
    printer: Any = print
    backend: str = field(default_factory=lambda: os.environ.get(BACKEND_ENV) or "moto")
    # Given (moto backend only): the moto server enforces IAM, and every part runs as its
    # role, with the policies this returns for the provisioned resources (the CDK template's).
    iam_policies: Callable[[LocalResources], list[RoleSpec]] | None = None
    # Load Orthanc's DICOMweb plugin, for a viewer (`make demo VIEW=1`).
    pacs_dicomweb: bool = False
    timeline: Timeline = field(init=False)
    moto: MotoServer | None = field(default=None, init=False)
    cloud_moto: MotoServer | None = field(default=None, init=False)
    localstack: LocalStackServer | None = field(default=None, init=False)
    identities: Identities | None = field(default=None, init=False)
    resources: LocalResources | None = field(default=None, init=False)
    cards: list[ModelCard] = field(default_factory=list, init=False)  # current versions
    _kept_cards: list[ModelCard] = field(default_factory=list, init=False)  # every version
    pacs: Orthanc | None = field(default=None, init=False)
    ehr: FhirServer | None = field(default=None, init=False)
    forwarder_port: int = field(default=0, init=False)
    _processes: list[ManagedProcess] = field(default_factory=list, init=False)
    _endpoint: AsyncEndpoint | None = field(default=None, init=False)  # every model's
    _sources: LocalEventSources | None = field(default=None, init=False)
    _functions: dict[str, list[FunctionProcess]] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _saved_environ: dict[str, str] = field(default_factory=dict, init=False)
    _console: Any = field(default=None, init=False)
    _function_log: Any = field(default=None, init=False)
    pseudo_study_uids: set[str] = field(default_factory=set, init=False)
    failures: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.timeline = Timeline(printer=self.printer)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalPipeline:
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ raises: stop what did start.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        logs = self.work_dir / "logs"
        logs.mkdir(exist_ok=True)
        kept = [model.versions() for model in self.models]
        if not all(kept):
            raise PipelineError("a local model folder holds no model version")
        self.cards = [versions[-1] for versions in kept]
        self._kept_cards = [card for versions in kept for card in versions]
        if len({card.name for card in self.cards}) != len(self.cards):
            raise PipelineError("each local model needs its own name")
        self._start_cloud(logs)
        assert self.resources
        bucket = self.resources.data_bucket
        endpoints = []
        for model, card in zip(self.models, self.cards, strict=True):
            # (endpoint, its server's name): the model's, then its STAT one's where it has one
            served = [(self.resources.model_endpoints[card.name], card.name)]
            if model.stat_endpoint:
                served.append((self.resources.stat_model_endpoints[card.name], f"{card.name}-stat"))
            for endpoint_name, server_name in served:
                endpoints.append(
                    AsyncEndpointConfig(
                        endpoint_name=endpoint_name,
                        inference_url=self._start_inference_server(model, server_name, logs),
                        s3_output_path=f"s3://{bucket}/{INFERENCE_OUTPUT_PREFIX.rstrip('/')}",
                        s3_failure_path=f"s3://{bucket}/{INFERENCE_FAILURE_PREFIX.rstrip('/')}",
                        success_topic_arn=self.resources.inference_success_topic_arn,
                        error_topic_arn=self.resources.inference_error_topic_arn,
                        execution_role=self._role(SAGEMAKER_ROLE),
                    )
                )
        self._endpoint = AsyncEndpoint(endpoints, on_result=self._on_inference_result).start()
        self._set_environ(
            {
                **self.resources.function_environment(),
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self._endpoint.url,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_DEV": "false",
            }
        )
        # One process per function, INIT done before the first event (a warm function).
        # In IAM mode the handlers run in-process as their roles (`acting_as`) instead: a
        # function process would inherit this process's (the deployer's) credentials.
        if self.identities is None:
            self._say(f"starting the Lambda functions, up to {LOCAL_CONCURRENCY} processes each")
            self._functions = {
                stage.name: [
                    FunctionProcess(stage.handler, stage.name, logs / "lambda.log").start()
                    # The dead-letter stage sees failures only: one instance is plenty.
                    for _ in range(LOCAL_CONCURRENCY if stage.has_queue else 1)
                ]
                for stage in LAMBDA_STAGES
                if stage.trigger is not Trigger.SCHEDULE  # nothing feeds it here
            }
        self._sources = event_sources(
            self.resources.queues,
            wait_time_s=1,
            roles={
                stage.name: role
                for stage in LAMBDA_STAGES
                if (role := self._role(function_role(stage.name))) is not None
            },
            invokers=self._functions,
            stat_queues=self.resources.stat_queues,
        )
        self._redirect_function_logs(logs / "lambda.log")
        self._spawn("lambda-dispatcher", self._sources.run_forever, self._stop)
        self._say("starting Orthanc as the PACS and a FHIR R4 server as the EHR")
        self.pacs = start_orthanc(self.work_dir / "pacs", dicomweb=self.pacs_dicomweb)
        self.ehr = start_fhir_server(logs)
        self._start_forwarder(logs)
        self._spawn("cloud-state-watcher", self._watch_cloud_state)

    def _start_inference_server(self, model: LocalModel, server_name: str, logs: Path) -> str:
        """The inference container's server for one endpoint of a model (`server_name`: the
        model's name, or its STAT endpoint's), on the CPU; returns its URL."""
        port = free_port()
        self._say("starting the inference container's server on the CPU", model=server_name)
        self._processes.append(
            ManagedProcess(
                name=f"inference server {server_name}",
                argv=[
                    sys.executable,
                    "-m",
                    "containers.inference.serve",
                    "--model-dir",
                    str(model.model_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                log_path=logs / f"{INFERENCE_LOG_PREFIX}{server_name}.log",
                cwd=REPO_ROOT,
                env=SHARED_CORES_ENVIRONMENT,
            ).start(http_ready(f"http://127.0.0.1:{port}/ping"), timeout_s=120)
        )
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._stop.set()
        if self._console is not None:
            sys.stdout, self._console = self._console, None
        for process in reversed(self._processes):
            process.stop()
        for thread in self._threads:
            thread.join(timeout=15)
        for instances in self._functions.values():
            for function in instances:
                function.stop()
        if self._endpoint:
            self._endpoint.stop()
        for server in (self.ehr, self.pacs):
            if server is not None:
                server.stop()
        for aws in (self.localstack, self.cloud_moto, self.moto):
            if aws is not None:
                aws.stop()
        for name, value in self._saved_environ.items():
            if value == "\0unset":
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_clients()
        envelope.reset_providers()

    # -- the cloud's side --------------------------------------------------------------------

    def _start_cloud(self, logs: Path) -> None:
        """The AWS stand-in, the resources on it, and (IAM mode) the roles to act as.

        A plain moto server always runs: the cloud's AWS by default and, under LocalStack, the
        DynamoDB state table.
        """
        if self.backend not in BACKENDS:
            raise PipelineError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}")
        if self.iam_policies is not None and self.backend != "moto":
            raise PipelineError("IAM enforcement is a moto mode; LocalStack's is not free")
        self.moto = start_moto_server(log_path=logs / "moto.log")
        environment = self.moto.environment()
        if self.backend == "localstack":
            self._say("starting LocalStack (S3, SQS, SNS, EventBridge, KMS) on 127.0.0.1")
            self.localstack = start_localstack(self.work_dir, log_path=logs / "localstack.log")
            self._say("LocalStack ready", seconds=round(self.localstack.started_in_s, 1))
            # LocalStack's DynamoDB needs a Java download: the state table stays on moto.
            environment = {
                **self.localstack.environment(),
                "AWS_ENDPOINT_URL_DYNAMODB": self.moto.endpoint_url,
            }
        elif self.iam_policies is not None:
            self._say("starting moto server enforcing the CDK roles' IAM policies on 127.0.0.1")
            self.cloud_moto = start_moto_server(
                log_path=logs / "moto-iam.log", iam=True, denials_log=logs / "iam-denials.jsonl"
            )
            deployer = create_deployer(self.cloud_moto)
            environment = {**self.cloud_moto.environment(), **deployer.environment()}
            environment.pop("AWS_SESSION_TOKEN", None)
            self._saved_environ.setdefault(
                "AWS_SESSION_TOKEN", os.environ.get("AWS_SESSION_TOKEN", "\0unset")
            )
            os.environ.pop("AWS_SESSION_TOKEN", None)
        else:
            self._say(
                "starting moto server (S3, SQS, SNS, EventBridge, KMS, DynamoDB) on 127.0.0.1"
            )
        self._set_environ(environment)
        self.resources = provision(
            [self.site],
            self._kept_cards,
            stat_endpoint_models=[
                card.name
                for model, card in zip(self.models, self.cards, strict=True)
                if model.stat_endpoint
            ],
        )
        if self.iam_policies is not None and self.cloud_moto is not None:
            self.identities = create_roles(
                self.cloud_moto, deployer, self.iam_policies(self.resources)
            )

    def _role(self, name: str) -> Credentials | None:
        return self.identities.role(name) if self.identities else None

    def iam_denials(self) -> list[dict[str, str]]:
        """Calls the IAM-enforcing server refused (empty outside IAM mode)."""
        return self.cloud_moto.denials() if self.cloud_moto else []

    # -- the hospital's side -----------------------------------------------------------------

    def _start_forwarder(self, logs: Path) -> None:
        assert self.resources and self.pacs and self.ehr and self.cards
        edge = self.work_dir / "edge"
        edge.mkdir(exist_ok=True)
        for name in ("site-secret.hex", "crosswalk-key.hex"):
            secret = edge / name
            if not secret.exists():
                secret.write_text(secrets.token_hex(32))
                secret.chmod(0o600)
        self.forwarder_port = free_port()
        config = edge / "forwarder.toml"
        config.write_text(
            _forwarder_config(
                site=self.site,
                port=self.forwarder_port,
                quiet_seconds=self.quiet_seconds,
                models=list(zip(self.cards, (m.shadow for m in self.models), strict=True)),
                bucket=self.resources.data_bucket,
                kms_key_arn=self.resources.kms_key_arn,
                pacs=self.pacs,
                ehr_url=self.ehr.base_url,
            )
        )
        self._say("starting the edge forwarder (C-STORE SCP)", port=self.forwarder_port)
        site_credentials = self._role(site_role(self.site))
        process = ManagedProcess(
            name="edge forwarder",
            argv=[*_forwarder_command(), "run", "--config", str(config)],
            log_path=logs / "edge-forwarder.log",
            cwd=REPO_ROOT,
            # The forwarder holds its site role's credentials only, as at a hospital.
            env=site_credentials.environment() if site_credentials else {},
        ).start(tcp_ready("127.0.0.1", self.forwarder_port), timeout_s=60)
        self._processes.append(process)
        self._spawn("edge-log-follower", self._follow_edge_log, process.log_path)

    def follow_new_study(self) -> None:
        """Follow the next study sent from scratch: a fresh timeline, and none of the previous
        study's pseudo study UIDs or failures (a pipeline kept running for several studies, one
        after another: each waits for and reports only its own)."""
        self.timeline = Timeline(printer=self.printer)
        # Replaced, not cleared: the watcher threads iterate over copies of the old ones.
        self.pseudo_study_uids = set()
        self.failures = []

    def send_study(self, folder: Path) -> None:
        """C-STORE every file of `folder` to the forwarder with DCMTK storescu, as a modality."""
        storescu = dcmtk_tool("storescu")
        if storescu is None:
            raise PipelineError("DCMTK storescu is not installed (Debian package 'dcmtk')")
        result = subprocess.run(
            [
                storescu,
                "--scan-directories",
                "--required",  # propose only what the files need (CT + any SR/SEG present)
                "--aetitle",
                MODALITY_AE_TITLE,
                "--call",
                FORWARDER_AE_TITLE,
                "127.0.0.1",
                str(self.forwarder_port),
                str(folder),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise PipelineError(f"storescu failed ({result.returncode}): {result.stderr[-500:]}")

    def send_folder(self, found: StudyFolder) -> SendReport:
        """C-STORE a user's folder (as scanned) to the forwarder: every instance, each in its
        own transfer syntax; DICOMDIRs and other files were left out by the scan."""
        return send_instances(
            found, "127.0.0.1", self.forwarder_port, FORWARDER_AE_TITLE, MODALITY_AE_TITLE
        )

    @property
    def edge_state_dir(self) -> Path:
        """The forwarder's state folder: journal, outbox, and the delivery folder of each run."""
        return self.work_dir / "edge" / "state"

    def edge_status(self) -> list[dict[str, Any]]:
        """What `edge-forwarder status --json` says of every run, as a site operator sees it."""
        result = subprocess.run(
            [*_forwarder_command(), "status", "--json", "--config",
             str(self.work_dir / "edge" / "forwarder.toml")],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise PipelineError(f"edge-forwarder status failed: {result.stderr[-500:]}")
        runs: list[dict[str, Any]] = json.loads(result.stdout)
        return runs

    def peak_rss(self) -> dict[str, int]:
        """Peak resident bytes of each process of the pipeline, by what it runs."""
        peaks = {  # a function's largest instance: what its memory setting must cover
            name: max(function.peak_rss_bytes() for function in instances)
            for name, instances in self._functions.items()
        }
        for process in self._processes:
            if process.process is not None:
                peaks[process.name] = peak_rss_bytes(process.process.pid)
        return peaks

    def wait_until_delivered(self, timeout_s: float) -> bool:
        """Until every run of the study is over and the live results reached PACS and EHR and,
        where a model runs in shadow mode, its results were kept on the edge."""
        stages: tuple[str, ...] = (EdgeStage.DELIVERED_PACS, EdgeStage.DELIVERED_EHR)
        if any(model.shadow for model in self.models):
            stages += (EdgeStage.SHADOW_STORED,)
        return self.timeline.wait_for(stages, timeout_s)

    # -- watchers ----------------------------------------------------------------------------

    def _follow_edge_log(self, path: Path) -> None:
        with path.open("r", encoding="utf-8", errors="replace") as log:
            while not self._stop.is_set():
                line = log.readline()
                if not line:
                    time.sleep(0.1)
                    continue
                self._on_edge_line(line)

    def _on_edge_line(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return
        if not isinstance(entry, dict):
            return
        event = entry.get("event")
        if entry.get("pseudo_study_uid"):
            self.pseudo_study_uids.add(str(entry["pseudo_study_uid"]))
        run_id = str(entry["run_id"]) if entry.get("run_id") else None
        study_key = str(entry["study_key"]) if entry.get("study_key") else None
        if event == EdgeStage.COMPLETE and run_id and study_key:
            self.timeline.name_run(run_id, study_key, str(entry.get("name", "")))
        if event in (*EDGE_TIMELINE_STAGES, *SHADOW_STAGES, EdgeStage.NOTIFIED_CRITICAL):
            at = _monotonic(entry.get("time"))
            self.timeline.record(str(event), _detail(entry), run_id, at, study_key)
        elif event == "route_decision" and entry.get("status") == "no_rule_matched":
            self.timeline.record(NOT_ROUTED)
        elif event == EdgeStage.NOT_ANALYZED:
            # Recorded when the site has it (status, metric, audit), not when the cloud
            # decides: the run is over for the user only then.
            self.timeline.record(NOT_ANALYZED, str(entry.get("reason", "")), run_id)
        elif event in _EDGE_FAILURES or entry.get("level") == "ERROR":
            self.failures.append(entry)
            if event in _EDGE_FAILURES:
                # The edge's own "failed" (de-identification) fails every run of the study.
                scope = None if event == _EDGE_STUDY_FAILURE else run_id
                self.timeline.record(FAILED, f"{event}: {entry.get('reason', '')}", scope)

    def _on_inference_result(self, inference_id: str, status: str) -> None:
        if status == "Completed":
            # The preprocess function derives each request's InferenceId from its run id.
            run_id = next((r for r in list(self.timeline.runs) if r and r in inference_id), None)
            self.timeline.record("inferred", run_id=run_id)
        else:
            self.failures.append({"event": "inference_failed", "inference_id": inference_id})

    def _watch_cloud_state(self) -> None:
        assert self.resources
        store = RunStateStore(client("dynamodb"), self.resources.state_table)
        while not self._stop.wait(0.5):
            for pseudo_study_uid in list(self.pseudo_study_uids):
                try:
                    runs = store.timeline(self.site, pseudo_study_uid)
                except Exception:  # the watcher only reports; a hiccup must not end it
                    logger.exception("state_poll_failed")
                    continue
                for run in runs:
                    for stage, name in _CLOUD_STAGES.items():
                        if stage in run.stage_times:
                            at = _monotonic(run.stage_times[stage])
                            self.timeline.record(name, run_id=run.key.run_id, at=at)
                    if run.stage == Stage.FAILED:
                        self.timeline.record(FAILED, run.reason or "", run.key.run_id)

    # -- helpers -----------------------------------------------------------------------------

    def _redirect_function_logs(self, path: Path) -> None:
        """Lambda logs go to a file, as they would go to CloudWatch, not into the timeline.

        Powertools binds its handler to `sys.stdout` when the functions are first imported,
        which happens in the dispatcher thread after this swap; our own output keeps the
        console through `printer`.
        """
        console = sys.stdout
        if self.printer is print:
            self.printer = functools.partial(print, file=console, flush=True)
            self.timeline.printer = self.printer
        self._console = console
        self._function_log = path.open("a", encoding="utf-8")
        sys.stdout = self._function_log
        # Library warnings raised inside the handlers (highdicom's, say) belong there too.
        logging.captureWarnings(True)
        warnings_log = logging.getLogger("py.warnings")
        warnings_log.addHandler(logging.StreamHandler(self._function_log))
        warnings_log.propagate = False

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _set_environ(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self._saved_environ.setdefault(name, os.environ.get(name, "\0unset"))
            os.environ[name] = value
        reset_clients()
        envelope.reset_providers()

    def _say(self, text: str, **fields: Any) -> None:
        logger.info("runtime", step=text, **fields)
        if self.printer:
            self.printer(f"- {text}")


def _forwarder_command() -> list[str]:
    executable = shutil.which("edge-forwarder", path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", "edge_forwarder.cli"]


def _monotonic(logged: object) -> float | None:
    """The monotonic instant of a wall-clock time another process logged or stored (an ISO
    string or a datetime; None: now), so a stage counts from when it happened, not from when
    its log line was read or its state polled."""
    try:
        when = logged if isinstance(logged, datetime) else datetime.fromisoformat(str(logged))
    except ValueError:
        return None
    return time.monotonic() - max(0.0, time.time() - when.timestamp())


def _detail(entry: dict[str, Any]) -> str:
    parts = []
    for name in ("instances", "series", "count", "bytes", "run_id"):
        if name in entry:
            parts.append(f"{name}={entry[name]}")
    return ", ".join(parts)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _routes(card: ModelCard) -> str:
    """Route as a hospital would, from the model's declared intended use: a CT series whose
    Body Part Examined, or else whose description, says the model's region."""
    use = card.intended_use
    base = (
        f"[[intake.routing]]\nmodel = {_toml_string(card.name)}\n"
        f"modality = {json.dumps(use.modality)}\nmin_instances = {use.min_slices}\n"
    )
    rules = []
    if use.body_part_examined:
        rules.append(base + f"body_part = {json.dumps(use.body_part_examined)}\n")
    if use.series_description:
        rules.append(base + f"series_description = {_toml_string(use.series_description)}\n")
    return "\n".join(rules or [base])


def _model_modes(models: list[tuple[ModelCard, bool]]) -> str:
    """The `[models]` table: which models the local hospital runs in shadow mode."""
    return "".join(
        f'[models.{_toml_string(card.name)}]\nmode = "shadow"\n\n'
        for card, shadow in models
        if shadow
    )


def _forwarder_config(
    site: str,
    port: int,
    quiet_seconds: float,
    models: list[tuple[ModelCard, bool]],
    bucket: str,
    kms_key_arn: str,
    pacs: Orthanc,
    ehr_url: str,
) -> str:
    """The forwarder's TOML config for the local hospital (relative paths: next to the file).

    The loops poll every 0.2 s: each tick is a few local reads, and a study waits for the next
    tick after its quiet timer and again after its results arrive.
    """
    routes = "\n".join(_routes(card) for card, _ in models)
    return f"""# Written by the local runtime (edge_forwarder/example-config.toml: every option).
site = {_toml_string(site)}
state_dir = "state"
poll_interval_s = 0.2

[intake]
ae_title = {_toml_string(FORWARDER_AE_TITLE)}
host = "127.0.0.1"
port = {port}
spool_dir = "spool"
quiet_seconds_study = {quiet_seconds}
quiet_seconds_series = {quiet_seconds}
min_free_disk_bytes = 104857600

{routes}

# Only the local modality (DCMTK storescu in `send_study`) may store, and only from loopback.
[[intake.senders]]
name = "local-modality"
ae_title = {_toml_string(MODALITY_AE_TITLE)}
addresses = ["127.0.0.1"]

[deid]
site_secret = {{ file = "site-secret.hex" }}

[crosswalk]
path = "crosswalk.sqlite"
key = {{ file = "crosswalk-key.hex" }}

[aws]
bucket = {_toml_string(bucket)}
kms_key_arn = {_toml_string(kms_key_arn)}

[results]
wait_time_s = 1

[pacs]
host = "127.0.0.1"
port = {pacs.dicom_port}
ae_title = {_toml_string(pacs.ae_title)}
calling_ae_title = {_toml_string(SENDER_AE_TITLE)}
max_attempts = 3
retry_base_s = 0.5

[ehr]
base_url = {_toml_string(ehr_url)}
max_attempts = 3
retry_base_s = 0.5

[observability]
metrics_port = 0

{_model_modes(models)}"""
