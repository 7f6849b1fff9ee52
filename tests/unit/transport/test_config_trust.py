"""Config trust checks: no PHI or token over plain http off loopback, no key others can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_forwarder.cli import main
from edge_forwarder.config import load_config
from edge_forwarder.secret_files import check_all_private
from edge_forwarder.transport.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "edge_forwarder" / "example-config.toml"
SECRET = "ab" * 32


def _config(tmp: Path, *, mode: int = 0o600, **replace: str) -> Path:
    """The example config with its secrets in `tmp` (written with `mode`) and edits applied."""
    for name in ("site-secret.hex", "crosswalk-key.hex"):
        (tmp / name).write_text(SECRET)
        (tmp / name).chmod(mode)
    text = EXAMPLE.read_text().replace("/etc/edge-forwarder/", "")
    text = text.replace('state_dir = "/var/lib/edge-forwarder"', 'state_dir = "state"')
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp / "forwarder.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.hospital.example/fhir",  # PHI in clear across the hospital network
        "http://10.1.2.3/fhir",
        "http://127.0.0.1.attacker.example/fhir",  # looks like loopback, is not
        "ftp://ehr.hospital.example/fhir",
        "https:///fhir",  # no host at all
    ],
)
def test_ehr_url_off_loopback_must_be_https(tmp_path: Path, url: str) -> None:
    # Given an EHR base URL that would send re-identified reports in clear (or nowhere)
    path = _config(tmp_path, **{"https://ehr.hospital.example/fhir": url})
    # When the config is loaded, Then it is refused, naming the field
    with pytest.raises(ConfigError, match=r"ehr\.base_url: Value error, must"):
        load_config(path)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/fhir", "http://localhost/fhir", "http://[::1]:9/fhir"]
)
def test_plain_http_is_accepted_on_loopback(tmp_path: Path, url: str) -> None:
    # Given an EHR on this very machine (a local proxy or the demo): nothing crosses a wire
    config = load_config(_config(tmp_path, **{"https://ehr.hospital.example/fhir": url}))
    assert config.ehr.base_url == url


def test_token_url_must_be_https(tmp_path: Path) -> None:
    # Given an OAuth2 token endpoint over plain http (the client secret would travel in clear)
    (tmp_path / "smart-key.pem").write_text("unused")
    (tmp_path / "smart-key.pem").chmod(0o600)
    oauth = (
        '[ehr.oauth2]\ntoken_url = "http://ehr.hospital.example/oauth2/token"\n'
        'client_id = "edge"\nprivate_key_file = "smart-key.pem"\n\n[observability]'
    )
    path = _config(tmp_path, **{"[observability]": oauth})
    with pytest.raises(ConfigError, match=r"ehr\.oauth2\.token_url: Value error, must use https"):
        load_config(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_secret_readable_by_others_refuses_start_naming_file_not_content(
    tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a crosswalk key another local account may read
    path = _config(tmp_path, mode=mode)
    config = load_config(path)
    # When the forwarder checks its secrets at start
    with pytest.raises(ConfigError) as caught:
        check_all_private(config.secret_files())
    # Then it refuses, naming the file and its mode, never quoting the key
    message = str(caught.value)
    assert "site-secret.hex" in message and f"{mode:04o}" in message
    assert SECRET not in message and SECRET[:8] not in message
    # And `edge-forwarder run` exits with a config error before it listens or uploads
    assert main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err
    assert "accessible by group or others" in err and SECRET[:8] not in err


def test_every_secret_file_kind_is_checked(tmp_path: Path) -> None:
    # Given owner-only base secrets, a loose SMART private key and a loose PACS TLS key
    for name in ("smart-key.pem", "pacs-client.key"):
        (tmp_path / name).write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
        (tmp_path / name).chmod(0o644)
    extra = (
        '[pacs.tls]\nca_file = "ca.pem"\ncert_file = "pacs-client.crt"\n'
        'key_file = "pacs-client.key"\n\n[ehr]'
    )
    oauth = (
        '[ehr.oauth2]\ntoken_url = "https://ehr.hospital.example/oauth2/token"\n'
        'client_id = "edge"\nprivate_key_file = "smart-key.pem"\n\n[observability]'
    )
    config = load_config(_config(tmp_path, **{"[ehr]": extra, "[observability]": oauth}))
    secret_names = {p.name for p in config.secret_files()}
    assert {"smart-key.pem", "pacs-client.key", "site-secret.hex"} <= secret_names
    with pytest.raises(ConfigError, match=r"smart-key\.pem|pacs-client\.key") as caught:
        check_all_private(config.secret_files())
    assert "c2VjcmV0" not in str(caught.value)


def test_pacs_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    extra = '[pacs.tls]\nca_file = "ca.pem"\ncert_file = "pacs-client.crt"\n\n[ehr]'
    with pytest.raises(ConfigError, match=r"pacs\.tls: Value error, give both"):
        load_config(_config(tmp_path, **{"[ehr]": extra}))


def test_secret_that_is_not_hex_is_refused_without_echo(tmp_path: Path) -> None:
    path = _config(tmp_path)
    (tmp_path / "crosswalk-key.hex").write_text("correct horse battery staple")
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.crosswalk.key.read()
    assert "horse" not in str(caught.value)
