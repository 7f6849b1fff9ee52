"""The critical-finding webhook client against a real HTTP listener on loopback."""

from __future__ import annotations

import pytest

from edge_forwarder.transport.errors import PermanentError, TransientError
from edge_forwarder.transport.webhook import WebhookClient
from imaging_ai.local.moto_server import free_port
from tests.integration.transport.conftest import Ehr

NOTICE = {"resourceType": "Communication", "status": "completed", "priority": "stat"}


def test_the_notice_arrives_as_fhir_json(ehr: Ehr) -> None:
    # Given a listening webhook, When a notice is sent, Then it arrives as sent, typed FHIR JSON
    WebhookClient(ehr.url).notify(NOTICE)
    assert ehr.received == [NOTICE]
    assert ehr.headers[0]["Content-Type"] == "application/fhir+json"


@pytest.mark.parametrize(
    ("status", "error"), [(503, TransientError), (429, TransientError), (404, PermanentError)]
)
def test_answers_are_sorted_into_retry_or_refusal(
    ehr: Ehr, status: int, error: type[Exception]
) -> None:
    # Given a webhook answering `status`, Then the delivery knows whether a retry can help
    ehr.script.append((status, {}))
    with pytest.raises(error):
        WebhookClient(ehr.url).notify(NOTICE)


def test_an_unreachable_webhook_is_worth_a_retry() -> None:
    # Given nothing listening on the port, Then the failure is transient (the site may be back)
    with pytest.raises(TransientError):
        WebhookClient(f"http://127.0.0.1:{free_port()}/hook", timeout_s=2.0).notify(NOTICE)
