"""Build the forwarder from a config, with a list-backed intake standing in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_forwarder.composition import Forwarder, build_forwarder
from edge_forwarder.config import ForwarderConfig, load_config
from edge_forwarder.intake import CompletedStudy
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from tests.edge_support import ListIntake
from tests.integration.transport.conftest import CloudSide, write_config


def forwarder_from_config(path: Path, intake: Any) -> tuple[Forwarder, ForwarderConfig]:
    """The forwarder exactly as `edge-forwarder run` builds it, but fed by `intake`."""
    config = load_config(path)
    config.crosswalk.path.parent.mkdir(parents=True, exist_ok=True)
    return build_forwarder(config, intake=intake, max_backoff_s=0.2), config


@dataclass
class CompletedStudyAtTheEdge:
    """A synthetic CT study (fake PHI) the intake hands over, and the forwarder it goes to."""

    study: SyntheticStudy
    intake: ListIntake
    forwarder: Forwarder
    config: ForwarderConfig
    config_path: Path


def completed_study(
    tmp: Path, cloud: CloudSide, pacs_port: int, ehr_url: str, *, seed: int, **config: Any
) -> CompletedStudyAtTheEdge:
    study = write_ct_study(
        tmp / "ct", seed=seed, shape=(24, 128, 128), spacing_mm=(2.5, 2.5, 2.5), nodule_count=1
    )
    intake = ListIntake(
        [CompletedStudy(f"study-{seed}", 1, ("default",), {study.series_instance_uid: study.paths})]
    )
    path = write_config(tmp, cloud, pacs_port, ehr_url, **config)
    forwarder, loaded = forwarder_from_config(path, intake)
    return CompletedStudyAtTheEdge(study, intake, forwarder, loaded, path)
