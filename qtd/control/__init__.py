"""The control protocol: every command, reply and kill that crosses a process boundary.

One module for the shapes the agent, the leader, the CLI and the status page exchange (the
NATS functions that send them live in :mod:`qtd.control.transport`, the leader's dispatcher in
:mod:`qtd.leader.dispatch`). Field names are the wire format (msgspec JSON); do not rename
them.

==============================  ==========================================  ===============
struct                          where it travels                            decoded by
==============================  ==========================================  ===============
:class:`KillCommand`            core ``<prefix>.ctl.kill``; KV ``kill``     agents, leader
                                (in a :class:`KillSet`); the kill file;
                                ``OrderRouter.kill``
:class:`NodeRequest` →          ``<prefix>.ctl.<node>.<verb>``              one agent
:class:`NodeReply`              (request/reply)
:class:`LeaderRequest` →        ``<prefix>.ctl.leader.<verb>``              the leader
JSON object (``ok`` + result)   (request/reply)
:class:`ControlAction`          status page / API → the leader's            the leader
                                dispatcher (in process)
==============================  ==========================================  ===============

A kill on the wire is lenient (unknown fields are ignored, so an older agent applies a newer
leader's kill) but needs ``id`` and ``reason`` (:func:`decode_kill`); anything else is a
GLOBAL kill naming the problem (fail safe). The kill **file** is strict
(:func:`kill_from_file_doc`): a field it does not know is an error naming it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

from qtd.errors import ConfigError
from qtd.events import DECODE_ERRORS, Scope

# --- kills -----------------------------------------------------------------------------------


class KillCommand(msgspec.Struct, frozen=True, kw_only=True):
    """One kill-switch activation: on the wire, in the kill set, in the kill file and as the
    risk layer's command (:meth:`qtd.execution.OrderRouter.kill`).

    Attributes:
        id: unique id of this activation (agents apply each id once); "" for a kill made
            on the node itself (kill file, schedule, store fault).
        scope: GLOBAL (L1), ACCOUNT (L2), STRATEGY (L3) or SYMBOL (L4).
        key: the account, bot or symbol ("" for GLOBAL).
        reason: why (shown in events and pages).
        flatten: also close the scope's positions with reduce-only market orders.
        operator: who.
        source: ``"cli"``, ``"kill_file"``, ``"leader"``, ``"web"``.
        ts_ns: when it was issued, UTC ns (0: not stamped).
        cap: the fleet cap that tripped it (its ``Breach.trip_key``; "" for an operator's
            kill): the leader re-arms that cap when this kill is released.
    """

    id: str = ""
    scope: Scope = Scope.GLOBAL
    key: str = ""
    reason: str = "kill switch"
    flatten: bool = False
    operator: str = ""
    source: str = "cli"
    ts_ns: int = 0
    cap: str = ""


FILE_FIELDS: Final = ("scope", "key", "reason", "flatten", "operator", "source")
"""The fields a kill file may hold (and :func:`kill_file_body` writes), in this order."""


class KillSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The active kills: the value of KV key ``kill`` in ``qtd_control``.

    Attributes:
        kills: every activation not yet released, oldest first; empty when none is set.
    """

    kills: tuple[KillCommand, ...] = ()

    def ids(self) -> set[str]:
        """The ids of the active kills."""
        return {k.id for k in self.kills}

    def holding(self, scope: Scope, key: str) -> list[KillCommand]:
        """The active kills on exactly this scope and key."""
        return [k for k in self.kills if k.scope is scope and k.key == key]

    def add(self, msg: KillCommand) -> KillSet:
        """This set with ``msg`` added (unchanged if its id is already in)."""
        return self if msg.id in self.ids() else KillSet(kills=(*self.kills, msg))

    def without(self, ids: Iterable[str]) -> KillSet:
        """This set less the kills with these ids."""
        drop = set(ids)
        return KillSet(kills=tuple(k for k in self.kills if k.id not in drop))


