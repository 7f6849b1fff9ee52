"""Benchmark: STAT vs routine latency through the cloud half under load, priority on vs FIFO.

Five routine studies (``--routine``) and then one STAT study are uploaded as the edge leaves
them (encrypted series tar, manifest last) while the cloud is not polling: the backlog a busy
morning leaves. Then the cloud starts: the local event source mappings (STAT queue first),
the real preprocess and postprocess functions in-process, the local async endpoint in front
of the real inference server (``containers.inference.serve``, the shipped demo model, CPU).
Latency is from that release to the site's RESULT_READY message, per study.

The peer, on the same studies in the same run: FIFO, what the pipeline did before priority
(every manifest under the routine key, every request routine), so the STAT study waits for
all five routine ones. The last line is JSON.

    python -m benchmarks.priority [--routine 5] [--slices 48] [--size 192]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from imaging_ai.aws import client, reset_clients
from imaging_ai.contracts import (
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    Priority,
    SiteResultMessage,
)
from imaging_ai.local.async_endpoint import AsyncEndpoint, AsyncEndpointConfig
from imaging_ai.local.dispatcher import event_sources
from imaging_ai.local.moto_server import free_port, start_moto_server
from imaging_ai.local.processes import ManagedProcess, http_ready
from imaging_ai.local.provision import LocalResources, provision
from imaging_ai.model_card import load_model_card
from imaging_ai.model_registry import DEMO_MODEL_DIR
from tests.functions_support import SITE, make_series, upload_study

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = DEMO_MODEL_DIR
TIMEOUT_S = 900.0


def run_backlog(
    resources: LocalResources,
    series: list[Any],
    tmp: Path,
    mode: str,
    model_name: str,
) -> dict[str, float]:
    """Upload every study (the last one STAT in "priority" mode), release the cloud, time each."""
    priorities = [Priority.ROUTINE] * (len(series) - 1) + [
        Priority.STAT if mode == "priority" else Priority.ROUTINE
    ]
    run_of: dict[str, str] = {}
    for number, (prepared, priority) in enumerate(zip(series, priorities, strict=True)):
        run_id = f"{mode}-{number}"
        study = upload_study(
            resources.data_bucket,
            resources.kms_key_arn,
            tmp / run_id,
            run_id=run_id,
            model_name=model_name,
            prepared=prepared,
            priority=priority,
        )
        run_of[run_id] = "stat" if number == len(series) - 1 else f"routine-{number}"
        del study
    sources = event_sources(resources.queues, wait_time_s=1, stat_queues=resources.stat_queues)
    stop = threading.Event()
    cloud = threading.Thread(target=sources.run_forever, args=(stop,), name="event-sources")
    released = time.perf_counter()
    cloud.start()
    latency: dict[str, float] = {}
    sqs, queue_url = client("sqs"), resources.site_results_queues[SITE]
    try:
        deadline = released + TIMEOUT_S
        while len(latency) < len(run_of) and time.perf_counter() < deadline:
            answer = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for raw in answer.get("Messages", []):
                arrived = time.perf_counter() - released
                message = SiteResultMessage.model_validate_json(raw["Body"])
                if message.kind != "RESULT_READY":
                    raise SystemExit(f"{message.run_id}: {message.kind} {message.reason}")
                latency[run_of[message.run_id]] = arrived
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=raw["ReceiptHandle"])
    finally:
        stop.set()
        cloud.join()
    if len(latency) < len(run_of):
        raise SystemExit(f"{mode}: only {len(latency)} of {len(run_of)} results in {TIMEOUT_S} s")
    return latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routine", type=int, default=5, help="routine studies ahead of STAT")
    parser.add_argument("--slices", type=int, default=48)  # 120 mm: the model wants >= 100
    parser.add_argument("--size", type=int, default=192)  # 288 mm at 1.5 mm: a chest
    args = parser.parse_args()
    card = load_model_card(MODEL_DIR)
    moto = start_moto_server()
    saved = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="priority-bench-"))
    inference: ManagedProcess | None = None
    endpoint: AsyncEndpoint | None = None
    try:
        os.environ.update(moto.environment())
        reset_clients()
        resources = provision([SITE], [card])
        port = free_port()
        inference = ManagedProcess(
            name="inference server",
            argv=[sys.executable, "-m", "containers.inference.serve", "--model-dir",
                  str(MODEL_DIR), "--host", "127.0.0.1", "--port", str(port)],
            log_path=work / "inference.log",
            cwd=REPO,
        ).start(http_ready(f"http://127.0.0.1:{port}/ping"), timeout_s=120)  # fmt: skip
        bucket = resources.data_bucket
        endpoint = AsyncEndpoint(
            [
                AsyncEndpointConfig(
                    endpoint_name=resources.model_endpoints[card.name],
                    inference_url=f"http://127.0.0.1:{port}",
                    s3_output_path=f"s3://{bucket}/{INFERENCE_OUTPUT_PREFIX.rstrip('/')}",
                    s3_failure_path=f"s3://{bucket}/{INFERENCE_FAILURE_PREFIX.rstrip('/')}",
                    success_topic_arn=resources.inference_success_topic_arn,
                    error_topic_arn=resources.inference_error_topic_arn,
                )
            ]
        ).start()
        os.environ.update(
            {
                **resources.function_environment(),
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint.url,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
        )
        reset_clients()
        shape = (args.slices, args.size, args.size)
        series = [
            make_series(work / f"series-{n}", shape, True, spacing_mm=(2.5, 1.5, 1.5))
            for n in range(args.routine + 1)
        ]
        # One study first, so neither measured mode pays the cold start (imports, model load).
        run_backlog(resources, series[:1], work, "warmup", card.name)
        results = {
            mode: run_backlog(resources, series, work, mode, card.name)
            for mode in ("priority", "fifo")
        }
    finally:
        if endpoint is not None:
            endpoint.stop()
        if inference is not None:
            inference.stop()
        moto.stop()
        os.environ.clear()
        os.environ.update(saved)
    report(results, args.routine, shape)


def report(results: dict[str, dict[str, float]], routine: int, shape: tuple[int, ...]) -> None:
    print(
        f"\n{routine} routine studies queued ahead of 1 STAT study "
        f"({shape[0]} x {shape[1]}^2, chest CT), results at the site, seconds from release"
    )
    print(f"{'mode':<34}{'STAT':>8}{'routine median':>16}{'routine max':>13}{'STAT rank':>11}")
    summary: dict[str, Any] = {"routine_studies": routine, "shape": list(shape)}
    for mode, label in (("priority", "ours: STAT queue + endpoint order"),
                        ("fifo", "peer: FIFO (no priority)")):  # fmt: skip
        latency = results[mode]
        routine_s = [s for name, s in latency.items() if name != "stat"]
        rank = sorted(latency.values()).index(latency["stat"]) + 1
        print(
            f"{label:<34}{latency['stat']:>8.1f}{statistics.median(routine_s):>16.1f}"
            f"{max(routine_s):>13.1f}{rank:>11}"
        )
        summary[mode] = {
            "stat_s": round(latency["stat"], 2),
            "routine_median_s": round(statistics.median(routine_s), 2),
            "routine_max_s": round(max(routine_s), 2),
            "stat_rank": rank,
        }
    ratio = results["fifo"]["stat"] / results["priority"]["stat"]
    print(f"STAT latency, FIFO / ours: {ratio:.1f}x")
    summary["stat_speedup_vs_fifo"] = round(ratio, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
