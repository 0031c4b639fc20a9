"""The venue registry (:mod:`qtd.venues`): venues by name, an unknown broker name is a config
error listing the known ones, and a venue kept in the test tree (``tests.venues.toy``) runs a
bot in a real ``qtd agent`` process without any edit to ``qtd/``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from qtd.agent.config import load_agent_config
from qtd.errors import ConfigError
from qtd.events import Fill, OrderIntent, OrderSubmitted
from qtd.store import EventStore
from qtd.venues import get, known
from tests.agent_rig import wait_for
from tests.shipped import ROOT, agent_config, log_match, processes, qtd_process, shipped_nats


def _config(tmp_path: Path, accounts: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'node = "n"\n{textwrap.dedent(accounts)}')
    return path


def test_an_unknown_broker_names_the_field_the_value_and_the_known_venues(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[accounts.ib1]\nbroker = "ibkr"\n')
    with pytest.raises(ConfigError) as err:
        load_agent_config(cfg)
    e = err.value
    assert (e.field, e.value) == ("accounts.ib1.broker", "ibkr")
    assert "unknown venue; known: alpaca, binance, paper" in str(e) and str(cfg) in str(e)


def test_builtin_venues_are_found_by_name_without_importing_the_others() -> None:
    code = ("import sys; from qtd.venues import get; v = get('binance'); "
            "print(v.name, sorted(m for m in sys.modules if m.startswith('qtd.venues.')), "
            "'alpaca' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out[0] == "binance"
    assert "'qtd.venues.alpaca'" not in " ".join(out) and out[-1] == "False"  # no alpaca-py
    assert known()[:3] == ["alpaca", "binance", "paper"]


def test_venue_options_are_checked_against_the_venue_settings_struct(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '''
        venue_modules = ["tests.venues.toy"]
        [accounts.t1]
        broker = "toy"
        [accounts.t1.options]
        fee_bps = "ten"
    ''')
    with pytest.raises(ConfigError, match=r"accounts\.t1\.options\.fee_bps") as err:
        load_agent_config(cfg)
    assert err.value.value == "ten"
    missing = _config(tmp_path, 'venue_modules = ["tests.venues.nowhere"]\n')
    with pytest.raises(ConfigError, match=r"venue_modules\[0\]: cannot import"):
        load_agent_config(missing)
    assert get("toy").options.__name__ == "ToyOptions"


async def test_a_toy_venue_from_the_test_tree_trades_in_a_real_agent(tmp_path: Path) -> None:
    """`venue_modules` names the toy venue; its account's bot replays GOOG, its market orders
    pass the risk engine (intents stored before the send), the toy broker fills them with the
    fee from its own settings struct, and the agent's store holds the fills."""
    async with shipped_nats(tmp_path / "nats") as nats:
        fleet = tmp_path / "fleet"
        cfg = agent_config(fleet, "node-a", nats.url, {"b1": {}},
                           extra='venue_modules = ["tests.venues.toy"]',
                           market='speed = 8640000.0\n[market.bots.b1]\ndataset = "goog_1d"')
        bot = fleet / "bots" / "b1.toml"
        bot.write_text(bot.read_text().replace('venue = "paper"', 'venue = "toy"')
                       .replace('account = "paper-main"', 'account = "toy-main"'))
        (fleet / "risk.toml").write_text((fleet / "risk.toml").read_text().replace(
            "[accounts.paper-main]", "[accounts.toy-main]"))
        cfg.write_text(cfg.read_text().replace(
            "[accounts.paper-main]\n",
            '[accounts.toy-main]\nbroker = "toy"\n[accounts.toy-main.options]\nfee_bps = 10.0\n')
            # no leader made the stream: don't wait 5 s for NATS before the bots start
            .replace("bus_wait_s = 5.0", "bus_wait_s = 0.5"))
        log = tmp_path / "agent.log"
        with processes() as procs:
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await log_match(log, rb"account toy-main \(toy, paper\) connected")
            await log_match(log, rb"agent node-a ready")
            await _wait_for_fills(fleet / "state" / "events.db", 2)
    store = await EventStore.open(fleet / "state" / "events.db", readonly=True)
    try:
        events = [ev async for ev in store.replay()]
    finally:
        await store.close()
    intents = {ev.client_order_id: ev for ev in events if type(ev) is OrderIntent}
    fills = [ev for ev in events if type(ev) is Fill]
    assert len(fills) >= 2 and all(f.venue == "toy" and f.account == "toy-main" for f in fills)
    for f in fills:
        intent = intents[f.client_order_id]  # the risk engine's write-ahead record
        assert intent.seq < f.seq and intent.venue == "toy"
        assert f.commission == f.qty * f.price * Decimal("0.001")  # options.fee_bps = 10
    submitted = {ev.client_order_id for ev in events if type(ev) is OrderSubmitted}
    assert {f.client_order_id for f in fills} <= submitted


async def _wait_for_fills(db: Path, n: int) -> None:
    async def enough() -> bool:
        if not db.exists():
            return False
        store = await EventStore.open(db, readonly=True)
        try:
            return sum([type(ev) is Fill async for ev in store.replay()]) >= n
        finally:
            await store.close()

    await wait_for(enough, timeout_s=60)
