"""Benchmark: STAT vs routine latency through the cloud half under load, priority on vs FIFO.

Five routine studies (``--routine``) and then one STAT study are uploaded as the edge leaves
them (encrypted series tar, manifest last) while the cloud is not polling: the backlog a busy
morning leaves. Then the cloud starts: the local event source mappings (STAT queue first),
the real preprocess and postprocess functions in-process, the local async endpoint in front
of the real inference server (``containers.inference.serve``, the shipped demo model, CPU).
Latency is from that release to the site's RESULT_READY message, per study.

The peer, on the same studies in the same run: FIFO, what the pipeline did before priority
(every manifest under the routine key, every request routine), so the STAT study waits for
all five routine ones. Both modes run `--rounds` times, which goes first alternating (in a
fixed order one mode always ran right after the one-study warm-up); the table gives each
figure's range over the rounds. `--stages` adds where each study's time
went: waiting for preprocess, preprocess, waiting at the endpoint, inference, postprocess.
The last line is JSON.

    python -m benchmarks.priority [--routine 5] [--slices 48] [--size 192] [--rounds 2]
                                  [--stages]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging_ai.aws import client, reset_clients
from imaging_ai.contracts import (
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    Priority,
    SiteResultMessage,
    Stage,
)
from imaging_ai.local.async_endpoint import AsyncEndpoint, AsyncEndpointConfig
from imaging_ai.local.dispatcher import event_sources
from imaging_ai.local.moto_server import free_port, start_moto_server
from imaging_ai.local.processes import ManagedProcess, http_ready
from imaging_ai.local.provision import LocalResources, provision
from imaging_ai.model_card import load_model_card
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.state import RunKey, RunStateStore
from tests.functions_support import SITE, make_series, upload_study

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = DEMO_MODEL_DIR
TIMEOUT_S = 900.0


# Where a study's time goes, in pipeline order: each mark is when it got there, from release.
MARKS = ("preprocess", "endpoint", "serving", "inferred", "reported", "site")


def run_backlog(
    resources: LocalResources,
    series: list[Any],
    tmp: Path,
    mode: str,
    model_name: str,
    inferred_at: dict[str, float],
    label: str | None = None,
) -> dict[str, dict[str, float]]:
    """Upload every study (the last one STAT in "priority" mode), release the cloud, time each.

    Returns, per study ("routine-N" or "stat"), when it reached each of MARKS, in seconds
    from release: preprocess started (RECEIVED), queued at the endpoint (INFERRING), its
    inference started, ended (the endpoint's notification), postprocess ended (REPORTED)
    and the site's RESULT_READY message. `inferred_at` is filled by the endpoint (inference id ->
    perf_counter)."""
    label = label or mode
    priorities = [Priority.ROUTINE] * (len(series) - 1) + [
        Priority.STAT if mode == "priority" else Priority.ROUTINE
    ]
    run_of: dict[str, str] = {}
    studies: dict[str, str] = {}  # run id -> pseudo study uid
    for number, (prepared, priority) in enumerate(zip(series, priorities, strict=True)):
        run_id = f"{label}-{number}"
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
        studies[run_id] = study.pseudo_study_uid
        del study
    sources = event_sources(resources.queues, wait_time_s=1, stat_queues=resources.stat_queues)
    stop = threading.Event()
    cloud = threading.Thread(target=sources.run_forever, args=(stop,), name="event-sources")
    released, released_wall = time.perf_counter(), datetime.now(UTC)
    cloud.start()
    at_site: dict[str, float] = {}
    sqs, queue_url = client("sqs"), resources.site_results_queues[SITE]
    try:
        deadline = released + TIMEOUT_S
        while len(at_site) < len(run_of) and time.perf_counter() < deadline:
            answer = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for raw in answer.get("Messages", []):
                arrived = time.perf_counter() - released
                message = SiteResultMessage.model_validate_json(raw["Body"])
                if message.kind != "RESULT_READY":
                    raise SystemExit(f"{message.run_id}: {message.kind} {message.reason}")
                at_site[message.run_id] = arrived
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=raw["ReceiptHandle"])
    finally:
        stop.set()
        cloud.join()
    if len(at_site) < len(run_of):
        raise SystemExit(f"{mode}: only {len(at_site)} of {len(run_of)} results in {TIMEOUT_S} s")
    state = RunStateStore(client("dynamodb"), resources.state_table)
    marks: dict[str, dict[str, float]] = {}
    for run_id, name in run_of.items():
        run = state.get(RunKey(SITE, studies[run_id], run_id))
        assert run is not None
        times = {
            mark: (run.stage_times[stage] - released_wall).total_seconds()
            for mark, stage in (
                ("preprocess", Stage.RECEIVED),
                ("endpoint", Stage.INFERRING),
                ("reported", Stage.REPORTED),
            )
        }
        times["inferred"] = inferred_at[run.attributes["inference_id"]] - released
        times["site"] = at_site[run_id]
        marks[name] = times
    # One instance serves one request at a time: each starts when it is queued or when the
    # one before it ends, whichever is later.
    previous_end = 0.0
    for times in sorted(marks.values(), key=lambda times: times["inferred"]):
        times["serving"] = max(times["endpoint"], previous_end)
        previous_end = times["inferred"]
    return {name: {mark: times[mark] for mark in MARKS} for name, times in marks.items()}


MODES = {"priority": "ours: STAT queue + endpoint order", "fifo": "peer: FIFO (no priority)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routine", type=int, default=5, help="routine studies ahead of STAT")
    parser.add_argument("--slices", type=int, default=48)  # 120 mm: the model wants >= 100
    parser.add_argument("--size", type=int, default=192)  # 288 mm at 1.5 mm: a chest
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of both modes, the first mode alternating"
    )
    parser.add_argument(
        "--stages", action="store_true", help="also print where each study's time went"
    )
    args = parser.parse_args()
    card = load_model_card(MODEL_DIR)
    moto = start_moto_server()
    saved = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="priority-bench-"))
    inference: ManagedProcess | None = None
    endpoint: AsyncEndpoint | None = None
    inferred_at: dict[str, float] = {}
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
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
            ],
            on_result=lambda inference_id, _: inferred_at.setdefault(
                inference_id, time.perf_counter()
            ),
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
        run_backlog(resources, series[:1], work, "warmup", card.name, inferred_at)
        for number in range(args.rounds):
            # Each mode goes first in every other round: neither gains from going second.
            order = list(MODES) if number % 2 == 0 else list(reversed(MODES))
            rounds.append(
                {
                    mode: run_backlog(
                        resources, series, work, mode, card.name, inferred_at, f"{mode}{number}"
                    )
                    for mode in order
                }
            )
    finally:
        if endpoint is not None:
            endpoint.stop()
        if inference is not None:
            inference.stop()
        moto.stop()
        os.environ.clear()
        os.environ.update(saved)
    report(rounds, args.routine, shape, args.stages, _server_seconds(work / "inference.log"))


def _span(values: list[float]) -> str:
    """`low-high` over the rounds (one value when there was one round)."""
    low, high = min(values), max(values)
    return f"{low:.1f}" if len(values) == 1 else f"{low:.1f}-{high:.1f}"


def _server_seconds(log_path: Path) -> dict[str, list[float]]:
    """The inference server's own seconds per study (its `inference_done` log lines), by the
    round's label ("priority0", "fifo1", ...): the same model on the same volumes, so a spread
    here is the machine's load, not the order."""
    seconds: dict[str, list[float]] = {}
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "inference_done":
            label = str(event["run_id"]).rpartition("-")[0]
            seconds.setdefault(label, []).append(float(event["seconds"]))
    return seconds


