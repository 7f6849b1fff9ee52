"""The model store keeps every version's card; the Lambdas read exactly the one a run pins."""

from __future__ import annotations

import pytest

from functions.common.adapters import StudyObjectStore
from functions.common.model_cards import read_stored_card
from imaging_ai.aws import client
from imaging_ai.contracts import model_card_key
from imaging_ai.errors import ContractError
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.local.provision import provision
from imaging_ai.model_card import load_model_card
from imaging_ai.model_registry import DEMO_MODEL, DEMO_MODEL_DIR

pytestmark = pytest.mark.integration


def test_every_provisioned_version_stays_readable_and_the_newest_is_current(
    aws: MotoServer,
) -> None:
    # Given two versions of the demo model provisioned oldest first
    old = load_model_card(DEMO_MODEL_DIR)
    new = old.model_copy(update={"version": "1.1.0"})
    resources = provision(["site-a"], [old, new])
    store = StudyObjectStore(client("s3"), resources.data_bucket, resources.kms_key_arn)
    # Then a run pinned to either reads that version's card, and an unpinned one the newest
    assert read_stored_card(store, DEMO_MODEL, "1.0.0").version == "1.0.0"
    assert read_stored_card(store, DEMO_MODEL, "1.1.0").version == "1.1.0"
    assert read_stored_card(store, DEMO_MODEL, None).version == "1.1.0"
    # And a version the store does not keep is refused with the reason the run fails with
    with pytest.raises(ContractError, match=r"keeps no version '0\.9\.0'"):
        read_stored_card(store, DEMO_MODEL, "0.9.0")


def test_a_store_holding_only_the_current_card_still_serves_its_version(aws: MotoServer) -> None:
    # Given a deployment that wrote only models/NAME/model.json (before versions were kept)
    card = load_model_card(DEMO_MODEL_DIR)
    resources = provision(["site-a"], [])
    s3 = client("s3")
    s3.put_object(Bucket=resources.data_bucket, Key=model_card_key(DEMO_MODEL),
                  Body=card.model_dump_json().encode())  # fmt: skip
    store = StudyObjectStore(s3, resources.data_bucket, resources.kms_key_arn)
    # Then its own version is found, and any other is refused
    assert read_stored_card(store, DEMO_MODEL, card.version) == card
    with pytest.raises(ContractError, match="keeps no version"):
        read_stored_card(store, DEMO_MODEL, "0.9.0")
