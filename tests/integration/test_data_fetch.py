"""``qtd data fetch``: the real python-binance and alpaca-py clients against the venue stubs.

Pages, a 429 with Retry-After, a 5xx, a truncated answer, a gap, a bar breaking the OHLC
rules, an interrupted fetch (``kill -9`` of the CLI process) resumed without duplicates, an
incremental update asking only for the new range (the stub's request log), and requests
that never exceed the venue's weight limit (429s caused by us: 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qtd.brokers.retry import RetryPolicy
from qtd.catalog import Catalog, SetKey
from qtd.catalog.fetch import Fetcher, FetchResult, Quiet, covered
from qtd.feeds.bars import ns_to_iso, parse_ts
from qtd.feeds.validate import RULE_HIGH
from qtd.venues import HistoryContext, get
from tests.stubs import Fault, StubServer
from tests.stubs.alpaca_stub import AlpacaStub
from tests.stubs.binance_stub import BinanceStub
from tests.stubs.history import INTERVAL_NS, Series, WeightWindow

HOUR = INTERVAL_NS["1h"]
JAN = parse_ts("2024-01-01")
ETH = SetKey("binance", "ETHUSDT", "1h")
FAST = RetryPolicy(attempts=4, initial_s=0.05, max_backoff_s=0.2)


@pytest.fixture
async def binance() -> AsyncIterator[tuple[BinanceStub, StubServer]]:
    stub = BinanceStub()
    server = await StubServer(stub.app).start()
    yield stub, server
    await server.stop()


@pytest.fixture
async def alpaca() -> AsyncIterator[tuple[AlpacaStub, StubServer]]:
    stub = AlpacaStub()
    server = await StubServer(stub.app).start()
    yield stub, server
    await server.stop()


async def fetch(venue: str, url: str, catalog: Catalog, key: SetKey, start: int, end: int,
                **ctx: object) -> FetchResult:
    source = get(venue).history(HistoryContext(rest_url=url, policy=FAST, **ctx))  # type: ignore[misc, arg-type]
    try:
        return await Fetcher(catalog, source, listener=Quiet()).fetch(key, start, end)
    finally:
        await source.close()


def starts(stub: BinanceStub) -> list[int]:
    return [int(p["startTime"]) * 1_000_000 for r, p, _ in stub.log.entries
            if r == "GET /api/v3/klines"]


def assert_exact(catalog: Catalog, key: SetKey, series: Series, lo: int, hi: int) -> None:
    bars = catalog.read(key)
    ts = [b.ts_ns for b in bars]
    assert ts == sorted(set(ts)), "duplicates or disorder"
    assert ts == [t for t, _ in series.between(lo, hi - 1)]
    for bar in bars[:3] + bars[-3:]:
        want = series.bar(bar.ts_ns)
        assert want is not None and str(bar.high) == want["h"] and str(bar.close) == want["c"]


async def test_binance_pages_by_start_time_and_a_second_run_asks_nothing(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    end = JAN + 2500 * HOUR
    stub.klines[("ETHUSDT", "1h")] = series = Series("1h", JAN, end + 100 * HOUR)
    catalog = Catalog(tmp_path)
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN, end)
    assert (result.pages, result.received, result.added, result.error) == (3, 2500, 2500, "")
    assert starts(stub) == [JAN, JAN + 1000 * HOUR, JAN + 2000 * HOUR]
    assert_exact(catalog, ETH, series, JAN, end)
    assert catalog.provenance(ETH)[0].endpoint == "GET /api/v3/klines"
    again = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN, end)
    assert (again.asked, again.pages, len(starts(stub))) == ([], 0, 3)


async def test_binance_429_is_retried_after_its_retry_after(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    stub.klines[("ETHUSDT", "1h")] = Series("1h", JAN, JAN + 500 * HOUR)
    stub.faults.add("GET /api/v3/klines", Fault(429, {"code": -1003, "msg": "too much"},
                                                headers={"Retry-After": "1"}))
    t0 = time.monotonic()
    result = await fetch("binance", server.http_url + "/api", Catalog(tmp_path), ETH, JAN,
                         JAN + 200 * HOUR)
    assert (result.added, result.error) == (200, "")
    assert starts(stub) == [JAN, JAN]
    assert time.monotonic() - t0 >= 1.0


async def test_binance_5xx_and_truncated_answers_are_retried(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    stub.klines[("ETHUSDT", "1h")] = series = Series("1h", JAN, JAN + 1500 * HOUR)
    stub.faults.add("GET /api/v3/klines", Fault(503, {"code": -1001, "msg": "Internal"}),
                    Fault(raw=b'[[1704067200000,"99.25","101.25"'))
    catalog = Catalog(tmp_path)
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                         JAN + 1200 * HOUR)
    assert (result.added, result.error) == (1200, "")
    assert starts(stub) == [JAN, JAN, JAN, JAN + 1000 * HOUR]
    assert_exact(catalog, ETH, series, JAN, JAN + 1200 * HOUR)


async def test_a_request_that_times_out_is_retried(
        binance: tuple[BinanceStub, StubServer], alpaca: tuple[AlpacaStub, StubServer],
        tmp_path: Path) -> None:
    (bstub, bserver), (astub, aserver) = binance, alpaca
    bstub.klines[("ETHUSDT", "1h")] = Series("1h", JAN, JAN + 300 * HOUR)
    astub.bars[("MSFT", "1h")] = Series("1h", JAN, JAN + 300 * HOUR)
    bstub.faults.add("GET /api/v3/klines", Fault(delay_s=1.5))
    astub.faults.add("GET /v2/stocks/bars", Fault(delay_s=1.5))
    b = await fetch("binance", bserver.http_url + "/api", Catalog(tmp_path), ETH, JAN,
                    JAN + 100 * HOUR, timeout_s=0.3)
    a = await fetch("alpaca", aserver.http_url, Catalog(tmp_path), SetKey("alpaca", "MSFT", "1h"),
                    JAN, JAN + 100 * HOUR, timeout_s=0.3, credentials=("key", "secret"))
    assert (b.added, b.error, a.added, a.error) == (100, "", 100, "")
    assert len(starts(bstub)) == 2 and len(astub.log.entries) == 2


async def test_binance_persistent_5xx_stops_the_fetch_and_keeps_what_came_before(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    stub.klines[("ETHUSDT", "1h")] = Series("1h", JAN, JAN + 3000 * HOUR)
    stub.faults.add("GET /api/v3/klines", Fault(), *[Fault(502)] * 4)
    catalog = Catalog(tmp_path)
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                         JAN + 2500 * HOUR)
    assert "VenueUnavailable" in result.error and result.added == 1000
    assert covered(catalog, ETH) == [(JAN, JAN + 1000 * HOUR)]
    again = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                        JAN + 2500 * HOUR)
    assert (again.asked, again.added) == ([(JAN + 1000 * HOUR, JAN + 2500 * HOUR)], 1500)


async def test_a_full_page_that_does_not_advance_stops_the_fetch(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    stub.klines[("ETHUSDT", "1h")] = Series("1h", JAN, JAN + 2000 * HOUR)
    old = [[(JAN - (2000 - i) * HOUR) // 1_000_000, "1", "2", "0.5", "1.5", "3"]
           for i in range(1000)]  # a full page, all before startTime
    stub.faults.add("GET /api/v3/klines", Fault(body=old))
    result = await fetch("binance", server.http_url + "/api", Catalog(tmp_path), ETH, JAN,
                         JAN + 1500 * HOUR)
    assert "does not advance past startTime 2024-01-01T00:00:00Z" in result.error
    assert (len(starts(stub)), result.pages, result.added) == (1, 0, 0)


async def test_a_gap_at_the_venue_is_paged_across_and_asked_for_once(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    end = JAN + 3000 * HOUR
    series = Series("1h", JAN, end)
    series.gaps = [(JAN + 500 * HOUR, JAN + 1700 * HOUR)]  # longer than a page
    stub.klines[("ETHUSDT", "1h")] = series
    catalog = Catalog(tmp_path)
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN, end)
    assert (result.received, result.gaps, result.error) == (1800, 1, "")
    assert (result.longest_gap_ns, result.longest_gap_at) == (1200 * HOUR,
                                                             ns_to_iso(JAN + 500 * HOUR))
    assert_exact(catalog, ETH, series, JAN, end)
    again = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN, end)
    assert again.asked == []


async def test_a_bar_breaking_ohlc_rules_is_dropped_named_by_time_and_asked_again(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    series = Series("1h", JAN, JAN + 500 * HOUR)
    bad_ts = JAN + 77 * HOUR
    series.bad[bad_ts] = {"h": "100.5"}  # below the close 127.25
    stub.klines[("ETHUSDT", "1h")] = series
    catalog = Catalog(tmp_path)
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                         JAN + 200 * HOUR)
    assert [(b.time, b.field, b.value, b.rule) for b in result.bad] == [
        ("2024-01-04T05:00:00Z", "high", "100.5", RULE_HIGH)]
    assert result.bad[0].action.startswith("dropped") and result.gaps == 0
    assert "2024-01-04T05:00:00Z: high='100.5'" in result.bad[0].describe()
    assert bad_ts not in {b.ts_ns for b in catalog.read(ETH)}
    del series.bad[bad_ts]  # the venue corrected it
    again = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                        JAN + 200 * HOUR)
    assert again.asked == [(bad_ts, bad_ts + HOUR)] and again.added == 1
    assert_exact(catalog, ETH, series, JAN, JAN + 200 * HOUR)


async def test_an_incremental_update_asks_only_for_the_new_range(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    stub.klines[("ETHUSDT", "1h")] = series = Series("1h", JAN, JAN + 5000 * HOUR)
    catalog = Catalog(tmp_path)
    await fetch("binance", server.http_url + "/api", catalog, ETH, JAN, JAN + 1500 * HOUR)
    before = len(starts(stub))
    result = await fetch("binance", server.http_url + "/api", catalog, ETH, JAN,
                         JAN + 1800 * HOUR)
    new = starts(stub)[before:]
    assert new == [JAN + 1500 * HOUR] and result.added == 300
    assert result.asked == [(JAN + 1500 * HOUR, JAN + 1800 * HOUR)]
    assert_exact(catalog, ETH, series, JAN, JAN + 1800 * HOUR)


async def test_requests_never_exceed_the_weight_limit(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    key = SetKey("binance", "ETHUSDT", "1m")
    stub.klines[("ETHUSDT", "1m")] = Series("1m", JAN, JAN + 20_000 * 60 * 10**9)
    stub.weight = WeightWindow(1.0, 8)  # the venue: 8 weight a second = 4 klines requests
    t0 = time.monotonic()
    result = await fetch("binance", server.http_url + "/api", Catalog(tmp_path), key, JAN,
                         JAN + 9_500 * 60 * 10**9, limits=[("REQUEST_WEIGHT", 1.0, 8)])
    assert (result.pages, result.added, result.error) == (10, 9_500, "")
    assert stub.weight.over == 0 and stub.weight.peak <= 8
    assert time.monotonic() - t0 >= 1.5  # 10 requests at 4 a second
    # Without the gate's limit the same fetch goes over (the stub's check can fail):
    stub.weight = WeightWindow(1.0, 8)
    loose = await fetch("binance", server.http_url + "/api", Catalog(tmp_path / "b"), key, JAN,
                        JAN + 9_500 * 60 * 10**9, limits=[("REQUEST_WEIGHT", 1.0, 1000)])
    assert loose.added == 9_500 and stub.weight.over > 0


def _cli(url: str, catalog: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "qtd.cli", "data", "fetch", "binance", "ETHUSDT",
            "--interval", "1h", "--rest-url", url, "--catalog", str(catalog), *args]


async def test_a_killed_fetch_resumes_without_duplicates(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    end = parse_ts("2024-06-01")
    stub.klines[("ETHUSDT", "1h")] = series = Series("1h", JAN, end)
    stub.faults.add("GET /api/v3/klines", *[Fault(delay_s=0.6)] * 10)
    url, root = server.http_url + "/api", tmp_path / "cat"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(_cli(url, root, "--start", "2024-01-01", "--end", "2024-06-01"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(root)
    deadline = time.monotonic() + 60
    while not covered(catalog, ETH) or not (catalog.set_dir(ETH) / "fetched.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = covered(catalog, ETH)
    assert done[0][0] == JAN and done[-1][1] < end
    first_run = len(starts(stub))
    stub.faults = type(stub.faults)()
    out = await asyncio.to_thread(subprocess.run, _cli(url, root, "--end", "2024-06-01"),
                                  env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert starts(stub)[first_run] == done[-1][1]  # nothing already stored is asked again
    assert "bars added" in out.stdout and "%" in out.stdout
    assert_exact(catalog, ETH, series, JAN, end)
    assert covered(catalog, ETH) == [(JAN, end)]


async def test_ctrl_c_stores_the_bars_received_before_it(
        binance: tuple[BinanceStub, StubServer], tmp_path: Path) -> None:
    stub, server = binance
    key, minute = SetKey("binance", "ETHUSDT", "1m"), INTERVAL_NS["1m"]
    stub.klines[("ETHUSDT", "1m")] = series = Series("1m", JAN, JAN + 30_000 * minute)
    stub.faults.add("GET /api/v3/klines", *[Fault(delay_s=0.1)] * 30)
    root = tmp_path / "cat"
    cmd = [*_cli(server.http_url + "/api", root, "--start", "2024-01-01", "--end",
                 "2024-01-20")]
    cmd[cmd.index("1h")] = "1m"
    proc = await asyncio.create_subprocess_exec(
        *cmd, env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    while len(starts(stub)) < 5:
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 130
    catalog = Catalog(root)
    [(lo, hi)] = covered(catalog, key)  # one month: nothing was written before the Ctrl-C
    assert lo == JAN and hi >= JAN + 4000 * minute
    assert_exact(catalog, key, series, JAN, hi)


def test_cli_names_the_venues_with_history_and_asks_for_a_start(tmp_path: Path) -> None:
    from qtd.cli import main

    assert main(["data", "fetch", "paper", "X", "--interval", "1h", "--catalog",
                 str(tmp_path), "--start", "2024-01-01"]) == 78
    assert main(["data", "fetch", "binance", "ETHUSDT", "--interval", "1h", "--catalog",
                 str(tmp_path)]) == 78


async def test_alpaca_stock_bars_follow_next_page_token(
        alpaca: tuple[AlpacaStub, StubServer], tmp_path: Path) -> None:
    stub, server = alpaca
    key = SetKey("alpaca", "MSFT", "1h")
    stub.bars[("MSFT", "1h")] = series = Series("1h", JAN, JAN + 3000 * HOUR)
    stub.page_max = 1000
    catalog = Catalog(tmp_path)
    result = await fetch("alpaca", server.http_url, catalog, key, JAN, JAN + 2500 * HOUR,
                         credentials=("key", "secret"))
    assert (result.pages, result.added, result.error) == (3, 2500, "")
    params = [p for _, p, _ in stub.log.entries]
    assert [p.get("page_token") for p in params] == [None, ns_to_iso(JAN + 1000 * HOUR)
                                                     .replace("Z", "+00:00"),
                                                     ns_to_iso(JAN + 2000 * HOUR)
                                                     .replace("Z", "+00:00")]
    assert {p["feed"] for p in params} == {"iex"}
    assert_exact(catalog, key, series, JAN, JAN + 2500 * HOUR)
    assert catalog.provenance(key)[0].endpoint == "GET /v2/stocks/bars"


async def test_cli_reads_alpaca_keys_as_the_agent_does(
        alpaca: tuple[AlpacaStub, StubServer], tmp_path: Path) -> None:
    stub, server = alpaca
    stub.bars[("MSFT", "1h")] = series = Series("1h", JAN, JAN + 300 * HOUR)
    creds = tmp_path / "alpaca.env"
    creds.write_text("# keys\nexport APCA_API_KEY_ID=key\nAPCA_API_SECRET_KEY='secret'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "CREDENTIALS_"))}
    env["PYTHONPATH"] = os.getcwd()
    cmd = [sys.executable, "-m", "qtd.cli", "data", "fetch", "alpaca", "MSFT", "--interval",
           "1h", "--start", "2024-01-01", "--end", ns_to_iso(JAN + 200 * HOUR), "--rest-url",
           server.http_url, "--catalog", str(tmp_path / "cat"), "--credentials-file",
           str(creds)]
    creds.chmod(0o644)
    out = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 78 and "mode 0644" in out.stderr + out.stdout
    creds.chmod(0o600)
    out = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "alpaca:MSFT:1h: 200 bars added" in out.stdout
    key = SetKey("alpaca", "MSFT", "1h")
    assert_exact(Catalog(tmp_path / "cat"), key, series, JAN, JAN + 200 * HOUR)
    agent = tmp_path / "agent.toml"  # an agent account: its keys and its data_rest_url
    agent.write_text(f'node = "n1"\n[accounts.al]\nbroker = "alpaca"\n'
                     f'credentials_env = ["AL_KEY", "AL_SECRET"]\n'
                     f'data_rest_url = "{server.http_url}"\n')
    cmd = [*cmd[:13], "--catalog", str(tmp_path / "cat2"), "--config", str(agent),
           "--account", "al"]
    env.update(AL_KEY="key", AL_SECRET="secret")
    out = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_exact(Catalog(tmp_path / "cat2"), key, series, JAN, JAN + 200 * HOUR)


async def test_alpaca_429_5xx_and_bad_keys(
        alpaca: tuple[AlpacaStub, StubServer], tmp_path: Path) -> None:
    stub, server = alpaca
    key = SetKey("alpaca", "MSFT", "1h")
    stub.bars[("MSFT", "1h")] = Series("1h", JAN, JAN + 300 * HOUR)
    stub.faults.add("GET /v2/stocks/bars", Fault(429, {"message": "slow down"},
                                                 headers={"Retry-After": "1"}),
                    Fault(500, {"message": "internal"}), Fault(raw=b'{"bars": {"MSFT": [{'))
    t0 = time.monotonic()
    result = await fetch("alpaca", server.http_url, Catalog(tmp_path), key, JAN,
                         JAN + 200 * HOUR, credentials=("key", "secret"))
    assert (result.added, result.error) == (200, "") and time.monotonic() - t0 >= 1.0
    assert len(stub.log.entries) == 4
    refused = await fetch("alpaca", server.http_url, Catalog(tmp_path / "b"), key, JAN,
                          JAN + 200 * HOUR, credentials=("wrong", "secret"))
    assert "VenueRejected" in refused.error and "401" in refused.error


async def test_alpaca_crypto_daily_bars_are_stamped_at_utc_midnight(
        alpaca: tuple[AlpacaStub, StubServer], tmp_path: Path) -> None:
    stub, server = alpaca
    key = SetKey("alpaca", "BTC/USD", "1d")
    day = INTERVAL_NS["1d"]
    stub.bars[("BTC/USD", "1d")] = series = Series("1d", JAN, JAN + 400 * day)
    catalog = Catalog(tmp_path)
    result = await fetch("alpaca", server.http_url, catalog, key, JAN, JAN + 300 * day)
    assert (result.added, result.error) == (300, "")
    assert stub.log.routes()[0] == "GET /v1beta3/crypto/us/bars"
    assert_exact(catalog, key, series, JAN, JAN + 300 * day)


async def test_alpaca_requests_never_exceed_the_rate_limit(
        alpaca: tuple[AlpacaStub, StubServer], tmp_path: Path) -> None:
    stub, server = alpaca
    key = SetKey("alpaca", "MSFT", "1h")
    stub.bars[("MSFT", "1h")] = Series("1h", JAN, JAN + 3000 * HOUR)
    stub.page_max, stub.rate = 100, WeightWindow(1.0, 5)
    result = await fetch("alpaca", server.http_url, Catalog(tmp_path), key, JAN,
                         JAN + 1150 * HOUR, credentials=("key", "secret"),
                         limits=[("REQUESTS", 1.0, 5)])
    assert (result.pages, result.added, result.error) == (12, 1150, "")
    assert stub.rate.over == 0 and stub.rate.peak <= 5
