"""Who may send: the allow-list is default deny, by calling AE title AND address, with slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_forwarder.config import load_config
from edge_forwarder.intake.admission import Refusal, SenderPolicy
from edge_forwarder.intake.settings import IntakeSettings, SenderRule
from edge_forwarder.transport.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "edge_forwarder" / "example-config.toml"
CT = SenderRule(name="ct-1", ae_title="CT_1", addresses=["10.0.0.5"])
ROUTER = SenderRule(name="router", ae_title="ROUTER", addresses=["10.0.1.0/28", "::1"])


def _policy(tmp_path: Path, **overrides: object) -> SenderPolicy:
    values: dict[str, object] = {"spool_dir": tmp_path, "senders": [CT, ROUTER], **overrides}
    return SenderPolicy(IntakeSettings.model_validate(values))


def test_a_sender_is_its_ae_title_and_address_together(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    assert policy.admit("CT_1", "EDGE_FWD", "10.0.0.5", []).sender == "ct-1"
    assert policy.admit("ROUTER", "EDGE_FWD", "10.0.1.14", []).sender == "router"
    assert policy.admit("ROUTER", "EDGE_FWD", "::ffff:10.0.1.3", []).refusal is None
    # The right AE title from another host, or a known host with another AE title: refused
    assert policy.admit("CT_1", "EDGE_FWD", "10.0.0.6", []).refusal is Refusal.UNKNOWN_SENDER
    assert policy.admit("ROUTER", "EDGE_FWD", "10.0.0.5", []).refusal is Refusal.UNKNOWN_SENDER
    assert policy.admit("INTRUDER", "EDGE_FWD", "10.0.0.5", []).refusal is Refusal.UNKNOWN_SENDER
    assert Refusal.UNKNOWN_SENDER.reject == (0x01, 0x01, 0x03)
    # and an unknown address is dropped before any TLS or DICOM
    assert policy.address_known("10.0.1.2") and not policy.address_known("10.0.2.1")


def test_the_called_ae_title_is_checked(tmp_path: Path) -> None:
    admission = _policy(tmp_path).admit("CT_1", "OTHER_SCP", "10.0.0.5", [])
    assert admission.refusal is Refusal.WRONG_CALLED_AE
    assert admission.refusal.reject == (0x01, 0x01, 0x07)


def test_slots_are_counted_per_sender_and_in_total(tmp_path: Path) -> None:
    policy = _policy(tmp_path, max_associations_per_sender=2, max_associations=3)
    assert policy.admit("CT_1", "EDGE_FWD", "10.0.0.5", ["ct-1"]).refusal is None
    busy = policy.admit("CT_1", "EDGE_FWD", "10.0.0.5", ["ct-1", "ct-1"])
    assert busy.refusal is Refusal.SENDER_BUSY
    assert busy.refusal.reject == (0x02, 0x03, 0x02)  # transient: try again later
    # Another sender still gets in while the first is at its limit, until the total is reached
    assert policy.admit("ROUTER", "EDGE_FWD", "10.0.1.1", ["ct-1", "ct-1"]).refusal is None
    full = policy.admit("ROUTER", "EDGE_FWD", "10.0.1.1", ["ct-1", "ct-1", "router"])
    assert full.refusal is Refusal.SERVER_BUSY


def test_allow_any_sender_admits_anyone_with_slots_per_ae_title_and_address(
    tmp_path: Path,
) -> None:
    policy = _policy(tmp_path, senders=[], allow_any_sender=True, max_associations_per_sender=1)
    first = policy.admit("WHOEVER", "EDGE_FWD", "192.0.2.7", [])
    assert first.refusal is None and policy.address_known("198.51.100.1")
    again = policy.admit("WHOEVER", "EDGE_FWD", "192.0.2.7", [str(first.sender)])
    assert again.refusal is Refusal.SENDER_BUSY


def test_a_config_without_senders_refuses_to_start_with_a_clear_error(tmp_path: Path) -> None:
    # Given the example config with its sender entries removed
    text = EXAMPLE.read_text()
    cut = text.index("[[intake.senders]]")
    without = text[:cut] + text[text.index("[deid]") :]
    path = tmp_path / "c.toml"
    path.write_text(without)
    # When it is loaded, Then the error says how to name senders
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "[[intake.senders]]" in str(caught.value)
    assert "allow_any_sender = true" in str(caught.value)
    # and only an explicit allow_any_sender makes it start
    path.write_text(without.replace("[intake]", "[intake]\nallow_any_sender = true", 1))
    assert load_config(path).intake.allow_any_sender


def test_the_old_calling_ae_list_is_refused_with_a_pointer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"replaced by \[\[intake.senders\]\]"):
        IntakeSettings.model_validate({"spool_dir": tmp_path, "allowed_calling_aets": ["CT"]})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "ae_title": "CT", "addresses": ["10.0.0.300"]}, "not an IP address"),
        ({"name": "a", "ae_title": "CT", "addresses": []}, "at least 1 item"),
        ({"name": "a\nb", "ae_title": "CT", "addresses": ["10.0.0.1"]}, "String should match"),
        ({"name": "a", "ae_title": "C\\T", "addresses": ["10.0.0.1"]}, "without backslash"),
    ],
)
def test_bad_sender_entries_name_the_problem(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        IntakeSettings.model_validate({"spool_dir": tmp_path, "senders": [entry]})
