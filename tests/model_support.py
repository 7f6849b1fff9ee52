"""A second model for fan-out and shadow-mode tests: the demo model under another name."""

from __future__ import annotations

import shutil
from pathlib import Path

from imaging_ai.model_card import MODEL_CARD_NAME, load_model_card
from imaging_ai.model_registry import DEMO_MODEL_DIR, ModelRegistry, RegisteredModel

SHADOW_MODEL = "lung-nodule-shadow"


def renamed_demo_model(registry_root: Path, name: str = SHADOW_MODEL) -> RegisteredModel:
    """The demo model's weights registered again under `name` in a registry at `registry_root`
    (same version; the card's name is all that differs)."""
    card = load_model_card(DEMO_MODEL_DIR)
    target = registry_root / name / card.version
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DEMO_MODEL_DIR / card.weights_file, target / card.weights_file)
    renamed = card.model_copy(update={"name": name})
    (target / MODEL_CARD_NAME).write_text(renamed.model_dump_json(indent=2))
    return ModelRegistry(registry_root).get(name)
