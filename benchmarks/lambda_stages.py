"""Benchmark: the preprocess and postprocess functions on the demo study, step by step.

Runs the real services (`functions/`) against a moto server on loopback: an encrypted
series tar and its manifest in S3 (as the edge forwarder leaves them) → preprocess → model
input in S3 → a model output holding the phantom's true nodules → postprocess → encrypted SEG,
SR and FHIR Bundle. Each function runs once warm-up on a small study first, as a warm Lambda.
Peers on the same data in the same run:
- SEG: highdicom building the same Segmentation from one boolean mask per label (its
  documented stacked-segments input, what `imaging_ai.results.seg` passed before);
- model I/O: `np.savez_compressed` (what `imaging_ai.model_io` used before) vs ours.
The last line is JSON.

    python -m benchmarks.lambda_stages [--slices 200] [--size 512]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from functions.common import bootstrap
from functions.common.keys import parse_input_location
from functions.postprocess import service as postprocess_module
from functions.postprocess.handler import service as postprocess_service
from functions.preprocess import service as preprocess_module
from functions.preprocess.handler import service as preprocess_service
from functions.preprocess.service import ManifestRef
from imaging_ai import envelope
from imaging_ai.async_inference import AsyncInferenceNotification
from imaging_ai.aws import client, reset_clients
from imaging_ai.contracts import inference_output_prefix, manifest_key
from imaging_ai.local.moto_server import start_moto_server
from imaging_ai.local.provision import provision
from imaging_ai.model_card import ModelCard, load_model_card
from imaging_ai.model_io import (
    ModelOutputMeta,
    pack_model_input,
    pack_model_output,
    unpack_model_input,
)
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.results.seg import build_segmentation, highdicom_reference
from tests.functions_support import SITE, make_series, upload_study

# Peer comparisons: best of this many, alternating (the function stages run once, warm).
REPEATS = 3
MODEL_DIR = DEMO_MODEL_DIR


try:
    from functions.common.observability import StepSeconds
except ImportError:  # a checkout from before the services timed their steps: totals only
    StepSeconds = None  # type: ignore[assignment,misc]

_MADE: list[Any] = []


def _recording_steps() -> Any:
    """The services' own step timer, kept so the benchmark reads what they logged."""

    class RecordedSteps(StepSeconds):
        def __init__(self) -> None:
            super().__init__()
            _MADE.append(self)

    return RecordedSteps


def last_steps() -> dict[str, float]:
    return dict(_MADE[-1].seconds) if _MADE else {}


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def best_of(repeats: int, ours: Callable[[], Any], peer: Callable[[], Any]) -> tuple[float, float]:
    """Fastest of `repeats` runs each, ours and the peer alternating: on a shared machine a
    burst of load then hits both sides alike."""
    ours_s, peer_s = float("inf"), float("inf")
    for _ in range(repeats):
        ours_s = min(ours_s, timed(ours)[0])
        peer_s = min(peer_s, timed(peer)[0])
    return ours_s, peer_s


def model_output(image_location: str, card: ModelCard, study: Any) -> tuple[str, dict[str, Any]]:
    """What the endpoint would write: the phantom's true nodules on the source grid."""
    bucket, key = image_location.removeprefix("s3://").split("/", 1)
    s3 = client("s3")
    _, meta = unpack_model_input(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    phantom = study.synthetic.phantom
    output = ModelOutputMeta(
        input=meta,
        model_name=card.name,
        model_version=card.version,
        weights_sha256=card.weights_sha256,
        device="cpu",
        inference_seconds=0.0,
        findings=phantom.truth_findings(),
    )
    labels = (phantom.nodule_mask > 0).astype(np.uint8)
    out_key = inference_output_prefix(meta.site, meta.pseudo_study_uid, meta.run_id) + "out.npz"
    s3.put_object(Bucket=bucket, Key=out_key, Body=pack_model_output(labels, output))
    notification = AsyncInferenceNotification.model_validate(
        {
            "awsRegion": "us-east-1",
            "eventTime": "2026-09-14T09:40:00.000Z",
            "receivedTime": "2026-09-14T09:39:00.000Z",
            "invocationStatus": "Completed",
            "requestParameters": {
                "contentType": "application/x-npz",
                "endpointName": "imaging-ai-demo",
                "inputLocation": image_location,
            },
            "responseParameters": {
                "contentType": "application/x-npz",
                "outputLocation": f"s3://{bucket}/{out_key}",
            },
            "inferenceId": f"run-{meta.run_id}",
        }
    )
    return out_key, {"notification": notification, "labels": labels, "output": output}


def run_study(
    resources: Any,
    card: ModelCard,
    tmp: Path,
    run_id: str,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float] = (1.5, 0.7, 0.7),
) -> dict[str, Any]:
    prepared = make_series(tmp / run_id, shape=shape, spacing_mm=spacing_mm)
    study = upload_study(
        resources.data_bucket,
        resources.kms_key_arn,
        tmp / run_id,
        run_id=run_id,
        model_name=card.name,
        prepared=prepared,
    )
    ref = ManifestRef(resources.data_bucket, manifest_key(SITE, study.pseudo_study_uid))
    pre_s, _ = timed(lambda: preprocess_service().handle(ref))
    pre_steps = last_steps()
    location = resources.data_bucket
    calls = client("s3").list_objects_v2(
        Bucket=location, Prefix=f"preprocessed/{SITE}/{study.pseudo_study_uid}/{run_id}/"
    )
    image_key = next(o["Key"] for o in calls["Contents"] if o["Key"].endswith("input.npz"))
    image_location = f"s3://{location}/{image_key}"
    parse_input_location(image_location)
    _, inference = model_output(image_location, card, study)
    post_s, outcome = timed(lambda: postprocess_service().handle(inference["notification"]))
    if str(outcome) != "DELIVERED":
        raise SystemExit(f"postprocess ended {outcome}")
    return {
        "preprocess_s": pre_s,
        "preprocess_steps": pre_steps,
        "postprocess_s": post_s,
        "postprocess_steps": last_steps(),
        "study": study,
        **inference,
    }