def new_kill(*, reason: str, scope: Scope = Scope.GLOBAL, key: str = "", flatten: bool = False,
             operator: str = "", source: str = "cli", cap: str = "",
             ts_ns: int | None = None) -> KillCommand:
    """A :class:`KillCommand` with a fresh id, stamped now (or at ``ts_ns``)."""
    return KillCommand(id=uuid.uuid4().hex[:16], scope=scope, key=key, reason=reason,
                       flatten=flatten, operator=operator, source=source,
                       ts_ns=time.time_ns() if ts_ns is None else ts_ns, cap=cap)


class _WireKill(msgspec.Struct):
    """What a kill on the wire must carry (the rest has defaults)."""

    id: str
    reason: str


class _WireSet(msgspec.Struct):
    kills: tuple[_WireKill, ...] = ()


_kill_decoder = msgspec.json.Decoder(KillCommand)
_set_decoder = msgspec.json.Decoder(KillSet)
_wire_kill = msgspec.json.Decoder(_WireKill)
_wire_set = msgspec.json.Decoder(_WireSet)


def decode_kill(data: bytes, *, revision: int = 0) -> KillCommand:
    """Decode a kill from the wire (needs ``id`` and ``reason``; other unknown fields are
    ignored); garbage becomes a GLOBAL kill naming the problem (fail safe)."""
    try:
        _wire_kill.decode(data)
        return _kill_decoder.decode(data)
    except DECODE_ERRORS as exc:
        return KillCommand(id=f"undecodable-{revision}-{len(data)}",
                           reason=f"undecodable kill message ({exc})", source="kv")


def decode_kill_set(data: bytes, *, revision: int = 0) -> KillSet:
    """Decode the KV value: a :class:`KillSet`, or one kill (written by an older qtd: a set
    of one); anything else is a set holding one GLOBAL kill that names the problem (fail
    safe)."""
    try:
        _wire_set.decode(data)
        return _set_decoder.decode(data)
    except DECODE_ERRORS:
        pass
    return KillSet(kills=(decode_kill(data, revision=revision),))


def kill_from_file_doc(doc: dict[str, Any], source: str) -> KillCommand:
    """The kill a kill-file document asks for (strict: only :data:`FILE_FIELDS`).

    Raises:
        ConfigError: a field the kill file does not know (named), or a bad value.
    """
    unknown = [k for k in doc if k not in FILE_FIELDS]
    if unknown:
        raise ConfigError(f"kill file: Object contains unknown field `{unknown[0]}`",
                          source=source, field=unknown[0], value=doc,
                          rule=f"one of {', '.join(FILE_FIELDS)}")
    try:
        return msgspec.convert(doc, KillCommand)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"kill file: {exc}", source=source, value=doc,
                          rule=str(exc)) from exc


def kill_file_body(cmd: KillCommand) -> bytes:
    """The kill file's JSON for ``cmd`` (only :data:`FILE_FIELDS`)."""
    return msgspec.json.encode({f: getattr(cmd, f) for f in FILE_FIELDS})


# --- node verbs: <prefix>.ctl.<node>.<verb> --------------------------------------------------


class NodeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a ``<prefix>.ctl.<node>.<verb>`` request to one agent (``status``, ``halt``,
    ``flatten``, ``resume``, ``reload``; every field optional for ``status``).

    Unknown fields are refused: a body that is not a request (e.g. a NATS server's reply
    that another client directed here, see :func:`qtd.bus.rejects.server_reply`) must not
    read as one with every field at its default.

    Attributes:
        operator / reason: required by ``halt``, ``flatten`` and ``resume`` (and recorded
            for every verb).
        scope / key: the scope of ``halt``, ``resume`` and ``flatten`` (default GLOBAL).
    """

    operator: str = ""
    reason: str = ""
    scope: Scope = Scope.GLOBAL
    key: str = ""


class NodeReply(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's reply to a :class:`NodeRequest`: ``ok``, a one-line ``message`` and
    verb-specific ``data``."""

    ok: bool
    node: str
    verb: str
    message: str = ""
    data: dict[str, Any] = {}


