"""SageMaker inference server: `GET /ping` and `POST /invocations` on :8080 (also run locally).

Run: python -m containers.inference.serve --model-dir DIR --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from imaging_ai.errors import ContractError
from imaging_ai.http_handler import QuietHandler
from imaging_ai.inference.bundle import model_versions
from imaging_ai.inference.predictor import ModelLoadError, Predictor, PredictorSettings
from imaging_ai.logs import configure_json_logging, get_logger
from imaging_ai.model_io import pack_model_output, unpack_model_input

logger = get_logger(__name__)

NPZ_CONTENT_TYPE = "application/x-npz"
ACCEPTED_CONTENT_TYPES = frozenset({NPZ_CONTENT_TYPE, "application/octet-stream"})
# SageMaker async payloads go up to 1 GB; a 200x512x512 float32 volume is ~200 MB uncompressed.
MAX_BODY_BYTES = 1024**3
DEFAULT_MODEL_DIR = Path("/opt/ml/model")


class InferenceService:
    """One model with every kept version; one inference at a time.

    The newest version is loaded at start (it answers `/ping` and requests that pin no
    version); a request pinned to another version (a re-run of an old result) loads that one
    on first use. Besides the newest, one pinned version stays loaded: re-runs come in
    batches of one version, and each loaded network holds GPU memory.
    """

    def __init__(self, model_dir: Path, settings: PredictorSettings) -> None:
        self.settings = settings
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._pinned: Predictor | None = None
        self.versions = model_versions(model_dir)
        if not self.versions:
            self.load_error = "no model directory (model.json or a MONAI bundle) found"
            logger.error("model_load_failed", reason=self.load_error)
            return
        try:
            self.predictor = self._load(list(self.versions)[-1])
        except ModelLoadError as error:
            self.load_error = str(error)
            logger.error("model_load_failed", reason=self.load_error)

    def _load(self, version: str) -> Predictor:
        predictor = Predictor(self.versions[version], self.settings)
        if predictor.card.version != version:
            raise ModelLoadError(
                f"folder {version!r} holds version {predictor.card.version!r} of the model"
            )
        logger.info(
            "model_loaded",
            model=predictor.card.name,
            version=predictor.card.version,
            device=str(predictor.device),
            amp=predictor.uses_amp,
            sw_batch_size=predictor.sw_batch_size,
        )
        return predictor

    def predictor_for(self, version: str | None) -> Predictor:
        """The predictor of a pinned version (loaded on first use), or the default one."""
        if self.predictor is None:
            raise ModelLoadError(self.load_error or "model not loaded")
        if version is None or version == self.predictor.card.version:
            return self.predictor
        if version not in self.versions:
            raise ContractError(
                f"version {version!r} of {self.predictor.card.name!r} is not kept here "
                f"(kept: {list(self.versions)})"
            )
        if self._pinned is None or self._pinned.card.version != version:
            self._pinned = None  # released before the next one loads
            self._pinned = self._load(version)
        return self._pinned

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        if self.predictor is None:
            return HTTPStatus.INTERNAL_SERVER_ERROR, {
                "status": "unhealthy",
                "reason": self.load_error,
            }
        card = self.predictor.card
        return HTTPStatus.OK, {
            "status": "healthy",
            "model": card.name,
            "version": card.version,
            "weights_sha256": card.weights_sha256,
            "versions": list(self.versions),
            "device": str(self.predictor.device),
            "not_for_clinical_use": card.not_for_clinical_use,
        }

    def invoke(self, payload: bytes) -> bytes:
        """npz in, npz out; raises ContractError for a request the model cannot take."""
        if self.predictor is None:
            raise ModelLoadError(self.load_error or "model not loaded")
        image, meta = unpack_model_input(payload)
        with self._lock:
            predictor = self.predictor_for(meta.model_version)
            predictor.check_input(image, meta)
            labels, output = predictor.predict(image, meta)
        logger.info(
            "inference_done",
            run_id=meta.run_id,
            version=output.model_version,
            findings=len(output.findings),
            seconds=output.inference_seconds,
            device=output.device,
        )
        return pack_model_output(labels, output)


def make_handler(service: InferenceService) -> type[BaseHTTPRequestHandler]:
    # Quiet: http.server's access log is unstructured; our own lines carry the fields.
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"
        server_version = "imaging-ai-inference/1"

        def _send_json(self, status: HTTPStatus, document: dict[str, Any]) -> None:
            self.reply(status, json.dumps(document).encode(), "application/json")

        def _reject(self, status: HTTPStatus, reason: str) -> None:
            logger.warning("request_rejected", path=self.path, status=int(status), reason=reason)
            self.close_connection = True  # the body may be unread: do not reuse the socket
            self._send_json(status, {"error": status.phrase, "reason": reason})

        def do_GET(self) -> None:
            if self.path != "/ping":
                self._reject(HTTPStatus.NOT_FOUND, "only GET /ping and POST /invocations exist")
                return
            status, document = service.health()
            self._send_json(status, document)

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._reject(HTTPStatus.NOT_FOUND, "only GET /ping and POST /invocations exist")
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in ACCEPTED_CONTENT_TYPES:
                self._reject(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    f"Content-Type must be one of {sorted(ACCEPTED_CONTENT_TYPES)}",
                )
                return
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self._reject(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
                return
            length = int(length_header)
            if length == 0:
                self._reject(HTTPStatus.BAD_REQUEST, "empty body: send pack_model_input() bytes")
                return
            if length > MAX_BODY_BYTES:
                self._reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body larger than 1 GiB")
                return
            payload = self.rfile.read(length)
            started = time.perf_counter()
            try:
                body = service.invoke(payload)
            except ModelLoadError as error:
                self._reject(HTTPStatus.SERVICE_UNAVAILABLE, f"model not loaded: {error}")
                return
            except ContractError as error:
                self._reject(HTTPStatus.BAD_REQUEST, str(error))
                return
            except Exception as error:  # translate at the boundary; never a silent drop
                logger.exception("inference_failed", error_type=type(error).__name__)
                self._send_json(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {"error": "Internal Server Error", "reason": type(error).__name__},
                )
                return
            self.reply(HTTPStatus.OK, body, NPZ_CONTENT_TYPE)
            logger.info("invocation", status=200, seconds=round(time.perf_counter() - started, 3))

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    # SageMaker starts the image as `docker run IMAGE serve`.
    parser.add_argument("command", nargs="?", choices=["serve"], default="serve")
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("SM_MODEL_DIR", DEFAULT_MODEL_DIR))
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside the container")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    )
    args = parser.parse_args(argv)
    configure_json_logging()
    service = InferenceService(args.model_dir, PredictorSettings.from_environment())
    server = ThreadingHTTPServer((args.host, args.port), make_handler(service))
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("serving", host=args.host, port=server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        logger.info("stopped")


if __name__ == "__main__":
    main()
