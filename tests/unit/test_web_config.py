"""The [web] table: the operator token comes from the environment or a file, never from the
config; a missing variable means read-only; a short or doubly-sourced token is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.errors import ConfigError
from qtd.leader.config import parse_leader_config
from qtd.web import resolve_operator_token

TOKEN = "abcdefghijklmnop-token"


def test_token_in_the_config_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match=r"web\.operator_token") as e:
        parse_leader_config({"web": {"enabled": True, "operator_token": TOKEN}}, "x.toml")
    assert TOKEN not in str(e.value)


def test_web_defaults_are_loopback_and_free_port() -> None:
    web = parse_leader_config({"web": {"enabled": True}}).web
    assert (web.host, web.port, web.operator_token_env) == ("127.0.0.1", 0, "")
    with pytest.raises(ConfigError, match="not both"):
        parse_leader_config({"web": {"operator_token_env": "A", "operator_token_file": "b"}})


def test_token_sources(tmp_path: Path) -> None:
    assert resolve_operator_token() is None
    assert resolve_operator_token("QTD_T", environ={}) is None  # unset: read-only
    assert resolve_operator_token("QTD_T", environ={"QTD_T": TOKEN}) == TOKEN
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    assert resolve_operator_token(file=str(f)) == TOKEN
    with pytest.raises(ConfigError, match="shorter") as e:
        resolve_operator_token("QTD_T", environ={"QTD_T": "short"})
    assert "short'" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_operator_token(file=str(tmp_path / "missing"))
