"""Keys the functions derive beyond the shared contracts (preprocess writes, postprocess reads)."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote_plus, urlparse

from imaging_ai.contracts import check_run_id, check_site, check_uid, preprocessed_key
from imaging_ai.errors import ContractError

SOURCE_HEADERS_NAME = "headers.tar.enc"


def source_headers_key(site: str, pseudo_study_uid: str, run_id: str) -> str:
    """De-identified source headers (a tar of pixel-less DICOM files), next to the model input."""
    return preprocessed_key(site, pseudo_study_uid, run_id).rsplit("/", 1)[0] + (
        f"/{SOURCE_HEADERS_NAME}"
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise ContractError("not an s3://bucket/key URI")
    return parsed.netloc, unquote_plus(parsed.path.lstrip("/"))


def parse_input_location(uri: str) -> tuple[str, str, str]:
    """(site, pseudo_study_uid, run_id) of a model input's s3:// location."""
    _, key = split_s3_uri(uri)
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "preprocessed" or parts[4] != "input.npz":
        raise ContractError("input location is not a preprocessed model input")
    return check_site(parts[1]), check_uid(parts[2]), check_run_id(parts[3])


def unreadable_manifest_run_id(manifest_key: str, etag: str | None) -> str:
    """A stable run id for a manifest whose own run id cannot be read (so FAILED is recorded)."""
    digest = hashlib.sha256(f"{manifest_key}|{etag or ''}".encode()).hexdigest()[:20]
    return f"unreadable-{digest}"


def inference_id(run_id: str) -> str:
    """SageMaker InferenceId (at most 64 printable chars) derived from the run."""
    return f"run-{check_run_id(run_id)}"[:64]
