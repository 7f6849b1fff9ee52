"""An operator's re-run: a retained study goes again, to the pinned model version only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_forwarder.cli import main
from edge_forwarder.config import load_config
from edge_forwarder.intake import IntakeSettings
from edge_forwarder.intake.journal import Journal as IntakeJournal
from edge_forwarder.intake.journal import RerunRefused
from edge_forwarder.intake.scp import Intake
from edge_forwarder.transport.journal import Journal
from imaging_ai.errors import ContractError
from imaging_ai.model_registry import DEMO_MODEL, split_model_reference

CHEST = {"Modality": "CT", "BodyPartExamined": "CHEST"}


def _forwarded_study(intake: Intake, instances: int = 2) -> str:
    """A chest CT routed to the default model and forwarded; its originals still spooled."""
    key = intake.journal.study_key_for("1.2.3.4", time.time())
    for number in range(instances):
        path = intake.spool.path_for(key, f"1.2.3.4.{number}")
        intake.spool.write_durably(path, b"\x00" * 16)
        intake.journal.add_instance(key, f"1.2.3.4.{number}", "1.2.3.4.1", path, 16, CHEST,
                                    time.time() - 3600)  # fmt: skip
    (completed,) = intake.poll_completed(now=time.time() + 3600)
    intake.mark_forwarded(key, completed.run_number)
    return key


@pytest.fixture
def intake(tmp_path: Path) -> Intake:
    return Intake(IntakeSettings(spool_dir=tmp_path / "spool", allow_any_sender=True))


def test_a_rerun_goes_to_the_pinned_model_version_only_and_once(intake: Intake) -> None:
    # Given a forwarded study whose originals are retained
    key = _forwarded_study(intake)
    # When the operator pins it to an older version of the model
    assert intake.journal.request_rerun(key, "lung-nodule-demo@1.0.0") == 2
    # Then the intake hands it out at once as run 2, to that model and version only
    (rerun,) = intake.poll_completed(now=time.time())
    assert (rerun.run_number, rerun.models) == (2, ("lung-nodule-demo",))
    assert rerun.pinned_versions == {"lung-nodule-demo": "1.0.0"}
    assert sum(len(paths) for paths in rerun.series.values()) == 2
    # And once forwarded, the pin is gone: a later late instance is routed as usual
    intake.mark_forwarded(key, 2)
    assert intake.journal.pinned_models(key) == []


def test_a_rerun_is_refused_while_the_study_is_open_or_once_it_was_purged(
    intake: Intake,
) -> None:
    key = _forwarded_study(intake)
    intake.journal.request_rerun(key, "lung-nodule-demo")
    with pytest.raises(RerunRefused, match="OPEN"):
        intake.journal.request_rerun(key, "lung-nodule-demo")
    (rerun,) = intake.poll_completed(now=time.time())
    assert rerun.pinned_versions == {}  # NAME alone: the model's current version
    intake.mark_forwarded(key, rerun.run_number)
    # When retention has purged the originals, nothing is left to run again
    study = intake.journal.delivered_studies()[0]
    assert intake.journal.release_delivered(key, study.forwarded_at)
    with pytest.raises(RerunRefused, match="purged"):
        intake.journal.request_rerun(key, "lung-nodule-demo")
    with pytest.raises(RerunRefused, match="no such study"):
        intake.journal.request_rerun("st-unknown", "lung-nodule-demo")


@pytest.mark.parametrize("reference", ["", "a@", "../x@1", "m@1/2", "m@@1"])
def test_a_model_reference_that_is_not_name_or_name_at_version_is_refused(
    reference: str,
) -> None:
    with pytest.raises(ContractError, match="NAME@VERSION"):
        split_model_reference(reference)
    assert split_model_reference("m@1.0.0+cu128") == ("m", "1.0.0+cu128")


EXAMPLE = Path(__file__).parents[3] / "edge_forwarder" / "example-config.toml"


def test_the_rerun_command_queues_a_retained_study_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a forwarder (the example config) that forwarded a study as run r1-abc
    for name in ("site-secret.hex", "crosswalk-key.hex"):
        (tmp_path / name).write_text("ab" * 32)
    text = EXAMPLE.read_text().replace("/etc/edge-forwarder/", "")
    text = text.replace('spool_dir = "/var/lib/edge-forwarder/spool"', 'spool_dir = "spool"')
    text = text.replace('state_dir = "/var/lib/edge-forwarder"', 'state_dir = "state"')
    config_path = tmp_path / "forwarder.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    intake = Intake(IntakeSettings(spool_dir=config.intake.spool_dir, allow_any_sender=True))
    key = _forwarded_study(intake)
    intake.journal.close()
    config.database_path.parent.mkdir(parents=True, exist_ok=True)
    Journal(config.database_path).open_run("r1-abc", key, 1, "2.25.77", model_name=DEMO_MODEL)
    command = ["--config", str(config_path), "rerun"]
    # When the operator asks for a model no rule of the site sends to, or an unknown study
    assert main([*command, "r1-abc", "--model", "other-model@1.0"]) == 2
    assert main([*command, "2.25.999", "--model", DEMO_MODEL]) == 2
    assert "no routing rule" in capsys.readouterr().err
    # Then nothing is queued; for the study by its pseudonym and a kept version, it is
    assert main([*command, "2.25.77", "--model", f"{DEMO_MODEL}@1.0.0"]) == 0
    assert f"run 2 with {DEMO_MODEL}@1.0.0" in capsys.readouterr().out
    reopened = IntakeJournal(config.intake.spool_dir / "journal.sqlite3")
    assert reopened.pinned_models(key) == [f"{DEMO_MODEL}@1.0.0"]
    # And asking again while that run is pending is refused with the reason
    assert main([*command, "r1-abc", "--model", DEMO_MODEL]) == 1
    assert "OPEN" in capsys.readouterr().err
