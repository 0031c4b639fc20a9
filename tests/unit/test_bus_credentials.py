"""``[bus]`` secrets from systemd's ``LoadCredential=`` (``$CREDENTIALS_DIRECTORY``): read at
connect, refused when missing or readable by group or others, never shown in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.bus import BusConfig, check_bus_config
from qtd.bus.config import resolve_credentials
from qtd.errors import ConfigError


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "credentials"
    d.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def _secret(creds: Path, name: str, text: str, mode: int = 0o400) -> Path:
    path = creds / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_password_is_read_from_the_credentials_directory(creds: Path) -> None:
    _secret(creds, "nats-agent-password", "s3cret-pw\n")
    cfg = check_bus_config(BusConfig(user="agent", password_credential="nats-agent-password"))
    resolved = resolve_credentials(cfg)
    assert resolved.password == "s3cret-pw" and resolved.password_credential is None
    assert "s3cret-pw" not in repr(resolved)


def test_token_and_creds_file_credentials(creds: Path) -> None:
    _secret(creds, "nats-token", "tok\n")
    assert resolve_credentials(BusConfig(token_credential="nats-token")).token == "tok"
    path = _secret(creds, "nats.creds", "-----BEGIN NATS USER JWT-----\n", 0o600)
    assert resolve_credentials(BusConfig(creds_credential="nats.creds")).creds_file == str(path)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_a_secrets_file_readable_by_others_is_refused(creds: Path, mode: int) -> None:
    _secret(creds, "nats-agent-password", "pw", mode)
    with pytest.raises(ConfigError) as e:
        check_bus_config(BusConfig(user="agent", password_credential="nats-agent-password"),
                         "agent.toml")
    assert e.value.field == "bus.password_credential"
    assert f"mode {mode:04o}: refused" in str(e.value) and "pw'" not in str(e.value)


def test_a_world_readable_seed_file_is_refused(tmp_path: Path) -> None:
    seed = tmp_path / "agent.nk"
    seed.write_text("SUAxxx")
    seed.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: refused") as e:
        check_bus_config(BusConfig(nkey_seed_file=str(seed)))
    assert e.value.field == "bus.nkey_seed_file"


def test_missing_directory_missing_file_bad_name_and_doubled_auth(
    creds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="must exist"):
        check_bus_config(BusConfig(user="a", password_credential="absent"))
    with pytest.raises(ConfigError, match="no '/'"):
        check_bus_config(BusConfig(user="a", password_credential="../etc/shadow"))
    _secret(creds, "pw", "x")
    with pytest.raises(ConfigError, match="not both"):
        check_bus_config(BusConfig(user="a", password="x", password_credential="pw"))
    with pytest.raises(ConfigError, match="at most one"):
        check_bus_config(BusConfig(token="t", user="a", password_credential="pw"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set") as e:
        check_bus_config(BusConfig(user="a", password_credential="pw"))
    assert e.value.field == "bus.password_credential"


def test_an_agent_config_with_a_readable_secret_does_not_load(
    tmp_path: Path, creds: Path
) -> None:
    _secret(creds, "nats-agent-password", "pw", 0o644)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('node = "n1"\nstate_dir = "s"\nbots = []\nrisk = "risk.toml"\n[bus]\n'
                   'user = "agent"\npassword_credential = "nats-agent-password"\n')
    with pytest.raises(ConfigError, match="refused"):
        load_agent_config(cfg)
    (creds / "nats-agent-password").chmod(0o400)
    loaded = load_agent_config(cfg)
    assert loaded.bus is not None and loaded.bus.password_credential == "nats-agent-password"
