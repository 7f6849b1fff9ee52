"""The outbound hot path: de-identified series tar, then sealed with its digest in one pass."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

from edge_forwarder.deid import Deidentifier
from edge_forwarder.transport.packaging import pack_series, seal
from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import encryption_context
from imaging_ai.errors import PipelineError
from imaging_ai.synthetic import write_ct_study


def _pseudo_ids(result: Any) -> tuple[str, str, str]:
    pseudo = result.pseudo
    return pseudo.study_instance_uid, pseudo.series_instance_uid, pseudo.sop_instance_uid


def test_series_is_packed_deidentified_and_sealed_with_its_digest(
    aws: object, tmp_path: Path
) -> None:
    # Given a spooled series of 6 instances, one of which de-identification refuses
    study = write_ct_study(tmp_path / "spool", seed=5, shape=(6, 64, 64))
    deidentifier = Deidentifier(b"k" * 32)
    refused = study.paths[2]

    def deidentify(data: bytes) -> Any:
        if data == refused.read_bytes():
            raise PipelineError("burned_in_annotation")
        return deidentifier.deidentify_bytes(data)

    quarantined: list[PipelineError] = []
    tar_path = tmp_path / "series.tar"
    # When it is packed
    packed = pack_series(
        study.paths, deidentify, _pseudo_ids, tar_path, on_quarantined=quarantined.append
    )
    # Then the tar holds exactly the 5 de-identified instances, readable as a stream
    assert packed.quarantined == 1 and len(quarantined) == 1
    with tarfile.open(tar_path, "r|") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive}  # type: ignore[union-attr]
    assert sorted(members) == sorted(f"{i.sop_instance_uid}.dcm" for i in packed.instances)
    assert len(members) == 5
    assert all(study.patient.patient_id.encode() not in data for data in members.values())
    # When it is sealed
    key_arn = str(client("kms").create_key()["KeyMetadata"]["Arn"])
    context = encryption_context("site-a", packed.pseudo_study_uid)
    sealed = tmp_path / "series.tar.enc"
    digest, size = seal(tar_path, sealed, key_arn, context)
    # Then the digest and size are those of the stored bytes, which decrypt to the tar
    stored = sealed.read_bytes()
    assert (digest, size) == (hashlib.sha256(stored).hexdigest(), len(stored))
    assert envelope.decrypt_bytes(stored, key_arn, context) == tar_path.read_bytes()


def test_all_quarantined_series_packs_nothing(tmp_path: Path) -> None:
    study = write_ct_study(tmp_path / "spool", seed=6, shape=(2, 32, 32))

    def refuse(data: bytes) -> Any:
        raise PipelineError("burned_in_annotation")

    packed = pack_series(study.paths, refuse, _pseudo_ids, tmp_path / "s.tar")
    assert packed.instances == [] and packed.quarantined == 2 and packed.last_result is None
