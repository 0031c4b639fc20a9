"""Hot reload of a running bot's params file.

:func:`reload_params` re-admits the bot config (every admission rule, smoke backtest
included) and, if it passes, hands the new params to the runner, which swaps them in at the
next bar boundary (:meth:`qtd.runner.BotRunner.swap_params`, recorded as
``ParamsChanged(accepted=True)``). A rejected change keeps the old params running, records
``ParamsChanged(accepted=False)`` with the reasons and logs a warning (the alert).
The params are converted into the *running* class's ``Params``; a changed strategy source
needs a restart of the bot, not a reload.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from qtd.admit import admit_bot
from qtd.events import ParamsChanged
from qtd.runner import BotRunner

log = logging.getLogger(__name__)


async def reload_params(runner: BotRunner, path: Path) -> bool:
    """Re-admit ``path`` for ``runner``'s bot; True if the new params were scheduled."""
    result = await admit_bot(path, smoke=True)
    reasons = [str(p) for p in result.problems]
    if result.ok and result.bot != runner.name:
        reasons = [f"{path}: bot name {result.bot!r} is not the running bot {runner.name!r}"]
    params = None
    if not reasons:
        try:
            params = msgspec.convert(result.params, runner.strategy_cls.Params)
        except msgspec.ValidationError as exc:
            reasons = [f"{path}: params do not fit the running strategy: {exc}"]
    if params is None:
        now = runner.clock.now_ns()
        await runner._record(ParamsChanged(
            node=runner.node, bot=runner.name, ts_event=now, ts_init=now,
            old_hash=runner.params_hash, new_hash=result.content_hash, accepted=False,
            reason="; ".join(reasons)[:2000]))
        log.warning("bot %s: params change rejected, old params keep running: %s",
                    runner.name, "; ".join(reasons), extra={"bot": runner.name})
        return False
    runner.swap_params(params, result.content_hash)
    return True
