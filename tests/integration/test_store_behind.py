"""A store that went backwards (issue 21, finding 4), on real processes: the shipped
``etc/nats-server.conf`` with auth on, real agent and leader processes, real SQLite files.

SIGKILL an agent, delete ``events.db-wal``, start it again: it refuses to trade
(GLOBAL HALTED, the reason naming both seqs, before any order), publishes nothing, says so in
its log and the leader pages P1; ``qtd recover`` writes the lost tail back from
JetStream; the agent then starts and its events reach the leader, each exactly once.
Prints the detection time (agent start to refusal).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from qtd.bus import EVENTS_STREAM
from qtd.events import OrderIntent, RiskBreach, Scope, TradingState, TradingStateChanged, decode
from tests.agent_rig import last_seq_of, seq_above, store_events, stream_events, wait_for
from tests.shipped import (
    agent_config,
    creds_for,
    leader_config,
    leader_web_url,
    log_match,
    processes,
    qtd_process,
    run_qtd,
    shipped_nats,
)

BOTS = {"flip": {"qty": 1.0}, "flop": {"qty": 2.0}}


def _alerts(web: str) -> Any:
    with urllib.request.urlopen(f"{web}/api/alerts", timeout=10) as r:
        return json.loads(r.read())


async def _node_stream(js: Any, node: str) -> list[tuple[str, Any]]:
    return [(mid, ev) for mid, ev in await stream_events(js) if ev.node == node]


async def _settled(js: Any) -> None:
    """Until the events stream's last sequence stays put for a second."""
    last = -1
    while True:
        now = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        if now == last:
            return
        last = now
        await asyncio.sleep(1.0)


def _kill_and_lose_wal(proc: Any, db: Path) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    wal = Path(f"{db}-wal")
    assert wal.exists() and wal.stat().st_size > 0, "nothing in the WAL to lose"
    wal.unlink()


async def test_store_that_went_backwards_refuses_to_trade_pages_and_recovers(
    tmp_path: Path,
) -> None:
    async with shipped_nats(tmp_path / "nats", ("node-a",)) as srv:
        lcfg = leader_config(tmp_path, srv.url)
        llog = tmp_path / "leader.log"
        cfg = agent_config(tmp_path / "a", "node-a", srv.url, BOTS)
        db = tmp_path / "a" / "state" / "events.db"
        log = tmp_path / "a.log"
        fleet_db = tmp_path / "leader" / "fleet.db"
        with processes() as procs:
            procs.append(qtd_process(["leader", "--config", str(lcfg)], llog))
            web = await leader_web_url(llog)
            procs.append(qtd_process(["agent", "--config", str(cfg)], log))
            await wait_for(lambda: seq_above(db, 300), 60)
            _kill_and_lose_wal(procs[1], db)
            lost_at = await last_seq_of(db)
            leader = await srv.connect("leader")
            ljs = leader.jetstream()
            # What the killed agent had already sent may still be reaching the stream.
            await _settled(ljs)
            stream_before = await _node_stream(ljs, "node-a")
            stream_last = stream_before[-1][1].seq
            assert stream_last > lost_at, (stream_last, lost_at)

            mark = log.stat().st_size
            t0 = time.perf_counter()
            procs[1] = qtd_process(["agent", "--config", str(cfg)], log)
            await log_match(log, rb"store behind the stream: GLOBAL HALTED", start=mark)
            detect_ms = (time.perf_counter() - t0) * 1000
            await log_match(log, rb"agent node-a ready", start=mark)
            await wait_for(lambda: any(a["key"] == "store:node-a" for a in _alerts(web)), 30)
            page = next(a for a in _alerts(web) if a["key"] == "store:node-a")
            assert page["severity"] == "P1"
            await asyncio.sleep(1.0)  # bots would have ordered by now
            procs[1].terminate()
            await asyncio.to_thread(procs[1].wait, 60)
            second = [e for e in await store_events(db) if e.seq > lost_at]
            halt = next(e for e in second if isinstance(e, TradingStateChanged)
                        and e.scope is Scope.GLOBAL and e.new is TradingState.HALTED)
            assert f"up to seq {stream_last}" in halt.reason
            breach = next(e for e in second if isinstance(e, RiskBreach)
                          and e.check == "store_behind")
            assert f"up to seq {stream_last}" in breach.message
            assert "ends at seq" in breach.message or "different event" in breach.message
            assert not [e for e in second if isinstance(e, OrderIntent)]
            assert await _node_stream(ljs, "node-a") == stream_before  # nothing published

            leader_creds = str(creds_for(srv.url, "leader"))
            ran = run_qtd(["recover", "--config", str(cfg), "--creds", leader_creds])
            assert ran.returncode == 0, ran.stderr
            assert f"JetStream last seq {stream_last}" in ran.stdout, ran.stdout
            again = run_qtd(["recover", "--config", str(cfg), "--creds", leader_creds])
            assert again.returncode == 2 and "nothing to recover" in again.stderr
            recovered = await store_events(db)
            by_seq = {e.seq: e for e in recovered}
            assert [by_seq[ev.seq] for _, ev in stream_before] == [e for _, e in stream_before]
            assert len(recovered) == stream_last + len(second)  # nothing dropped

            mark = log.stat().st_size
            procs[1] = qtd_process(["agent", "--config", str(cfg)], log)
            await log_match(log, rb"agent node-a ready", start=mark)

            def leader_has_all() -> bool:
                return _fleet_count(fleet_db, "node-a") >= len(recovered)

            await wait_for(leader_has_all, 60)
            assert b"store behind" not in log.read_bytes()[mark:]
            procs[1].terminate()
            await asyncio.to_thread(procs[1].wait, 60)
        final = await store_events(db)
        conn = sqlite3.connect(f"file:{fleet_db}?mode=ro", uri=True)
        rows = [decode(r[0]) for r in conn.execute(
            "SELECT payload FROM events WHERE node = 'node-a' ORDER BY seq")]
        conn.close()
        assert rows == final  # every event once, the same event under each id
        print(f"\nstore behind: detected {detect_ms:.0f} ms after the agent process started "
              f"(lost seqs {lost_at + 1}..{stream_last}, {stream_last - lost_at} events)")


def _fleet_count(db: Path, node: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events WHERE node = ?",
                                (node,)).fetchone()[0])
    finally:
        conn.close()



