"""Config file validation: errors name the field and the problem, never the secret value."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_forwarder.config import load_config
from edge_forwarder.transport.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "edge_forwarder" / "example-config.toml"


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.site == "site-a"
    assert config.results_queue_name == "imaging-ai-results-site-a"


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("port = 104", "port = 70000", "pacs.port: Input should be less than or equal to 65535"),
        ('site = "site-a"', 'site = "Site A"', "site: Value error, site must be"),
        ("part_size_mib = 8", "part_size_mib = 1", "upload.part_size_mib"),
        ('ae_title = "PACS"', 'ae_title = "PACS"\nae_titel = "X"', "pacs.ae_titel: Extra inputs"),
        ("kms_key_arn =", "kms_key =", "aws.kms_key_arn: Field required"),
        ("port = 11112", 'port = "eleven"', "intake.port: Input should be a valid integer"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    # Given the example config with one mistake
    text = EXAMPLE.read_text()
    assert replace in text
    path = tmp_path / "c.toml"
    path.write_text(text.replace(replace, by, 1))
    # When it is loaded, Then the error names the field and the problem
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)


def _example_with(tmp_path: Path, line: str, replacement: str) -> Path:
    """The example config with one line replaced, written to a file."""
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text().replace(line, replacement))
    return path


@pytest.mark.parametrize(
    ("line", "replacement", "reason"),
    [
        pytest.param(
            'site_secret = { file = "/etc/edge-forwarder/site-secret.hex" }',
            'site_secret = { file = "a", env = "B" }',
            r"deid\.site_secret: Value error, give exactly one",
            id="a secret needs exactly one source",
        ),
        pytest.param(
            'bucket = "imaging-ai-data"',
            'bucket = "imaging-ai-data"\nmodel_name = "lung-nodule-demo"',
            r"aws: Value error, aws.model_name is gone",
            id="the retired default model setting says what replaced it",
        ),
    ],
)
def test_a_wrong_setting_is_refused_with_its_reason(
    tmp_path: Path, line: str, replacement: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_config(_example_with(tmp_path, line, replacement))


def test_not_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("site = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def _uncommented(block_start: str) -> str:
    """The example with the commented block that starts at `block_start` switched on."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(f"# {block_start}")
    for number in range(start, len(lines)):
        if not lines[number].startswith("# "):
            break
        lines[number] = lines[number][2:]
    return "\n".join(lines) + "\n"


def test_hl7_is_off_and_the_pacs_gets_sr_and_seg_by_default() -> None:
    config = load_config(EXAMPLE)
    assert config.hl7 is None and config.extra_pacs == []
    assert [str(o) for o in config.pacs.objects] == ["sr", "seg"]


def test_the_examples_hl7_and_extra_pacs_blocks_are_valid_when_switched_on(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_uncommented("[hl7]"))
    hl7 = load_config(path).hl7
    assert hl7 is not None and (hl7.port, hl7.receiving_application) == (2575, "RIS")
    path.write_text(_uncommented("[[extra_pacs]]"))
    (extra,) = load_config(path).extra_pacs
    assert extra.name == "reading-room" and [str(o) for o in extra.objects] == ["key_images", "pdf"]


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ('["sr", "xray"]', "pacs.objects.1: Input should be 'sr', 'seg', 'key_images' or 'pdf'"),
        ('["sr", "sr"]', "pacs.objects: Value error, list each result object once"),
        ("[]", "pacs.objects: Value error, list each result object once"),
    ],
)
def test_a_destinations_objects_are_checked(tmp_path: Path, objects: str, expected: str) -> None:
    path = _example_with(tmp_path, 'objects = ["sr", "seg"]', f"objects = {objects}")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)


def test_extra_pacs_names_are_unique(tmp_path: Path) -> None:
    block = _uncommented("[[extra_pacs]]")
    start = block.index("[[extra_pacs]]")
    end = block.index("[ehr]")
    path = tmp_path / "c.toml"
    path.write_text(block[:end] + block[start:end] + block[end:])
    with pytest.raises(ConfigError, match="extra_pacs: Value error, each extra PACS needs"):
        load_config(path)


def test_a_model_is_live_unless_the_site_puts_it_in_shadow_mode(tmp_path: Path) -> None:
    # Given the example config, and the same with its shadow-mode block switched on
    assert load_config(EXAMPLE).shadow_models == frozenset()
    path = tmp_path / "c.toml"
    path.write_text(_uncommented("[models.lung-nodule-demo]"))
    # Then the switched-on model is in shadow mode; promoting it back is `mode = "live"`
    assert load_config(path).shadow_models == {"lung-nodule-demo"}
    path.write_text(_uncommented("[models.lung-nodule-demo]").replace('"shadow"', '"live"'))
    assert load_config(path).shadow_models == frozenset()


def test_a_misspelt_shadow_model_is_refused_rather_than_left_live(tmp_path: Path) -> None:
    # Given a [models] entry for a model no routing rule sends to (a typo)
    path = tmp_path / "c.toml"
    path.write_text(
        _uncommented("[models.lung-nodule-demo]").replace(
            "[models.lung-nodule-demo]", "[models.lung-nodule-dmeo]"
        )
    )
    # When it is loaded, Then it is an error naming the model, not a silently live model
    with pytest.raises(ConfigError, match=r"\[models\] names models no routing rule.*dmeo"):
        load_config(path)
