"""Preflight rows on NATS: reachable, auth on, stream and KV present, the kill switch round
trip on a test-only key, and the clock vs the NATS server's.

The round trip writes ``preflight.<node>`` (never ``kill``) in the ``qtd_control`` bucket
and reads it back by key, the path a kill takes to an agent that (re)starts, all with the
agent's own login: the one key of the bucket an agent login may write is its own test key
(:mod:`qtd.bus.logins`), so a trading server never holds another role's secret. The stored
message's server timestamp, against the midpoint of the local clock around the put, gives
the clock offset vs the NATS server (uncertainty: half the put's round trip). The key is
deleted afterwards (a delete marker: the bucket refuses the rollup a purge is, and keeps at
most its history of values per key).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from qtd.agent.config import AgentConfig
from qtd.bus import CONTROL_BUCKET, EVENTS_STREAM, BusConfig, connect
from qtd.errors import OperationalError, QtdError, TemporaryError
from qtd.preflight.checks import Check, first_line

KILL_ROW = "kill switch round trip"
CLOCK_ROW = "clock vs NATS server"


def _bus(cfg: BusConfig, name: str, timeout_s: float) -> BusConfig:
    return msgspec.structs.replace(cfg, name=name, initial_connect_timeout=timeout_s)


async def check_bus(cfg: AgentConfig, timeout_s: float) -> list[Check]:
    """NATS reachable (with this agent's credentials), stream present, KV bucket present."""
    names = ("NATS reachable", f"stream {EVENTS_STREAM}", f"KV bucket {CONTROL_BUCKET}")
    if cfg.bus is None:
        return [Check(n, "skipped", "no [bus] in the config (offline agent)") for n in names]
    try:
        nc = await connect(_bus(cfg.bus, f"qtd-preflight-{cfg.node}", timeout_s),
                           source=cfg.source)
    except QtdError as e:
        return [Check(names[0], "FAIL", first_line(e))] + [
            Check(n, "skipped", "NATS unreachable") for n in names[1:]]
    try:
        rows = [Check(names[0], "ok", nc.connected_url.netloc if nc.connected_url else "")]
        js = nc.jetstream(timeout=timeout_s)
        for name, stream in ((names[1], EVENTS_STREAM), (names[2], f"KV_{CONTROL_BUCKET}")):
            try:
                info = await js.stream_info(stream)
            except Exception as e:  # NotFound, timeout, permission denied: all FAIL
                rows.append(Check(name, "FAIL", f"{stream}: {type(e).__name__}: {first_line(e)}"))
            else:
                rows.append(Check(name, "ok", f"{info.state.messages} message(s)"))
        return rows
    finally:
        await nc.close()


async def check_auth_on(cfg: AgentConfig, timeout_s: float, *, reachable: bool) -> Check:
    """A client without credentials must be refused by the agent's NATS servers."""
    name = "NATS auth on"
    if cfg.bus is None:
        return Check(name, "skipped", "no [bus] in the config (offline agent)")
    if not reachable:
        return Check(name, "skipped", "NATS unreachable")
    anon = BusConfig(servers=cfg.bus.servers, name=f"qtd-preflight-anon-{cfg.node}",
                     prefix=cfg.bus.prefix, tls=cfg.bus.tls, initial_connect_timeout=timeout_s)
    try:
        nc = await connect(anon, source=cfg.source)
    except OperationalError:
        return Check(name, "ok", "a client without credentials is refused")
    except TemporaryError as e:
        return Check(name, "skipped", f"no answer to a client without credentials: "
                     f"{first_line(e)}")
    await nc.close()
    return Check(name, "FAIL", "a client WITHOUT credentials connected: auth is off; run "
                 "nats-server with etc/nats-server.conf (JWT logins, no no_auth_user)")


async def check_kill_round_trip(
    cfg: AgentConfig, timeout_s: float, *, reachable: bool, max_rtt_ms: float,
    max_offset_ms: float,
) -> list[Check]:
    """The kill switch round trip and the clock vs the NATS server (module docstring)."""
    if cfg.bus is None or not reachable:
        why = "no [bus] in the config (offline agent)" if cfg.bus is None else "NATS unreachable"
        return [Check(KILL_ROW, "skipped", why), Check(CLOCK_ROW, "skipped", why)]
    nc = await connect(_bus(cfg.bus, f"qtd-preflight-{cfg.node}", timeout_s),
                       source=cfg.source)
    try:
        return await _round_trip(cfg.node, nc, timeout_s, max_rtt_ms=max_rtt_ms,
                                 max_offset_ms=max_offset_ms)
    except QtdError as e:
        return [Check(KILL_ROW, "FAIL", f"control bus: {first_line(e)}"),
                Check(CLOCK_ROW, "skipped", "no round trip")]
    finally:
        await nc.close()


def _denied(nc: Client) -> bool:
    err = nc.last_error
    return err is not None and "permissions violation" in str(err).lower()


async def _round_trip(node: str, nc: Client, timeout_s: float, *, max_rtt_ms: float,
                      max_offset_ms: float) -> list[Check]:
    key = f"preflight.{node}"
    try:
        kv = await nc.jetstream(timeout=timeout_s).key_value(CONTROL_BUCKET)
    except (NotFoundError, nats.errors.Error, TimeoutError) as e:
        why = f"no {CONTROL_BUCKET} bucket: {type(e).__name__}"
        return [Check(KILL_ROW, "FAIL", why), Check(CLOCK_ROW, "skipped", why)]
    body = msgspec.json.encode({"test": True, "node": node, "ts_ns": time.time_ns()})
    wall0, t0 = time.time_ns(), time.perf_counter_ns()
    try:
        rev = await kv.put(key, body)
    except (nats.errors.Error, TimeoutError) as e:
        why = (f"this login may not write its test key {key}: issue the node's login with "
               "`qtd node add` (qtd/bus/logins.py)" if _denied(nc) else
               f"no ack within {timeout_s:g} s ({type(e).__name__})")
        return [Check(KILL_ROW, "FAIL", f"put {key}: {why}"),
                Check(CLOCK_ROW, "skipped", "no round trip")]
    t_ack, wall1 = time.perf_counter_ns(), time.time_ns()
    try:
        rtt_ms = await _read_back(kv, key, rev, t0, timeout_s)
        stored = await nc.jetstream(timeout=timeout_s).get_msg(f"KV_{CONTROL_BUCKET}", rev)
    except (nats.errors.Error, TimeoutError) as e:
        return [Check(KILL_ROW, "FAIL", f"read back {key}: {type(e).__name__}: {first_line(e)}"),
                Check(CLOCK_ROW, "skipped", "no round trip")]
    finally:
        await _delete(kv, key)
    kill = Check(KILL_ROW, "ok" if rtt_ms <= max_rtt_ms else "FAIL",
                 f"{rtt_ms:.1f} ms set -> read back on test key {key} (max {max_rtt_ms:g} ms)")
    return [kill, _clock_row(stored.time, wall0, wall1, (t_ack - t0) / 1e6, max_offset_ms)]


async def _read_back(kv_r: KeyValue, key: str, rev: int, t0: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            entry = await kv_r.get(key)
            if entry.revision is not None and entry.revision >= rev:
                return (time.perf_counter_ns() - t0) / 1e6
        except NotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"revision {rev} not readable within {timeout_s:g} s")
        await asyncio.sleep(0.001)


async def _delete(kv_w: KeyValue, key: str) -> None:
    # a leftover test key is harmless: it is never the kill key
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await kv_w.delete(key)


def _clock_row(server: datetime | None, wall0: int, wall1: int, put_ms: float,
               max_offset_ms: float) -> Check:
    if server is None:
        return Check(CLOCK_ROW, "skipped", "the server gave no timestamp")
    server_ns = int(server.replace(tzinfo=server.tzinfo or UTC).timestamp() * 1e6) * 1000
    offset_ms = ((wall0 + wall1) / 2 - server_ns) / 1e6
    err_ms = put_ms / 2 + 0.001  # server timestamp parsed to microseconds
    detail = (f"local clock {offset_ms:+.1f} ms vs the NATS server (+/- {err_ms:.1f} ms; "
              f"max {max_offset_ms:g} ms)")
    return Check(CLOCK_ROW, "FAIL" if abs(offset_ms) - err_ms > max_offset_ms else "ok", detail)
