"""No code path reaches a broker without the risk engine: adapters demand an engine-minted,
single-use token bound to exactly one order; only the order router calls ``.submit(``."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from qtd.brokers.base import Broker, SubmitToken, TokenError
from qtd.brokers.paper import PaperBroker
from qtd.clock import SimClock
from qtd.events import OrderIntent, Side
from qtd.risk import Approved
from qtd.risk.tokens import mint_cancel
from tests.unit.test_risk_harness import NODE, Harness, req

QTD = Path(__file__).resolve().parents[2] / "qtd"


def _intent(cid: str, qty: str = "10") -> OrderIntent:
    return OrderIntent(
        node=NODE, bot="bot1", ts_event=1, ts_init=1, client_order_id=cid, cid_counter=1,
        account="acct1", venue="paper", symbol="AAPL", side=Side.BUY, qty=Decimal(qty),
    )


def _broker() -> PaperBroker:
    b = PaperBroker(account="acct1", node=NODE, clock=SimClock(1))
    b.on_price("AAPL", Decimal(100), 1)
    return b


def _approved(cid: str) -> tuple[OrderIntent, SubmitToken]:
    res = Harness().check(req(qty="10"))
    assert isinstance(res, Approved)
    intent = _intent(cid)
    return intent, res.bind(intent)


def test_paper_broker_is_a_broker() -> None:
    assert isinstance(_broker(), Broker)


async def test_engine_token_is_accepted_once() -> None:
    b = _broker()
    intent, token = _approved("tok-1")
    await b.submit(intent, token)
    assert [i.client_order_id for i in b.submitted] == ["tok-1"]
    with pytest.raises(TokenError, match="already used"):
        await b.submit(intent, token)
    assert len(b.submitted) == 1


async def test_forged_token_is_refused() -> None:
    with pytest.raises(TokenError):
        SubmitToken("submit", "x", None, key=object())
    b = _broker()
    for fake in (None, "token", object()):
        with pytest.raises(TokenError):
            await b.submit(_intent("forged"), fake)  # type: ignore[arg-type]
    assert b.submitted == []


async def test_token_for_another_order_is_refused() -> None:
    b = _broker()
    intent, token = _approved("tok-2")
    with pytest.raises(TokenError):
        await b.submit(_intent("tok-3"), token)  # other client_order_id
    bigger = msgspec.structs.replace(intent, qty=Decimal(1000))
    with pytest.raises(TokenError):
        await b.submit(bigger, token)  # same id, other fields
    with pytest.raises(TokenError):
        await b.cancel("tok-2", token)  # a submit token is not a cancel token
    assert b.submitted == []


async def test_cancel_needs_its_own_token() -> None:
    b = _broker()
    with pytest.raises(TokenError):
        await b.cancel("c1", mint_cancel("c2"))
    await b.cancel("c1", mint_cancel("c1"))
    with pytest.raises(TokenError):
        await b.cancel_all(mint_cancel("c9"))
    assert await b.cancel_all(mint_cancel("*")) == []


def _submit_calls(path: Path) -> list[int]:
    """Lines calling ``.submit(`` on anything but the order router itself (``…router``):
    calling the router is the sanctioned way in; anything else could be a broker."""
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "submit"
            and not ast.unparse(n.func.value).endswith("router")]


def test_only_the_order_router_calls_submit() -> None:
    callers = {str(p.relative_to(QTD.parent)): lines for p in sorted(QTD.rglob("*.py"))
               if (lines := _submit_calls(p))}
    assert set(callers) == {"qtd/execution.py"}, callers


def test_only_the_risk_engine_mints_tokens() -> None:
    minters = set()
    for p in QTD.rglob("*.py"):
        text = p.read_text()
        if "mint_submit(" in text or "_MINT_KEY" in text:
            minters.add(str(p.relative_to(QTD.parent)))
    assert minters == {"qtd/risk/engine.py", "qtd/risk/tokens.py"}
