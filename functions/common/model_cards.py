"""The model cards the Lambdas run by: the current version, or the kept version a run pins."""

from __future__ import annotations

from pydantic import ValidationError

from functions.common.adapters import ObjectMissing, StudyObjectStore
from imaging_ai.contracts import model_card_key
from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard


def read_stored_card(store: StudyObjectStore, model_name: str, version: str | None) -> ModelCard:
    """`models/NAME/model.json`, or `models/NAME/VERSION/model.json` for a pinned version.

    A deployment that wrote only the current card still serves its own version. Raises
    ContractError when the store keeps no such version, or when the card found is not the
    one its key names (a re-run must be made by exactly the version it pins).
    """
    try:
        card = _card(store.read(model_card_key(model_name, version)))
    except ObjectMissing:
        card = _current_if(store, model_name, version)
    if card.name != model_name or version not in (None, card.version):
        raise ContractError("the model store's model.json names another model or version")
    return card


def _current_if(store: StudyObjectStore, model_name: str, version: str | None) -> ModelCard:
    """The current card when it is `version`; ContractError otherwise."""
    kept = f"version {version!r} of " if version else ""
    missing = ContractError(f"the model store keeps no {kept}model {model_name!r}")
    if version is None:
        raise missing
    try:
        card = _card(store.read(model_card_key(model_name)))
    except ObjectMissing:
        raise missing from None
    if card.version != version:
        raise missing
    return card


def _card(body: bytes) -> ModelCard:
    try:
        return ModelCard.model_validate_json(body)
    except ValidationError:
        raise ContractError("the model's model.json does not match its schema") from None