# --- leader verbs: <prefix>.ctl.leader.<verb> ------------------------------------------------


class LeaderRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a ``<prefix>.ctl.leader.<verb>`` request (``resume``, ``ack``, ``alerts``,
    ``kill``, ``status``, ``versions``, ``caps``, ``caps_raise``).

    The reply is a JSON object: ``{"ok": true, ...verb's result}`` or ``{"ok": false,
    "error": "..."}`` (:meth:`qtd.leader.dispatch.CommandDispatcher.command`).

    For ``kill``: ``scope`` (default GLOBAL) and ``key``. For ``resume``: what to release —
    ``kill_ids``, or every kill on ``scope``/``key``, or ``everything``; none of them
    releases the only active kill (refused when several are active). For ``ack``:
    ``alert_id``. For ``caps_raise``: ``cap``, ``key`` (the symbol of ``symbol_exposure``),
    ``limit``, ``operator``, ``reason``.
    """

    operator: str = ""
    reason: str = ""
    alert_id: str = ""
    scope: Scope | None = None
    key: str = ""
    flatten: bool = False
    kill_ids: list[str] = []
    everything: bool = False
    cap: str = ""
    limit: float | None = None


# --- the status page's controls --------------------------------------------------------------

Target = Literal["global", "node", "bot", "account", "symbol", "kill"]
Verb = Literal["kill", "flatten", "resume"]
SCOPES: Final[dict[str, Scope]] = {"global": Scope.GLOBAL, "bot": Scope.STRATEGY,
                                   "account": Scope.ACCOUNT, "symbol": Scope.SYMBOL}
NODE_VERBS: Final[dict[str, str]] = {"kill": "halt", "flatten": "flatten", "resume": "resume"}
"""A page action on ``target="node"`` -> the agent verb it sends."""


class ControlAction(msgspec.Struct, frozen=True, kw_only=True):
    """One operator control from the status page or the API (in process, not on NATS).

    Attributes:
        verb: ``kill`` (halt), ``flatten`` (halt and close positions) or ``resume``.
        target: ``global``, ``node`` (one agent), ``bot`` (a strategy, fleet-wide),
            ``account``, ``symbol``, or ``kill`` (resume only: one active kill by id).
        key: the node, bot, account, symbol or kill id ("" for global). Resume of
            ``global`` releases the only active kill (refused when several are active);
            of ``bot``/``account``/``symbol`` every active kill on that scope and key.
        reason: why (required, audited).
        operator: who (audited).
    """

    verb: Verb
    target: Target = "global"
    key: str = ""
    reason: str
    operator: str

    def node_request(self) -> tuple[str, NodeRequest]:
        """For ``target="node"``: the agent verb and its request."""
        return NODE_VERBS[self.verb], NodeRequest(operator=self.operator, reason=self.reason)

    def leader_request(self) -> tuple[str, LeaderRequest]:
        """For any other target: the leader verb (``kill`` or ``resume``) and its request.

        Raises:
            ConfigError: target ``kill`` with a verb other than ``resume``.
        """
        if self.verb == "resume":
            scoped = self.target not in ("global", "kill")
            return "resume", LeaderRequest(
                operator=self.operator, reason=self.reason, key=self.key,
                kill_ids=[self.key] if self.target == "kill" else [],
                scope=SCOPES.get(self.target) if scoped else None)
        if self.target == "kill":
            raise ConfigError("target 'kill' is for resume only", source="<request>",
                              field="target", value=self.target, rule="resume only")
        return "kill", LeaderRequest(operator=self.operator, reason=self.reason,
                                     scope=SCOPES[self.target], key=self.key,
                                     flatten=self.verb == "flatten")