def seg_peer(study: Any, labels: np.ndarray, card: ModelCard) -> tuple[float, float, int]:
    """Ours vs highdicom from stacked per-label boolean masks, same headers and labels."""
    headers = []
    for ds in study.datasets:
        header = ds.copy()
        if "PixelData" in header:
            del header.PixelData
        headers.append(header)
    study_uid = str(headers[0].StudyInstanceUID)

    def ours() -> Any:
        return build_segmentation(headers, labels, card, study_uid, "bench")

    seg = ours()

    def peer() -> Any:
        masks = np.stack([labels == label.value for label in card.labels], axis=-1)
        return highdicom_reference(headers, masks, seg)

    if seg.PixelData != peer().PixelData:
        raise SystemExit("our SEG frames differ from highdicom's own build")
    ours_s, peer_s = best_of(REPEATS, ours, peer)
    return ours_s, peer_s, int(seg.NumberOfFrames)


def npz_vs_peer(image: np.ndarray, meta: Any, labels: np.ndarray, output: Any) -> dict[str, float]:
    def savez_compressed(**arrays: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    input_s, input_peer_s = best_of(
        REPEATS, lambda: pack_model_input(image, meta), lambda: savez_compressed(image=image)
    )
    labels_s, labels_peer_s = best_of(
        REPEATS, lambda: pack_model_output(labels, output), lambda: savez_compressed(labels=labels)
    )
    return {
        "input_s": input_s,
        "input_peer_s": input_peer_s,
        "labels_s": labels_s,
        "labels_peer_s": labels_peer_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # highdicom's notes on the synthetic series
    card = load_model_card(MODEL_DIR)
    if StepSeconds is not None:
        preprocess_module.StepSeconds = _recording_steps()  # type: ignore[attr-defined]
        postprocess_module.StepSeconds = _recording_steps()  # type: ignore[attr-defined]
    moto = start_moto_server()
    saved = dict(os.environ)
    try:
        os.environ.update(moto.environment())
        reset_clients()
        envelope.reset_providers()
        resources = provision([SITE], [card])
        os.environ.update(resources.function_environment())
        os.environ.update(
            {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}
        )
        bootstrap.reset()
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            # A warm Lambda: a small study the model's intended use still accepts (coverage).
            run_study(resources, card, tmp, "warm-0001", (80, 160, 160), (1.5, 1.5, 1.5))
            load = os.getloadavg()[0]
            result = run_study(
                resources, card, tmp, "run-0001", (args.slices, args.size, args.size)
            )
            load = max(load, os.getloadavg()[0])
            ours_seg_s, peer_seg_s, frames = seg_peer(result["study"], result["labels"], card)
            bucket = resources.data_bucket
            prefix = f"preprocessed/{SITE}/{result['study'].pseudo_study_uid}/run-0001/"
            listing = client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
            key = next(o["Key"] for o in listing if o["Key"].endswith("input.npz"))
            image, meta = unpack_model_input(
                client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
            )
            peers = npz_vs_peer(image, meta, result["labels"], result["output"])
    finally:
        moto.stop()
        os.environ.clear()
        os.environ.update(saved)

    print(
        f"study {args.slices} x {args.size}^2 CT (1.5 x 0.7 x 0.7 mm), model grid {image.shape}; "
        f"functions warm, moto on loopback; 1-min load average up to {load:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'stage / step':44} {'seconds':>8}")
    print(f"{'preprocess (manifest -> endpoint invoked)':44} {result['preprocess_s']:8.2f}")
    for step, seconds in result["preprocess_steps"].items():
        print(f"  {step:42} {seconds:8.2f}")
    print(f"{'postprocess (notification -> site told)':44} {result['postprocess_s']:8.2f}")
    for step, seconds in result["postprocess_steps"].items():
        print(f"  {step:42} {seconds:8.2f}")
    print()
    print(
        f"{'against a peer, same data, same run, best of ' + str(REPEATS):44} {'ours':>8} "
        f"{'peer':>8} {'peer/ours':>9}"
    )
    rows = [
        (f"SEG ({frames} frames) vs highdicom stacked masks", ours_seg_s, peer_seg_s),
        ("model input npz vs np.savez_compressed", peers["input_s"], peers["input_peer_s"]),
        ("label map npz vs np.savez_compressed", peers["labels_s"], peers["labels_peer_s"]),
    ]
    for name, ours, peer in rows:
        print(f"{name:44} {ours:8.3f} {peer:8.3f} {peer / ours:9.1f}")
    print(
        json.dumps(
            {
                "preprocess_s": round(result["preprocess_s"], 3),
                "postprocess_s": round(result["postprocess_s"], 3),
                "build_seg_sr_fhir_s": result["postprocess_steps"].get("build_seg_sr_fhir"),
                "seg_ratio_vs_highdicom_stacked": round(peer_seg_s / ours_seg_s, 2),
                "load_average": round(load, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