def report(
    rounds: list[dict[str, dict[str, dict[str, float]]]],
    routine: int,
    shape: tuple[int, ...],
    stages: bool,
    server_seconds: dict[str, list[float]],
) -> None:
    print(
        f"\n{routine} routine studies queued ahead of 1 STAT study ({shape[0]} x {shape[1]}^2,"
        f" chest CT), results at the site, seconds from release, range over {len(rounds)}"
        " rounds"
    )
    print(
        f"{'mode':<34}{'STAT':>12}{'routine median':>16}{'routine max':>13}{'all done':>12}"
        f"{'STAT rank':>11}"
    )
    summary: dict[str, Any] = {"routine_studies": routine, "shape": list(shape)}
    for mode, label in MODES.items():
        stat, median, last, every, ranks = [], [], [], [], []
        for marks in (one[mode] for one in rounds):
            at_site = {name: study["site"] for name, study in marks.items()}
            routine_s = [s for name, s in at_site.items() if name != "stat"]
            stat.append(at_site["stat"])
            median.append(statistics.median(routine_s))
            last.append(max(routine_s))
            every.append(max(at_site.values()))
            ranks.append(sorted(at_site.values()).index(at_site["stat"]) + 1)
        rank = "/".join(str(r) for r in sorted(set(ranks)))
        print(
            f"{label:<34}{_span(stat):>12}{_span(median):>16}{_span(last):>13}"
            f"{_span(every):>12}{rank:>11}"
        )
        summary[mode] = {
            "stat_s": [round(s, 2) for s in stat],
            "routine_median_s": [round(s, 2) for s in median],
            "routine_max_s": [round(s, 2) for s in last],
            "all_done_s": [round(s, 2) for s in every],
            "stat_rank": ranks,
        }
    ratios = [one["fifo"]["stat"]["site"] / one["priority"]["stat"]["site"] for one in rounds]
    print(f"STAT latency, FIFO / ours: {_span(ratios)}x")
    summary["stat_speedup_vs_fifo"] = [round(r, 2) for r in ratios]
    # What a routine study pays for the STAT one going first: its result comes later by about
    # one inference (the endpoint is the bottleneck and serves one request at a time).
    delays = [
        one["priority"][name]["site"] - one["fifo"][name]["site"]
        for one in rounds
        for name in one["fifo"]
        if name != "stat"
    ]
    inference = [
        study["inferred"] - study["serving"] for one in rounds for study in one["priority"].values()
    ]
    print(
        f"a routine study's result, ours - FIFO: {statistics.mean(delays):+.1f} s mean"
        f" ({_span(delays)}); one inference: {statistics.mean(inference):.1f} s mean"
        f" ({_span(inference)})"
    )
    # The endpoint is the bottleneck: time it stood idle while a study was still on its way
    # would be a defect of the stages before it (polling, batching), not of the order.
    for mode in MODES:
        idle = [_endpoint_idle_s(one[mode]) for one in rounds]
        print(f"endpoint idle after its first request, {mode}: {_span(idle)} s")
        summary[mode]["endpoint_idle_s"] = [round(s, 2) for s in idle]
        means = [statistics.mean(server_seconds[f"{mode}{n}"]) for n in range(len(rounds))]
        print(f"the server's own seconds per inference, {mode}, mean of each round: {_span(means)}")
        summary[mode]["server_inference_s"] = [round(s, 2) for s in means]
    summary["routine_delay_s"] = round(statistics.mean(delays), 2)
    summary["inference_s"] = round(statistics.mean(inference), 2)
    if stages:
        _report_stages(rounds)
    print(json.dumps(summary))


def _endpoint_idle_s(marks: dict[str, dict[str, float]]) -> float:
    """Seconds between one inference's end and the next one's start, summed."""
    served = sorted(marks.values(), key=lambda study: study["serving"])
    return sum(
        after["serving"] - before["inferred"] for before, after in itertools.pairwise(served)
    )


def _report_stages(rounds: list[dict[str, dict[str, dict[str, float]]]]) -> None:
    """Per study, the seconds between marks (mean over rounds): where each one waited."""
    steps = list(zip(("release", *MARKS[:-1]), MARKS, strict=True))
    print(f"\n{'mode, study (mean s)':<24}" + "".join(f"{f'to {b}':>14}" for _, b in steps))
    for mode in MODES:
        for name in rounds[0][mode]:
            cells = []
            for before, after in steps:
                gaps = [
                    one[mode][name][after] - (one[mode][name][before] if before in MARKS else 0)
                    for one in rounds
                ]
                cells.append(f"{statistics.mean(gaps):>14.1f}")
            print(f"{f'{mode} {name}':<24}" + "".join(cells))


if __name__ == "__main__":
    main()
