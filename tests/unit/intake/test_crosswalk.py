"""Crosswalk vault: re-identification data round-trips, sealed at rest, audited, exportable."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from edge_forwarder.crosswalk import CrosswalkError, CrosswalkVault
from edge_forwarder.deid import Deidentifier, DeidResult
from imaging_ai.synthetic import FakePatient, iter_ct_slices, make_chest_phantom

SECRET = b"site-secret-for-tests-0123456789"


@pytest.fixture(scope="module")
def results() -> list[DeidResult]:
    phantom = make_chest_phantom(5, shape=(2, 16, 16), spacing_mm=(2.0, 20.0, 20.0))
    deidentifier = Deidentifier(SECRET)
    slices = iter_ct_slices(phantom, FakePatient(), generate_uid(), generate_uid(), generate_uid())
    return [deidentifier.deidentify(ds) for ds in slices]


def test_study_round_trips_and_is_idempotent(tmp_path: Path, results: list[DeidResult]) -> None:
    # Given a vault that recorded every instance of a study, one of them twice
    vault = CrosswalkVault(tmp_path / "crosswalk.sqlite3", os.urandom(32))
    for result in [*results, results[0]]:
        vault.record("site-a", result)
    # When the study is looked up by its pseudonym
    study = vault.study_by_pseudo(results[0].pseudo.study_instance_uid)
    # Then every original identifier comes back, once per UID
    assert study is not None
    first = results[0].identity
    assert study.study_instance_uid == first.study_instance_uid
    assert (study.patient_name, study.patient_id) == ("DOE^JANE^Q", "MRN-4711-0815")
    assert study.accession_number == FakePatient().accession_number
    assert study.date_shift_days == results[0].pseudo.date_shift_days
    assert study.series == first.series
    assert study.instances == {k: v for r in results for k, v in r.identity.instances.items()}
    assert len(study.instances) == len(results)
    assert study.frames_of_reference == first.frames_of_reference
    assert len(study.frames_of_reference) == 1
    # and every de-identification left an audit record without PHI
    events = vault.audit_events(results[0].pseudo.study_instance_uid)
    assert len(events) == len(results) + 1
    assert FakePatient().patient_id not in repr(events)
    assert vault.study_by_pseudo("2.25.1") is None


def test_values_are_sealed_at_rest_and_need_the_key(
    tmp_path: Path, results: list[DeidResult]
) -> None:
    path = tmp_path / "crosswalk.sqlite3"
    vault = CrosswalkVault(path, b"k" * 32)
    vault.record("site-a", results[0])
    vault.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for value in [*FakePatient().phi_values(), results[0].identity.study_instance_uid]:
        assert value.encode() not in raw
    with pytest.raises(CrosswalkError):
        CrosswalkVault(path, b"x" * 32).study_by_pseudo(results[0].pseudo.study_instance_uid)


def test_midi_b_export_maps_old_to_new(tmp_path: Path, results: list[DeidResult]) -> None:
    vault = CrosswalkVault(tmp_path / "cw.sqlite3", os.urandom(32))
    for result in results:
        vault.record("site-a", result)
    vault.export_midi_b(tmp_path / "midi")
    with open(tmp_path / "midi" / "uid_mapping.csv", encoding="utf-8") as handle:
        uids = {row["id_old"]: row["id_new"] for row in csv.DictReader(handle)}
    with open(tmp_path / "midi" / "patid_mapping.csv", encoding="utf-8") as handle:
        patients = list(csv.DictReader(handle))
    identity, pseudo = results[0].identity, results[0].pseudo
    assert uids[identity.study_instance_uid] == pseudo.study_instance_uid
    assert uids[identity.instances[pseudo.sop_instance_uid]] == pseudo.sop_instance_uid
    assert patients == [{"id_old": identity.patient_id, "id_new": pseudo.patient_id}]
