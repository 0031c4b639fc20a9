"""The agent's kernel: start-up steps 1-5 (store, projections, engine, accounts,
reconciliation), built once and never changed afterwards.

:func:`build_kernel` returns a :class:`Kernel` whose parts are all constructed: the services
(:mod:`qtd.agent.daemon`) are built from it and never see a half-built agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from qtd.agent.accounts import close_brokers, open_accounts
from qtd.agent.config import AgentConfig
from qtd.agent.crashpoint import CrashPoint
from qtd.agent.link import Outlet
from qtd.agent.storefault import READONLY_ENV, StoreFaultHalt, ignore_sigxfsz
from qtd.agent.wiring import bot_files, bot_symbols, open_store, rebuild, risk_config_for
from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.bus import DEFAULT_PREFIX, Subjects
from qtd.clock import Clock
from qtd.errors import StoreError
from qtd.events import AnyEvent, TradingStateChanged
from qtd.execution import OrderRouter
from qtd.orders import ClientOrderIds
from qtd.projections import Projections, TradingDay
from qtd.reconcile import reconcile_account, restore_paper_broker
from qtd.risk import RiskEngine, load_risk_config
from qtd.store.agentstore import AgentStore, StoreHooks

log = logging.getLogger("qtd.agent")


@dataclass(frozen=True, eq=False)
class Kernel:
    """What every service of the agent reads (immutable: the parts are fixed at start).

    Attributes:
        cfg: the validated config; ``node`` its node name.
        clock: UTC ns time.
        subjects: NATS subject names of the agent's prefix.
        store: the event store (listener: :attr:`outlet`; fault policy: :attr:`fault_halt`).
        proj: projections rebuilt from the store.
        risk: the risk engine (seeded from the store).
        router: the order router (every order passes the engine).
        brokers: connected, reconciled accounts (the mapping grows when a failed account
            connects later; the router's own mapping is kept equal).
        failed_accounts: account → why it is not connected.
        outlet: the store's listener (the bus link attaches its outbox).
        fault_halt: the store's write-fault policy.
        last_global: the last GLOBAL state change in the store (the fail-safe's).
        started_mono: loop time when the kernel was built, seconds.
    """

    cfg: AgentConfig
    node: str
    clock: Clock
    subjects: Subjects
    store: AgentStore
    proj: Projections
    risk: RiskEngine
    router: OrderRouter
    brokers: dict[str, Broker]
    failed_accounts: dict[str, str]
    outlet: Outlet
    fault_halt: StoreFaultHalt
    last_global: TradingStateChanged | None
    started_mono: float

    def loop_time(self) -> float:
        """Monotonic seconds (the event loop's clock)."""
        return asyncio.get_running_loop().time()


async def build_kernel(cfg: AgentConfig, clock: Clock,
                       on_stored: Callable[[Sequence[AnyEvent]], None] | None = None
                       ) -> Kernel:
    """Steps 1-5 of the start-up (:mod:`qtd.agent.daemon`); nothing trades yet.

    Args:
        cfg: the validated config.
        clock: UTC ns time.
        on_stored: also called with every batch of stored events (benchmarks).

    Raises:
        StoreError: the store cannot be opened or fails verification (it is closed again,
            so the process exits instead of waiting on SQLite's thread).
        ConfigError: the risk file does not fit the agent config.
    """
    proj = Projections(TradingDay(cfg.trading_day.tz, cfg.trading_day.rollover),
                       keep_terminal=cfg.terminal_orders_kept)
    risk_cfg = risk_config_for(cfg, load_risk_config(cfg.risk))  # one trading day
    risk = RiskEngine(risk_cfg, proj, clock, cfg.node)
    ignore_sigxfsz()
    outlet, halt = Outlet(on_stored), StoreFaultHalt(risk, clock, cfg.node)
    store = await open_store(cfg, StoreHooks(
        listener=outlet.offer, faults=halt,  # halt + buffer + probe
        readonly_flag=os.environ.get(READONLY_ENV) or None, crash=CrashPoint.from_env()))
    brokers: dict[str, Broker] = {}
    try:
        last_global = await rebuild(store, proj, risk)
        brokers, failed = await open_accounts(cfg, clock, bot_symbols(cfg, bot_files(cfg)))
        for name, b in brokers.items():
            if isinstance(b, PaperBroker):
                restore_paper_broker(b, proj, Decimal(str(cfg.accounts[name].cash)))
        router = OrderRouter(store=store, clock=clock, risk=risk, cids=ClientOrderIds(store),
                             brokers=brokers, projections=proj,
                             append_group=store.append_group)
        await _reconcile(router, brokers, failed, clock)
    except BaseException:
        await close_brokers(brokers)
        await store.close()
        raise
    subjects = Subjects(cfg.bus.prefix if cfg.bus is not None else DEFAULT_PREFIX)
    return Kernel(cfg=cfg, node=cfg.node, clock=clock, subjects=subjects, store=store,
                  proj=proj, risk=risk, router=router, brokers=brokers,
                  failed_accounts=failed, outlet=outlet, fault_halt=halt,
                  last_global=last_global, started_mono=asyncio.get_running_loop().time())


async def _reconcile(router: OrderRouter, brokers: dict[str, Broker], failed: dict[str, str],
                     clock: Clock) -> None:
    """Step 5: reconcile every account; one that fails is dropped with the reason."""
    for name in list(brokers):
        try:
            rec = await reconcile_account(router, brokers[name], clock)
        except StoreError:
            raise
        except Exception as exc:
            failed[name] = f"reconcile failed: {type(exc).__name__}: {exc}"
            log.exception("account %s: reconciliation failed; its bots will not start",
                          name, extra={"account": name})
            del brokers[name]
            continue
        log.info("account %s reconciled: ok=%s resolved=%d", name, rec.ok,
                 len(rec.resolved), extra={"account": name})
