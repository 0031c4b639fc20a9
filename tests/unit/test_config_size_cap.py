"""Every config file qtd reads is capped in size (issue 21, finding 12): a file over the
limit is refused before it is parsed, with an error naming the file, its size and the limit;
a kill file over the limit is a GLOBAL kill (unreadable kill file: reduce risk)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qtd.admit.config import load_bot_config
from qtd.agent.config import load_agent_config
from qtd.errors import ConfigError
from qtd.events import Scope
from qtd.files import MAX_CONFIG_BYTES
from qtd.leader.config import load_leader_config
from qtd.risk.kill_file import KillFileWatcher
from qtd.risk.load import load_risk_config
from qtd.routes import load_routes

ETC = Path(__file__).resolve().parents[2] / "etc"


def padded(src: Path, dst: Path) -> Path:
    """``src`` followed by TOML comments up to one byte over the cap: still valid TOML."""
    text = src.read_text()
    pad = MAX_CONFIG_BYTES + 1 - len(text.encode())
    dst.write_text(text + "#" * (pad - 1) + "\n")
    assert dst.stat().st_size == MAX_CONFIG_BYTES + 1
    return dst


def _raises(load: Callable[[Path], Any]) -> Callable[[Path], str]:
    def run(p: Path) -> str:
        with pytest.raises(ConfigError) as exc:
            load(p)
        return str(exc.value)
    return run


def _problems(load: Callable[[Path], Any]) -> Callable[[Path], str]:
    def run(p: Path) -> str:
        cfg, problems = load(p)
        assert cfg is None
        return "; ".join(str(x) for x in problems)
    return run


LOADERS = {
    "agent.toml": _raises(load_agent_config),
    "leader.toml": _raises(load_leader_config),
    "risk.toml": _raises(load_risk_config),
    "routes.toml": _problems(load_routes),
    "bots/momo-goog.toml": _problems(load_bot_config),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_config_over_the_cap_is_refused_naming_file_size_and_limit(
        tmp_path: Path, name: str) -> None:
    p = padded(ETC / name, tmp_path / Path(name).name)
    text = LOADERS[name](p)
    assert str(p) in text
    assert f"{MAX_CONFIG_BYTES + 1:,} bytes" in text and f"{MAX_CONFIG_BYTES:,}" in text
    assert len(text) < 1000


def test_a_kill_file_over_the_cap_is_a_global_kill(tmp_path: Path) -> None:
    path = tmp_path / "qtd.kill"
    reason = "x" * MAX_CONFIG_BYTES
    path.write_text(f'{{"scope": "strategy", "key": "b1", "reason": "{reason}"}}')
    cmd = KillFileWatcher(lambda c: None, path).poll()  # type: ignore[arg-type,return-value]
    assert cmd is not None and cmd.scope is Scope.GLOBAL
    assert "unreadable kill file" in cmd.reason and "limit" in cmd.reason
    assert len(cmd.reason) < 1000
