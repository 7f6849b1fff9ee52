"""HL7 ORU delivery over MLLP against a real listener: AA, AE, AR, a dropped connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from edge_forwarder.delivery import HL7_NAK_NAME, Delivery
from edge_forwarder.observability import AuditTrail, HealthState, Metrics, Telemetry
from edge_forwarder.oru import build_oru, control_id
from edge_forwarder.result_objects import ORU_NAME
from edge_forwarder.transport.backoff import Backoff, RetryPolicy
from edge_forwarder.transport.errors import TransientError
from edge_forwarder.transport.hl7 import AckCode, Hl7Rejected, MllpPeer
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from imaging_ai.edge_stage import EdgeStage
from tests.integration.transport.mllp_listener import DROP, MllpListener, mllp_listener
from tests.unit.edge.test_oru import IDENTITY, PARTIES, WHEN, sample_content

pytestmark = pytest.mark.integration
RUN_ID = "r1-hl7"
MESSAGE = build_oru(sample_content(), IDENTITY, RUN_ID, PARTIES, WHEN)


@pytest.fixture
def listener() -> Iterator[MllpListener]:
    with mllp_listener() as running:
        yield running


def _peer(listener: MllpListener) -> MllpPeer:
    return MllpPeer("127.0.0.1", listener.port, timeout_s=5.0)


def test_an_aa_is_accepted_and_the_listener_has_the_identified_oru(
    listener: MllpListener,
) -> None:
    ack = _peer(listener).send(MESSAGE, control_id(RUN_ID))
    assert ack.code is AckCode.ACCEPT and ack.control_id == control_id(RUN_ID)
    (received,) = listener.received
    parsed = hl7.parse(received)
    assert str(parsed.segment("PID")[3]) == "MRN-0042^^^HOSP-MRN^MR"
    assert str(parsed.segment("MSH")[9]) == "ORU^R01^ORU_R01"


def test_ae_is_a_permanent_rejection_and_ar_a_transient_one(listener: MllpListener) -> None:
    listener.script = ["AE", "AR"]
    with pytest.raises(Hl7Rejected):
        _peer(listener).send(MESSAGE, control_id(RUN_ID))
    with pytest.raises(TransientError, match="AR"):
        _peer(listener).send(MESSAGE, control_id(RUN_ID))


def test_a_dropped_connection_is_transient(listener: MllpListener) -> None:
    listener.script = [DROP]
    with pytest.raises(TransientError, match="closed the connection"):
        _peer(listener).send(MESSAGE, control_id(RUN_ID))
    assert len(listener.received) == 1


def test_an_ack_for_another_message_is_not_taken_as_delivery(listener: MllpListener) -> None:
    with pytest.raises(TransientError, match="MSA-2"):
        _peer(listener).send(MESSAGE, "another-control-id")


# ---- through the forwarder's delivery loop --------------------------------------------------


def _delivery(tmp_path: Path, peer: MllpPeer, attempts: int = 3) -> tuple[Delivery, Journal]:
    journal = Journal(tmp_path / "forwarder.sqlite")
    telemetry = Telemetry(Metrics(), HealthState(), AuditTrail(tmp_path / "audit.jsonl", "site-a"))
    never = RetryPolicy(1, Backoff(0.0, 0.0))
    delivery = Delivery(
        journal=journal,
        pacs=peer,  # type: ignore[arg-type]  # no PACS delivery is queued in these tests
        ehr=peer,  # type: ignore[arg-type]
        pacs_retry=never,
        ehr_retry=never,
        telemetry=telemetry,
        deliveries_dir=tmp_path / "deliveries",
        stop=threading.Event(),
        hl7=peer,
        hl7_retry=RetryPolicy(attempts, Backoff(0.01, 0.02)),
    )
    journal.open_run(RUN_ID, "key-1", 1, "2.25.1", stage=EdgeStage.UPLOADED)
    journal.advance(RUN_ID, EdgeStage.RESULTS_RECEIVED)
    journal.advance(RUN_ID, EdgeStage.REIDENTIFIED)
    folder = tmp_path / "deliveries" / RUN_ID
    folder.mkdir(parents=True)
    (folder / ORU_NAME).write_bytes(MESSAGE.encode())
    journal.set_delivery(RUN_ID, DeliveryTarget.HL7, DeliveryState.PENDING, payload_dir=folder)
    return delivery, journal


def test_drops_and_rejects_are_retried_with_backoff_until_an_aa(
    tmp_path: Path, listener: MllpListener
) -> None:
    # Given a receiver that drops the first connection and rejects (AR) the second send
    listener.script = [DROP, "AR"]
    delivery, journal = _delivery(tmp_path, _peer(listener))
    # When the pending deliveries are worked
    delivery.deliver_pending()
    # Then the third send is acknowledged and the run is delivered
    assert len(listener.received) == 3
    (row,) = journal.deliveries(run_id=RUN_ID)
    assert row.state is DeliveryState.DELIVERED and row.attempts == 3
    stages = [stage for _, stage, _ in journal.timeline(RUN_ID)]
    assert stages.count("retry_hl7") == 2
    assert stages[-2:] == [EdgeStage.DELIVERED_HL7, EdgeStage.DELIVERED]


def test_an_ae_is_a_visible_dead_letter_that_the_operator_can_send_again(
    tmp_path: Path, listener: MllpListener
) -> None:
    # Given a receiver that answers AE (bad content), When the delivery is worked
    listener.script = ["AE"]
    delivery, journal = _delivery(tmp_path, _peer(listener))
    delivery.deliver_pending()
    # Then it is not retried: a dead letter, on the run's timeline, counted, reason kept
    assert len(listener.received) == 1
    (dead,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert dead.target is DeliveryTarget.HL7 and "AE" in str(dead.last_error)
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DEAD_LETTER_HL7
    assert delivery.telemetry.metrics.dead_letters._value.get() == 1
    assert (tmp_path / "deliveries" / RUN_ID / HL7_NAK_NAME).exists()
    # When the operator queues it again (`edge-forwarder retry --target hl7`) and it is AA'd
    journal.set_delivery(RUN_ID, DeliveryTarget.HL7, DeliveryState.PENDING)
    delivery.deliver_pending()
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DELIVERED


def test_a_receiver_that_never_answers_is_dead_lettered_after_its_attempts(
    tmp_path: Path,
) -> None:
    # Given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delivery, journal = _delivery(tmp_path, MllpPeer("127.0.0.1", port, timeout_s=1.0))
    delivery.deliver_pending()
    (dead,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert dead.attempts == 3 and "unreachable" in str(dead.last_error)
