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


def test_secret_needs_exactly_one_source(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        EXAMPLE.read_text().replace(
            'site_secret = { file = "/etc/edge-forwarder/site-secret.hex" }',
            'site_secret = { file = "a", env = "B" }',
        )
    )
    with pytest.raises(ConfigError, match=r"deid\.site_secret: Value error, give exactly one"):
        load_config(path)


def test_not_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("site = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
