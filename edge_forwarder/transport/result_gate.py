"""The inbound trust boundary: what the cloud sends is checked here, and every error translated.

Nothing that comes back from the cloud is trusted: a result message, the objects it names and
their content may be malformed or tampered with. The inbound path uses three things from here:

- `inside(root, *parts)`: the only way a value from a message or a journal row becomes a path;
- `check_result_objects`: the decrypted objects are what the contract says, of this study;
- `translate`: any exception of the inbound path becomes a `Verdict` (retry later, or a
  permanent rejection with a reason safe to journal and log: our own messages, or an exception
  *type*, never a library's message, which may quote data).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
from botocore.exceptions import BotoCoreError, ClientError

from edge_forwarder.crosswalk import CrosswalkError
from edge_forwarder.transport.errors import ForwarderError, PermanentError, TransientError
from imaging_ai.contracts import BUNDLE_NAME, KEY_IMAGES_NAME, SEG_NAME, SR_NAME
from imaging_ai.errors import PipelineError

# What a result object may be: the contract's SR, SEG and key images, and a FHIR transaction
# Bundle.
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MULTIFRAME_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
RESULT_SOP_CLASSES = {
    SR_NAME: {COMPREHENSIVE_3D_SR},
    SEG_NAME: {SEGMENTATION},
    KEY_IMAGES_NAME: {MULTIFRAME_GRAYSCALE_BYTE_SC},
}
# S3 and KMS answers worth a retry; any other refusal (AccessDenied, NoSuchKey, ...) is final.
_TRANSIENT_AWS_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "KMSInternalException",
        "KeyUnavailableException",
        "DependencyTimeoutException",
    }
)


class PathOutside(PermanentError):
    """A path built from a message or a journal row does not stay inside its folder."""


@dataclass(frozen=True)
class Verdict:
    """What the boundary decided about one failed step."""

    transient: bool  # True: leave the message on the queue and try again later
    reason: str  # safe to journal, log and show in `status`


def inside(root: Path, *parts: str) -> Path:
    """`root / parts...`, resolved, refused unless strictly inside the resolved `root`.

    Run IDs are checked against the contract pattern already; this is the second lock, for
    journal rows written by older versions or edited on disk, and for symlinks.
    """
    base = root.resolve()
    candidate = base.joinpath(*parts).resolve()
    if candidate == base or not candidate.is_relative_to(base):
        raise PathOutside(f"path leaves {root.name}/ (refused)")
    return candidate


def check_result_objects(objects: dict[str, bytes], pseudo_study_uid: str) -> None:
    """Each object is what its name says, and belongs to this study (before re-id reads it)."""
    for name, data in objects.items():
        if name in RESULT_SOP_CLASSES:
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                sop_class = str(header.SOPClassUID)
                study = str(header.StudyInstanceUID)
            except Exception:
                raise PermanentError(f"{name} is not a readable DICOM object") from None
            if sop_class not in RESULT_SOP_CLASSES[name]:
                raise PermanentError(f"{name} has SOP class {sop_class}, not the contract's")
            if study != pseudo_study_uid:
                raise PermanentError(f"{name} belongs to another study than its message")
        elif name == BUNDLE_NAME:
            try:
                bundle = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise PermanentError("report.bundle.json is not JSON") from None
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise PermanentError("report.bundle.json is not a FHIR Bundle")
            if bundle.get("type") != "transaction" or not isinstance(bundle.get("entry"), list):
                raise PermanentError("report.bundle.json is not a transaction Bundle")
        else:
            raise PermanentError("an object the contract does not define came back")


def translate(error: BaseException) -> Verdict:
    """Map any exception of the inbound path to a verdict; never quote a library's message."""
    if isinstance(error, TransientError):
        return Verdict(True, str(error))
    if isinstance(error, ForwarderError):
        return Verdict(False, str(error))  # our own messages: written without PHI
    if isinstance(error, CrosswalkError):
        return Verdict(False, "crosswalk entry cannot be read (wrong key or tampered row)")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _TRANSIENT_AWS_CODES or status >= 500:
            return Verdict(True, f"AWS answered {code}")
        return Verdict(False, f"AWS refused: {code}")
    if isinstance(error, BotoCoreError):
        return Verdict(True, f"AWS unreachable ({type(error).__name__})")
    if isinstance(error, OSError):
        return Verdict(True, f"local I/O error ({type(error).__name__})")  # disk full, ...
    if isinstance(error, PipelineError):
        return Verdict(False, f"{type(error).__name__}: {error}")  # library errors: no PHI
    return Verdict(False, f"malformed result ({type(error).__name__})")
