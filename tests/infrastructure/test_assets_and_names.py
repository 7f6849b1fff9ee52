"""The Docker-free Lambda packaging and the names the stack copies from the runtime contracts."""

from __future__ import annotations

from pathlib import Path

import build_lambda_assets
import pytest
from imaging_ai_infra import names

from tests.infrastructure.conftest import _stub_function_sources

pytestmark = pytest.mark.infrastructure


def test_missing_function_sources_fail_with_a_clear_message(tmp_path: Path) -> None:
    # Given a source tree without functions/
    (tmp_path / "imaging_ai").mkdir()
    # When assets are built, Then the error names what is missing
    with pytest.raises(build_lambda_assets.AssetBuildError, match="functions/preprocess/handler"):
        build_lambda_assets.build_assets(
            source_root=tmp_path, out_dir=tmp_path / "out", install_dependencies=False
        )


def test_assets_hold_functions_and_library_without_inference_local_or_synthetic(
    tmp_path: Path,
) -> None:
    # Given a source tree whose library also has inference/, local/ and synthetic.py
    source = _stub_function_sources(tmp_path / "src")
    for excluded in ("inference", "local"):
        (source / "imaging_ai" / excluded).mkdir()
        (source / "imaging_ai" / excluded / "__init__.py").write_text("")
    (source / "imaging_ai" / "contracts.py").write_text("")
    (source / "imaging_ai" / "synthetic.py").write_text("")
    # When synth-only assets are built
    built = build_lambda_assets.build_assets(
        source_root=source, out_dir=tmp_path / "out", install_dependencies=False
    )
    # Then every function's asset has the handler tree and the library, minus excluded parts
    assert set(built) == set(build_lambda_assets.FUNCTION_NAMES)
    for name, asset in built.items():
        assert (asset / "functions" / name / "handler.py").is_file()
        assert (asset / "imaging_ai" / "contracts.py").is_file()
        assert not (asset / "imaging_ai" / "inference").exists()
        assert not (asset / "imaging_ai" / "local").exists()
        assert not (asset / "imaging_ai" / "synthetic.py").exists()


def test_pip_targets_the_lambda_platform(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a recorded pip call
    calls: list[list[str]] = []

    class Done:
        returncode = 0
        stderr = ""

    def record(command: list[str], **_: object) -> Done:
        calls.append(command)
        return Done()

    monkeypatch.setattr(build_lambda_assets.subprocess, "run", record)
    source = _stub_function_sources(tmp_path / "src")
    # When assets are built with dependencies
    build_lambda_assets.build_assets(source_root=source, out_dir=tmp_path / "out")
    # Then pip installs manylinux2014 x86_64 CPython 3.12 wheels only, into each asset
    assert len(calls) == len(build_lambda_assets.FUNCTION_NAMES)
    for command in calls:
        joined = " ".join(command)
        assert "--platform manylinux2014_x86_64" in joined
        assert "--python-version 3.12" in joined
        assert "--implementation cp" in joined
        assert "--only-binary=:all:" in joined
        assert "--target" in command


def test_copied_names_match_the_runtime_contracts() -> None:
    # The stack may not import runtime code; this test is where the two meet.
    from imaging_ai import contracts, state

    for copied in (
        "MANIFEST_NAME",
        "STAT_MANIFEST_NAME",
        "INCOMING_PREFIX",
        "PREPROCESSED_PREFIX",
        "INFERENCE_OUTPUT_PREFIX",
        "INFERENCE_FAILURE_PREFIX",
        "RESULTS_PREFIX",
        "MODELS_PREFIX",
    ):
        assert getattr(names, copied) == getattr(contracts, copied), copied
    assert contracts.manifest_key("site-a", "1.2.3").startswith(names.INCOMING_PREFIX)
    assert contracts.preprocessed_key("site-a", "1.2", "r1").startswith(names.PREPROCESSED_PREFIX)
    assert contracts.inference_output_prefix("site-a", "1.2", "r1").startswith(
        names.INFERENCE_OUTPUT_PREFIX
    )
    assert contracts.result_key("site-a", "1.2", "r1", "sr.dcm").startswith(names.RESULTS_PREFIX)
    assert contracts.model_card_key("m").startswith(names.MODELS_PREFIX)
    assert names.site_results_queue_name("prod", "site-a") == contracts.site_results_queue_name(
        "site-a"
    )
    assert (names.STATE_PARTITION_KEY, names.STATE_SORT_KEY) == (
        state.PARTITION_KEY,
        state.SORT_KEY,
    )


def test_the_stack_reads_the_same_stage_table_as_the_runtime() -> None:
    # The stack's untyped view of lambda_stages.toml and the runtime's typed one agree
    from imaging_ai.lambda_stages import LAMBDA_STAGES, STAGE_TABLE

    assert names.STAGE_TABLE == STAGE_TABLE
    # And every function the assets package is a stage of the table, and the other way round
    assert set(build_lambda_assets.FUNCTION_NAMES) == {stage.name for stage in LAMBDA_STAGES}
    for stage in LAMBDA_STAGES:
        entry = names.lambda_stage(stage.name)
        assert (entry["trigger"], entry["timeout_s"], entry["memory_mb"]) == (
            stage.trigger,
            stage.timeout_s,
            stage.memory_mb,
        )
