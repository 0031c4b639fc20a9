"""NATS subject names for qtd, built in one place and validated, plus the JetStream Msg-Id.

Layout (prefix configurable, default ``qtd``)::

    <prefix>.evt.<node>.<bot>.<kind>   JetStream stream QTD_EVENTS    agent -> leader
    <prefix>.pnl.<node>.<bot>          core, ~1/s                     agent -> leader
    <prefix>.hb.<node>                 core, 1/s (``leader`` for the leader)
    <prefix>.ctl.kill                  core + KV key ``kill``         leader -> agents
    <prefix>.ctl.<node>.<verb>         request/reply                  leader/CLI -> agent

A node-level event (``bot == ""``) uses the token ``_`` in the bot position, so ``_`` is
reserved and is not a valid bot name.
"""

from __future__ import annotations

import re

from qtd.errors import ConfigError

DEFAULT_PREFIX = "qtd"
NODE_LEVEL_BOT = "_"
"""Subject token standing for "no bot" (node-level events and PnL)."""

CTL_VERBS = frozenset({"halt", "resume", "flatten", "reload", "status"})
"""The request/reply verbs agents answer on ``<prefix>.ctl.<node>.<verb>``."""

# NATS tokens are separated by '.', '*' and '>' are wildcards, whitespace ends the subject on
# the wire; control characters have no business in a name either.
_BAD_CHARS = re.compile(r"[.*>\s\x00-\x1f\x7f]")
_RULE = "must be a non-empty NATS subject token: no '.', '*', '>', whitespace or control chars"


def check_token(field: str, value: str) -> str:
    """Return ``value`` if it is a valid NATS subject token, else raise.

    Args:
        field: what the value names (``"node"``, ``"bot"``, ...), for the error message.
        value: the candidate token.

    Raises:
        ConfigError: ``value`` is empty or contains '.', '*', '>', whitespace or a control
            character. The error names the field, the value and the rule.
    """
    if not isinstance(value, str) or not value or _BAD_CHARS.search(value):
        raise ConfigError(
            f"invalid {field} {value!r} in a NATS subject: {_RULE}",
            source="subject",
            field=field,
            value=value,
            rule=_RULE,
        )
    return value


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(
            f"invalid subject prefix {prefix!r}: {_RULE}",
            source="subject", field="prefix", value=prefix, rule=_RULE,
        )
    for token in prefix.split("."):
        try:
            check_token("prefix", token)
        except ConfigError:
            rule = "dot-separated tokens, each " + _RULE.removeprefix("must be ")
            raise ConfigError(
                f"invalid subject prefix {prefix!r}: {rule}",
                source="subject", field="prefix", value=prefix, rule=rule,
            ) from None
    return prefix


def _bot_token(bot: str) -> str:
    if bot == "":
        return NODE_LEVEL_BOT
    if bot == NODE_LEVEL_BOT:
        rule = f"{NODE_LEVEL_BOT!r} is reserved for node-level subjects"
        raise ConfigError(
            f"invalid bot {bot!r} in a NATS subject: {rule}",
            source="subject", field="bot", value=bot, rule=rule,
        )
    return check_token("bot", bot)


class Subjects:
    """Builds qtd's NATS subjects under one prefix, rejecting names that would change their
    meaning (a '.' adds a token, '*' and '>' are wildcards).

    Args:
        prefix: first token(s) of every subject, e.g. ``"qtd"`` or ``"acme.qtd"``.

    Raises:
        ConfigError: the prefix is not dot-separated valid tokens.
    """

    __slots__ = ("_prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self._prefix = _check_prefix(prefix)

    def __repr__(self) -> str:
        return f"Subjects(prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        """The subject prefix."""
        return self._prefix

    # --- events (JetStream) ----------------------------------------------------------------

    def evt(self, node: str, bot: str, kind: str) -> str:
        """Subject of one event: ``<prefix>.evt.<node>.<bot>.<kind>``.

        Args:
            node: the producing node.
            bot: the bot, or ``""`` for a node-level event (becomes ``_``).
            kind: the event kind (its class name, e.g. ``"Fill"``).

        Raises:
            ConfigError: a name is not a valid subject token (or bot is ``"_"``).
        """
        return (
            f"{self._prefix}.evt.{check_token('node', node)}."
            f"{_bot_token(bot)}.{check_token('kind', kind)}"
        )

    @property
    def evt_all(self) -> str:
        """Every event subject: ``<prefix>.evt.>`` (the QTD_EVENTS stream's subject)."""
        return f"{self._prefix}.evt.>"

    def evt_filter(
        self, node: str | None = None, bot: str | None = None, kind: str | None = None
    ) -> str:
        """A subscription/consumer filter over events; ``None`` matches any (``*``).

        Raises:
            ConfigError: a given name is not a valid subject token.
        """
        n = "*" if node is None else check_token("node", node)
        b = "*" if bot is None else _bot_token(bot)
        k = "*" if kind is None else check_token("kind", kind)
        return f"{self._prefix}.evt.{n}.{b}.{k}"

    # --- PnL ticks and heartbeats (core NATS) ----------------------------------------------

    def pnl(self, node: str, bot: str) -> str:
        """PnL tick subject: ``<prefix>.pnl.<node>.<bot>`` (``bot=""`` for the node total).

        Raises:
            ConfigError: a name is not a valid subject token.
        """
        return f"{self._prefix}.pnl.{check_token('node', node)}.{_bot_token(bot)}"

    @property
    def pnl_all(self) -> str:
        """Every PnL subject: ``<prefix>.pnl.>``."""
        return f"{self._prefix}.pnl.>"

    def hb(self, node: str) -> str:
        """Heartbeat subject of a node: ``<prefix>.hb.<node>``.

        Raises:
            ConfigError: ``node`` is not a valid subject token.
        """
        return f"{self._prefix}.hb.{check_token('node', node)}"

    @property
    def hb_leader(self) -> str:
        """The leader's heartbeat subject: ``<prefix>.hb.leader``."""
        return f"{self._prefix}.hb.leader"

    @property
    def hb_all(self) -> str:
        """Every heartbeat subject: ``<prefix>.hb.*``."""
        return f"{self._prefix}.hb.*"

    # --- control ---------------------------------------------------------------------------

    @property
    def ctl_kill(self) -> str:
        """Kill switch broadcast subject: ``<prefix>.ctl.kill``."""
        return f"{self._prefix}.ctl.kill"

    def ctl(self, node: str, verb: str) -> str:
        """Request/reply subject of a command to one node: ``<prefix>.ctl.<node>.<verb>``.

        Args:
            node: the target node.
            verb: the command; agents answer the verbs in :data:`CTL_VERBS`.

        Raises:
            ConfigError: a name is not a valid subject token.
        """
        return f"{self._prefix}.ctl.{check_token('node', node)}.{check_token('verb', verb)}"

    def ctl_node(self, node: str) -> str:
        """Filter for every command to one node: ``<prefix>.ctl.<node>.*``.

        Raises:
            ConfigError: ``node`` is not a valid subject token.
        """
        return f"{self._prefix}.ctl.{check_token('node', node)}.*"


def msg_id(node: str, incarnation: str, seq: int) -> str:
    """JetStream ``Nats-Msg-Id`` of a stored event: ``"<node>:<incarnation>:<seq>"``.

    Unique per event for the life of a store (the incarnation changes when a store is
    recreated), so a re-send of the same event inside the duplicate window is dropped by
    JetStream and the leader dedups on the same triple outside it.
    """
    return f"{node}:{incarnation}:{seq}"
