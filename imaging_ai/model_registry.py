"""The model registry: every model version a deployment can run, as name -> version -> folder.

Layout (one folder per version, never overwritten, so a result can be re-executed with the
exact version that made it):

    {root}/{name}/{version}/model.json    the model card (model contract), naming the weights
    {root}/{name}/{version}/<weights>     e.g. model.ts; its SHA-256 is in model.json

The folder names must equal the card's `name` and `version`, and the weights must match the
card's `weights_sha256`: a registry entry is checked when it is read. The repository's own
registry is `containers/inference/models/`; a deployment may point at another root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imaging_ai.contracts import MODEL_NAME_PATTERN, MODEL_VERSION_PATTERN
from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard, load_model_card

REPOSITORY_REGISTRY: Final = Path(__file__).resolve().parents[1] / "containers/inference/models"
# The model the demo and the example configuration run.
DEMO_MODEL: Final = "lung-nodule-demo"
DEMO_MODEL_DIR: Final = REPOSITORY_REGISTRY / DEMO_MODEL / "1.0.0"


@dataclass(frozen=True)
class RegisteredModel:
    """One version of one model: its folder (the model directory) and its checked card."""

    name: str
    version: str
    model_dir: Path
    card: ModelCard

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"


def _version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    # Numeric parts compare as numbers (1.10.0 after 1.9.0); other parts as text, after them.
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+-]", version)
    )


class ModelRegistry:
    """Read-only view of a registry folder."""

    def __init__(self, root: Path = REPOSITORY_REGISTRY) -> None:
        self.root = root

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """The model's versions, oldest first."""
        folder = self.root / _checked_name(name)
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if (p / "model.json").is_file()]
        return sorted(found, key=_version_order)

    def kept(self, name: str) -> list[RegisteredModel]:
        """Every kept version of the model, oldest first (the newest is its current one)."""
        return [self.get(name, version) for version in self.versions(name)]

    def get(self, name: str, version: str | None = None) -> RegisteredModel:
        """The model at `version`, or its newest version; the card and weights are checked."""
        versions = self.versions(name)
        if not versions:
            raise ContractError(f"the model registry has no model {name!r}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ContractError(f"the model registry has no version {chosen!r} of {name!r}")
        model_dir = self.root / name / chosen
        card = load_model_card(model_dir)
        if (card.name, card.version) != (name, chosen):
            raise ContractError(
                f"{model_dir} holds {card.name}@{card.version}: the folder must be named "
                "after the card's name and version"
            )
        return RegisteredModel(name, chosen, model_dir, card)

    def resolve(self, reference: str) -> RegisteredModel:
        """`NAME` (its newest version) or `NAME@VERSION`."""
        return self.get(*split_model_reference(reference))


def split_model_reference(reference: str) -> tuple[str, str | None]:
    """`NAME` -> (NAME, None): the current version; `NAME@VERSION` -> (NAME, VERSION)."""
    name, at, version = reference.partition("@")
    if not re.match(MODEL_NAME_PATTERN, name) or (
        at and not re.match(MODEL_VERSION_PATTERN, version)
    ):
        raise ContractError(
            "a model reference is NAME or NAME@VERSION, as the model card spells them"
        )
    return name, version if at else None


def _checked_name(name: str) -> str:
    # A name becomes a path here: the card's pattern keeps it one folder deep.
    if not re.match(MODEL_NAME_PATTERN, name):
        raise ContractError("not a model name")
    return name
