"""Reconciliation after start-up in the agent: one :class:`~qtd.reconcile.Reconciler` task
per venue account.

The agent reconciles every account once at start, before any bot trades
(:mod:`qtd.agent.daemon`). After that, each venue account (alpaca, binance; not qtd's paper
broker, whose truth *is* the store) gets a task ``reconcile:<account>`` that reconciles it

* every ``[accounts.<name>] reconcile_interval_s`` seconds (default 300), and
* after every reconnect of the adapter's stream (its :class:`~qtd.brokers.base.Link`): fills
  made at the venue while the stream was down are imported from its trade history, orders it
  no longer lists are looked up by client_order_id (:func:`qtd.reconcile.reconcile_account`).

**Auto-flatten** (``flatten_after_disconnect_s``, default off): once the venue is reachable
again after an outage longer than that, the account is moved to HALTED with a P2
:class:`~qtd.events.RiskBreach` (check ``auto_flatten``: on-call is paged with the outage
length), then flattened through the order router: an ACCOUNT kill switch with ``flatten``
cancels its open orders and closes its positions with reduce-only MARKET orders. An operator
resumes the account (``qtd resume`` / ``qtd.ctl.<node>.resume``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from qtd.agent.config import AccountSettings
from qtd.brokers.base import Broker
from qtd.brokers.paper import PaperBroker
from qtd.clock import Clock
from qtd.events import Reconciliation, Scope, Severity, TradingState
from qtd.execution import KillReport, OrderRouter
from qtd.reconcile import ReconcilePolicy, Reconciler

if TYPE_CHECKING:
    from qtd.agent.kernel import Kernel
    from qtd.agent.ports import Spawner

log = logging.getLogger("qtd.agent")
FLATTEN_RETRY_S: Final = 1.0  # first retry of a due auto-flatten the venue did not answer, s


def policy_for(s: AccountSettings) -> ReconcilePolicy:
    """The reconcile policy of one ``[accounts.<name>]`` (interval and auto-flatten, s)."""
    return ReconcilePolicy(interval_s=s.reconcile_interval_s,
                           flatten_after_s=s.flatten_after_disconnect_s)


class AccountReconciler(Reconciler):
    """:class:`~qtd.reconcile.Reconciler` whose auto-flatten records a P2 breach first.

    Args:
        router, broker, clock, policy: as :class:`~qtd.reconcile.Reconciler`.

    Attributes:
        last_outage_s: length of the outage behind the latest reconnect run, seconds.
    """

    def __init__(self, router: OrderRouter, broker: Broker, clock: Clock,
                 policy: ReconcilePolicy) -> None:
        super().__init__(router, broker, clock, policy)
        self.last_outage_s = 0.0

    async def once(self, trigger: str, outage_s: float = 0.0) -> Reconciliation | None:
        """One reconciliation (``trigger``: ``"periodic"``, ``"reconnect"``), then the
        auto-flatten policy for an ``outage_s`` seconds outage. When a flatten is due but
        the venue does not answer the reconciliation (its REST API still down), retry every
        :data:`FLATTEN_RETRY_S` (doubling, capped at ``interval_s``) until it does: a due
        flatten is never dropped."""
        if trigger == "reconnect":
            self.last_outage_s = outage_s
        rec = await super().once(trigger, outage_s)
        after, delay = self.policy.flatten_after_s, FLATTEN_RETRY_S
        while rec is None and after is not None and outage_s > after:
            log.warning("account %s: auto-flatten due (outage %.1f s) but the venue did not "
                        "answer; retrying in %.1f s", self.broker.account, outage_s, delay,
                        extra={"account": self.broker.account})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.policy.interval_s)
            rec = await super().once(trigger, outage_s)
        return rec

    async def flatten(self, reason: str) -> KillReport:
        """HALT the account with a P2 ``auto_flatten`` breach (value: the outage, s), then
        cancel its open orders and close its positions through the router."""
        account = self.broker.account
        self.router.risk.trip(Scope.ACCOUNT, account, TradingState.HALTED, reason,
                              check="auto_flatten", severity=Severity.P2,
                              value=round(self.last_outage_s, 3))
        return await super().flatten(reason)


class AccountReconcilers:
    """The ``reconcile:<account>`` tasks of the agent's venue accounts.

    Args:
        kernel: the agent's kernel (router, brokers, clock, account settings).
        tasks: the agent's task group.

    Attributes:
        reconcilers: venue account → its reconciler.
    """

    def __init__(self, kernel: Kernel, tasks: Spawner) -> None:
        self.k, self.tasks = kernel, tasks
        self.reconcilers: dict[str, AccountReconciler] = {}

    def start(self, name: str) -> AccountReconciler | None:
        """Spawn ``reconcile:<name>`` for a connected venue account (None for a paper
        broker, which needs none). Call it after the account's start-up reconciliation."""
        broker = self.k.brokers[name]
        if isinstance(broker, PaperBroker):
            return None
        policy = policy_for(self.k.cfg.accounts[name])
        rec = AccountReconciler(self.k.router, broker, self.k.clock, policy)
        self.reconcilers[name] = rec
        self.tasks.spawn(f"reconcile:{name}", rec.run())
        log.info("account %s: reconciling every %.0f s and after reconnects; auto-flatten %s",
                 name, policy.interval_s,
                 "off" if policy.flatten_after_s is None
                 else f"after {policy.flatten_after_s:g} s disconnected",
                 extra={"account": name})
        return rec
