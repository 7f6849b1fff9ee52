"""One IAM-enforcing local pipeline shared by the e2e modules that can share it.

Starting a whole pipeline (two moto servers, the roles, an inference server per model,
Orthanc, the FHIR server, the forwarder) costs tens of seconds; the tests that only need "a
pipeline running the CDK roles" send their own study to this one instead. Each study has its
own patient and study UID, and each test follows only its own study (`follow_new_study`), so
the tests stay independent of each other and of their order.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from imaging_ai.local.demo import DemoSummary, collect_summary
from imaging_ai.local.runtime import LocalModel, LocalPipeline
from imaging_ai.model_registry import DEMO_MODEL, DEMO_MODEL_DIR
from imaging_ai.synthetic import FakePatient, SyntheticStudy, write_ct_study
from tests.model_support import renamed_demo_model

# The demo model's versions in the shared pipeline: the shipped one and a newer current one
# (same weights, a card of its own), so a study can be re-run with the kept older version.
OLD, CURRENT = "1.0.0", "1.1.0"
# The fixtures that hold the shared pipeline (directly, or as a parameter's fixture name).
SHARED_PIPELINE_FIXTURES = frozenset({"iam_pipeline", "iam_chest_study"})


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by parametrized fixtures
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the e2e tests that share the IAM pipeline after the other e2e tests.

    The shared pipeline lives until the e2e package ends, and two pipelines must never run in
    one process at once: the handlers and dispatchers read the process's environment, so one
    pipeline's would poll the other's queues. Every other e2e test starts (and stops) its own
    pipeline, so they go first. Only the order changes, not what any test needs.
    """
    e2e = Path(__file__).parent
    shared = [item for item in items if item.path.is_relative_to(e2e) and _shares(item)]
    if shared:
        chosen = {id(item) for item in shared}
        others = [item for item in items if id(item) not in chosen]
        last_e2e = max(
            (i for i, item in enumerate(others) if item.path.is_relative_to(e2e)), default=-1
        )
        items[:] = others[: last_e2e + 1] + shared + others[last_e2e + 1 :]


def _shares(item: pytest.Item) -> bool:
    params = getattr(item, "callspec", None)
    names = set(getattr(item, "fixturenames", ()))
    if params is not None:
        names |= {value for value in params.params.values() if isinstance(value, str)}
    return bool(names & SHARED_PIPELINE_FIXTURES)


def two_versions(root: Path) -> Path:
    """The demo model's registry folder with the shipped OLD and a newer CURRENT: every
    version is kept, CURRENT serves new studies."""
    folder = root / DEMO_MODEL
    shutil.copytree(DEMO_MODEL_DIR, folder / OLD)
    shutil.copytree(DEMO_MODEL_DIR, folder / CURRENT)
    card = folder / CURRENT / "model.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "version": CURRENT}))
    return folder


def own_patient(mrn: str) -> FakePatient:
    """A patient of the test's own: the EHR finds each test's reports by this MRN."""
    return replace(FakePatient(), patient_id=mrn)


@pytest.fixture(scope="package")
def iam_pipeline(
    tmp_path_factory: pytest.TempPathFactory, contract_template: dict[str, Any]
) -> Iterator[LocalPipeline]:
    """Moto enforcing the CDK template's IAM policies (every part as its role); the demo
    model live with two kept versions, and a renamed copy of it in shadow mode."""
    # Lambda handlers cache their settings and clients per process, as in Lambda; the
    # pipeline points them at its own moto server, so earlier tests' caches must go.
    from functions.common import bootstrap
    from tests.cloud_contract import role_specs

    bootstrap.reset()
    work_dir = tmp_path_factory.mktemp("iam-pipeline")
    shadow = renamed_demo_model(work_dir / "registry")
    pipeline = LocalPipeline(
        work_dir=work_dir,
        models=(
            LocalModel(two_versions(work_dir / "registry")),
            LocalModel(shadow.model_dir, shadow=True),
        ),
        quiet_seconds=2.0,
        printer=None,
        backend="moto",
        iam_policies=lambda resources: role_specs(contract_template, resources),
    )
    with pipeline:
        yield pipeline
    bootstrap.reset()


@dataclass(frozen=True)
class DeliveredStudy:
    study: SyntheticStudy
    summary: DemoSummary
    pseudo_study_uids: frozenset[str]  # the cloud's name of it


@pytest.fixture(scope="package")
def iam_chest_study(
    iam_pipeline: LocalPipeline, tmp_path_factory: pytest.TempPathFactory
) -> DeliveredStudy:
    """A small chest CT (same generator as the demo) sent by a modality with DCMTK through
    the shared pipeline, and what PACS, EHR and cloud held once it was delivered."""
    # The field of view covers the whole body, as the demo model was trained (a cropped body
    # adds FPs)
    folder = tmp_path_factory.mktemp("chest") / "study"
    study = write_ct_study(
        folder, seed=424242, shape=(64, 256, 256), spacing_mm=(2.0, 1.4, 1.4), nodule_count=2,
        patient=own_patient("MRN-E2E-CHEST"),
    )  # fmt: skip
    iam_pipeline.follow_new_study()
    started = time.monotonic()
    iam_pipeline.send_study(folder)
    ok = iam_pipeline.wait_until_delivered(timeout_s=240)
    summary = collect_summary(iam_pipeline, study, ok, started)
    # No part needed a permission its CDK role does not grant
    assert iam_pipeline.iam_denials() == [], iam_pipeline.iam_denials()
    return DeliveredStudy(study, summary, frozenset(iam_pipeline.pseudo_study_uids))
