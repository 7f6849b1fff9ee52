"""C-STORE SCU to the hospital PACS, with retry and a clear refused / transient split."""

from __future__ import annotations

import io
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE

from edge_forwarder.secret_files import check_private
from edge_forwarder.transport.errors import ConfigError, PermanentError, TransientError

# PS3.7 C-STORE status classes: 0xA7xx out of resources and 0xB000 warnings are worth a retry
# (A7xx) or acceptable (B0xx); anything else is a refusal that retrying will not fix.
_SUCCESS = {0x0000, 0xB000, 0xB007, 0xB006}


@dataclass(frozen=True)
class PacsPeer:
    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "EDGEFWD"
    timeout_s: float = 30.0
    # DICOM TLS: the PACS's certificate is verified against it, and ours is presented.
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None  # the name the PACS certificate must carry

    def store(self, objects: list[bytes]) -> list[int]:
        return store(self, objects)


def client_tls_context(
    ca_file: Path, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that checks the PACS's chain and name, with our client cert.

    The PACS is trusted through `ca_file` only (not the system store): a hospital CA, or
    the PACS vendor's, is what vouches for it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_file))
        if cert_file is not None and key_file is not None:
            check_private(key_file)
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as error:
        # The file names only: an SSLError text may echo a PEM line.
        raise ConfigError(
            f"PACS TLS files {ca_file}, {cert_file}, {key_file} do not load"
            f" ({type(error).__name__})"
        ) from None
    return context


def _association(peer: PacsPeer, datasets: Sequence[Dataset]) -> AE:
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = peer.timeout_s
    ae.dimse_timeout = peer.timeout_s
    ae.network_timeout = peer.timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        # Explicit VR LE first (the results are written so); implicit as a fallback.
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    return ae


def store(peer: PacsPeer, objects: list[bytes]) -> list[int]:
    """C-STORE every Part 10 object in one association; raise Transient/PermanentError.

    A rejected association (e.g. unknown calling AE) is permanent only after the caller's
    retries: PACS admins fix AE tables while we wait, so the caller decides when to give up.
    """
    datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in objects]
    ae = _association(peer, datasets)
    tls_args = None
    if peer.ssl_context is not None:
        tls_args = (peer.ssl_context, peer.server_name or peer.host)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    except OSError as error:
        raise TransientError(f"PACS unreachable: {type(error).__name__}") from None
    if assoc.is_rejected:
        raise PermanentError("PACS rejected the association (check the AE titles)")
    if assoc.is_aborted or not assoc.is_established:
        raise TransientError("PACS association failed or aborted")
    statuses: list[int] = []
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            if not status or "Status" not in status:
                raise TransientError("PACS did not answer the C-STORE")
            code = int(status.Status)
            statuses.append(code)
            if code in _SUCCESS:
                continue
            if 0xA700 <= code <= 0xA7FF:
                raise TransientError(f"PACS out of resources (0x{code:04X})")
            raise PermanentError(f"PACS refused the object (0x{code:04X})")
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
