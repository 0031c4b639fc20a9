"""Fuzz every config loader and every NATS message decoder with hypothesis.

Configs: each shipped file under ``etc/`` (agent, leader, risk, routes, every bot) is decoded,
then mutated (a leaf replaced by a value of another type or out of range, a key deleted, an
unknown key added, tables replaced by scalars) and fed back through qtd's own loader. The only
acceptable outcomes are a valid config or qtd's ConfigError / admission Problem naming the
file and the field — never another exception type.

Messages: the decoders behind every subject the agent and the leader subscribe to
(events from JetStream, kill messages, control requests and replies, heartbeats, PnL
snapshots, kill acks) get random bytes, random JSON and mutated valid messages. They may
only raise msgspec's DecodeError / ValidationError (which the daemons count and drop), and
a kill that cannot be read must fail safe as a GLOBAL kill.

Each test counts the inputs it tried and checks the count, so a silently skipped fuzz run
fails; ``-s`` shows the counts.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtd.admit.config import load_bot_config, resolve_strategy
from qtd.agent.config import parse_agent_config
from qtd.control import KillCommand, NodeReply, NodeRequest, decode_kill
from qtd.errors import ConfigError
from qtd.events import Heartbeat, KillAck, PnLSnapshot, Scope, TradingState, from_json, to_json
from qtd.leader.config import parse_leader_config
from qtd.risk.load import parse_risk_config
from qtd.routes import load_routes
from tests.factories import fill

ETC = Path(__file__).resolve().parents[2] / "etc"
EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
TRIED: dict[str, int] = {}


def _count(target: str) -> None:
    TRIED[target] = TRIED.get(target, 0) + 1


def _doc(name: str) -> dict[str, Any]:
    return tomllib.loads((ETC / name).read_text())


# --- value and document mutations -------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "-1", "1e309", "NaN", "../../etc/passwd", "a" * 300, "☃", "0x10",
                     "America/Nowhere", "25:61", "nats://", "paper", "live", "HALTED"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=8)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return doc


def _clean_for_toml(value: Any) -> Any:
    """TOML has no null and keys must be strings: what a file could actually contain."""
    if isinstance(value, dict):
        return {str(k): _clean_for_toml(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean_for_toml(v) for v in value if v is not None]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return float(value)
    return value


def _assert_config_error(exc: ConfigError, source: str) -> None:
    text = str(exc)
    assert source in text, f"error does not name the file: {text}"
    assert len(text) < 20_000


# --- config loaders ---------------------------------------------------------------------

@pytest.mark.parametrize("name, parse", [
    ("agent.toml", lambda d, s: parse_agent_config(d, source=s, base=ETC)),
    ("leader.toml", lambda d, s: parse_leader_config(d, source=s)),
    ("risk.toml", lambda d, s: parse_risk_config(d, source=s)),
])
def test_fuzz_config_documents(name: str, parse: Any) -> None:
    base = _doc(name)
    source = f"fuzz/{name}"
    parse(copy.deepcopy(base), source)  # the shipped file is valid
    refused = 0

    @FUZZ
    @given(doc=mutated(base))
    def run(doc: dict[str, Any]) -> None:
        nonlocal refused
        _count(name)
        try:
            parse(doc, source)
        except ConfigError as exc:
            refused += 1
            _assert_config_error(exc, source)

    run()
    assert TRIED[name] >= EXAMPLES
    assert refused > EXAMPLES // 4  # the mutations do reach the validation
    print(f"\nfuzz {name}: {TRIED[name]} inputs, {refused} refused with ConfigError")


@pytest.mark.parametrize("name", ["routes.toml", *sorted(
    f"bots/{p.name}" for p in (ETC / "bots").glob("*.toml"))])
def test_fuzz_config_files(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = _doc(name)
    work = tmp_path_factory.mktemp("fuzz")
    # Keep the bot's relative strategy path resolvable from the temp copy.
    if name.startswith("bots/"):
        base["strategy"] = str(resolve_strategy(ETC / "bots" / "x.toml", base["strategy"]))

    @FUZZ
    @given(doc=mutated(base))
    def run(doc: dict[str, Any]) -> None:
        _count(name)
        path = work / Path(name).name
        try:
            path.write_text(tomli_w.dumps(_clean_for_toml(doc)))
        except (TypeError, ValueError):  # e.g. a NaN inside an inline array: not writable
            path.write_bytes(b"\xff\xfe not toml")
        if name == "routes.toml":
            _cfg, problems = load_routes(path)
        else:
            _bot, problems = load_bot_config(path)
        for p in problems:
            assert p.file == str(path) and p.field and p.rule, p
        refused.append(bool(problems))

    refused: list[bool] = []
    run()
    assert TRIED[name] >= EXAMPLES
    assert sum(refused) > EXAMPLES // 4  # the mutations do reach the validation
    print(f"\nfuzz {name}: {TRIED[name]} inputs, {sum(refused)} refused with problems")


# --- NATS message decoders --------------------------------------------------------------

_VALID = [
    to_json(fill("c1", "t1", qty="1", price="100")),
    msgspec.json.encode(KillCommand(id="k1", scope=Scope.GLOBAL, reason="r", ts_ns=1)),
    msgspec.json.encode(NodeRequest(operator="o", reason="r")),
    to_json(Heartbeat(node="n", ts_event=1, ts_init=1, role="agent")),
    to_json(KillAck(node="n", ts_event=1, ts_init=1, kill_id="k1", scope=Scope.GLOBAL,
                    scope_key="", reason="r", state=TradingState.HALTED)),
]


@st.composite
def message_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "json", "mutated", "bad-utf8"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "bad-utf8":  # valid JSON shape, a string holding bytes that are not UTF-8
        doc = draw(st.sampled_from(_VALID))
        at = doc.index(b'"', 1) + 1
        return doc[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + doc[at:]
    if kind == "json":
        return msgspec.json.encode(draw(values))
    doc = msgspec.json.decode(draw(st.sampled_from(_VALID)))
    return msgspec.json.encode(draw(mutated(doc)))


_DECODERS: dict[str, Any] = {
    "qtd.evt.* (leader ingest)": from_json,
    "qtd.ctl.<node>.<verb> request": lambda b: msgspec.json.decode(b, type=NodeRequest),
    "qtd.ctl.<node>.<verb> reply": lambda b: msgspec.json.decode(b, type=NodeReply),
    "qtd.hb.*": lambda b: msgspec.json.decode(b, type=Heartbeat),
    "qtd.pnl.*": lambda b: msgspec.json.decode(b, type=PnLSnapshot),
    "qtd.ack.kill.*": lambda b: msgspec.json.decode(b, type=KillAck),
}


@pytest.mark.parametrize("subject", sorted(_DECODERS))
def test_fuzz_message_decoders(subject: str) -> None:
    decode = _DECODERS[subject]
    rejected = 0

    @FUZZ
    @given(data=message_bytes())
    def run(data: bytes) -> None:
        nonlocal rejected
        _count(subject)
        try:
            decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            rejected += 1
        except UnicodeDecodeError:  # msgspec's own error for non-UTF-8 strings
            assert subject != "qtd.evt.* (leader ingest)", "from_json must normalise it"
            rejected += 1

    run()
    assert TRIED[subject] >= EXAMPLES
    assert rejected > EXAMPLES // 4  # the fuzz inputs do reach the validation
    print(f"\nfuzz {subject}: {TRIED[subject]} inputs, {rejected} rejected")


def test_fuzz_kill_messages_fail_safe() -> None:
    """qtd.ctl.kill and the KV kill key: garbage never raises and is a GLOBAL kill; a kill
    on the wire needs ``id`` and ``reason`` (unknown fields are ignored)."""
    @FUZZ
    @given(data=message_bytes())
    def run(data: bytes) -> None:
        _count("kill")
        msg = decode_kill(data, revision=7)
        try:
            exact = msgspec.json.decode(data, type=KillCommand)
            keys = msgspec.json.decode(data, type=dict[str, Any])
            if "id" not in keys or "reason" not in keys:
                raise msgspec.ValidationError("id and reason are required on the wire")
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            assert msg.scope is Scope.GLOBAL and msg.id.startswith("undecodable-")
            assert "undecodable" in msg.reason
        else:
            assert msg == exact

    run()
    assert TRIED["kill"] >= EXAMPLES
    print(f"\nfuzz kill: {TRIED['kill']} inputs")
