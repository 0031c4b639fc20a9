"""The fleet's NATS logins and exactly what each may do: one place for every permission.

Subjects (:mod:`qtd.bus.subjects`, prefix ``qtd``)::

    qtd.evt.<node>.<bot>.<kind>  JetStream stream QTD_EVENTS     agent  -> leader
    qtd.pnl.<node>.<bot>         core                            agent  -> leader
    qtd.hb.<node>, qtd.hb.leader core heartbeats
    qtd.ctl.kill + KV qtd_control key "kill"                     leader/operator -> agents
    qtd.ctl.<node>.<verb>        request/reply                   leader -> agent
    qtd.ctl.leader.<verb>        request/reply                   operator CLI -> leader
    qtd.ack.kill.<node>          kill acknowledgements           agent  -> leader/operator
    _INBOX_<login>.>             replies, JetStream acks/pulls   to that login only

Roles:

* ``agent`` (login ``agent-<node>``, one per server): publishes only under its own node's
  subjects, cannot set or clear the kill key, cannot purge or delete streams, cannot command
  other agents. JetStream API: only what an agent uses, and nothing that makes the server
  send messages to a subject of the agent's choosing: stream/bucket lookups (STREAM.INFO) and
  KV reads by key (STREAM.MSG.GET, or DIRECT.GET): the kill key, the deploy bucket and the
  strategy sources, all polled. No CONSUMER.CREATE: nats-server lets whoever may create a
  consumer set its deliver subject to any subject (e.g. ``qtd.hb.leader`` or ``qtd.ctl.kill``)
  without checking that user's permissions, and the consumer outlives the connection. It may
  write one KV key of its own, ``preflight.<node>`` in the control bucket, so that ``qtd
  preflight`` proves the KV round trip with the node's own login (no other role's secret on
  a trading server); agents read only the ``kill`` key.
* ``leader``: consumes every event and heartbeat, sends kills and control requests, writes
  the kill key; the only login that may publish ``qtd.hb.leader`` (agents count the leader
  alive on it) and create JetStream consumers; answers ``qtd.ctl.leader.<verb>``.
* ``operator`` (the CLI: ``qtd kill``, ``resume``, ``alerts``, ``ack``, ``versions``,
  ``history``): the kill set (stream info, get by key, the KV put), the ``qtd.ctl.kill``
  broadcast, the agents' kill acks and heartbeats; requests to the leader. Nothing that
  commands an agent directly or reads the events stream.
* ``deployer`` (``qtd deploy``/``rollback``): writes the deploy buckets and asks the leader
  for versions. It cannot touch the kill key, the events stream or any agent, but every agent
  runs the strategy code it deploys: this login is code execution on every agent.
* ``system`` (login ``qtd-sys`` in the system account, kept on the ops node): pushes account
  JWT updates (revocations) to the running server. Nothing else.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from qtd.bus.identity import Permissions
from qtd.bus.subjects import check_token
from qtd.errors import ConfigError

Role = Literal["agent", "leader", "operator", "deployer", "system"]
ROLES: tuple[Role, ...] = get_args(Role)
SYSTEM_LOGIN = "qtd-sys"
"""The system-account login that pushes account updates (``qtd node revoke``)."""
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
"""Where a system-account user pushes an account JWT (NATS based resolver)."""

_NOT_TOKEN_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = ("1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit (a login's "
             "inbox is _INBOX_<name>: two names that differ only in other characters would "
             "share one)")

_READ_BUCKETS = ("qtd_control", "qtd_deploy", "qtd_sources")


def inbox_of(login: str) -> str:
    """The reply-inbox prefix of ``login``: ``_INBOX_<login>`` (characters other than a
    letter, digit, ``_`` or ``-`` become ``_``)."""
    return f"_INBOX_{_NOT_TOKEN_CHARS.sub('_', login)}"


def check_name(field: str, value: str) -> str:
    """``value`` if it may name a node or a login (:data:`NAME_RULE`), else raise.

    Raises:
        ConfigError: names the field, the value and the rule.
    """
    if not _NAME.fullmatch(value):
        raise ConfigError(f"invalid {field} {value!r}: {NAME_RULE}", source="<arg>",
                          field=field, value=value, rule=NAME_RULE)
    return value


def login_name(role: Role, node: str | None = None) -> str:
    """The login name of ``role``: ``agent-<node>`` for an agent, else the role's name
    (``qtd-sys`` for the system login).

    Raises:
        ConfigError: an agent without a node, or a node outside :data:`NAME_RULE`.
        ValueError: an unknown role.
    """
    if role == "agent":
        return f"agent-{check_name('node', node or '')}"
    if role == "system":
        return SYSTEM_LOGIN
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def _kv_reads(buckets: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for b in buckets:
        out += [f"$JS.API.STREAM.INFO.KV_{b}", f"$JS.API.STREAM.MSG.GET.KV_{b}"]
    return out


def _agent(node: str, p: str) -> Permissions:
    inbox = inbox_of(login_name("agent", node))
    return Permissions(
        publish=(
            f"{p}.evt.{node}.>", f"{p}.pnl.{node}.>", f"{p}.hb.{node}", f"{p}.ack.kill.{node}",
            "$JS.API.STREAM.INFO.QTD_EVENTS",
            *_kv_reads(_READ_BUCKETS),
            "$JS.API.DIRECT.GET.KV_qtd_control.$KV.qtd_control.kill",
            "$JS.API.DIRECT.GET.KV_qtd_deploy.$KV.qtd_deploy.>",
            "$JS.API.DIRECT.GET.KV_qtd_sources.$KV.qtd_sources.>",
            # outbox audit: this node's last event only (direct get by subject; a
            # STREAM.MSG.GET names the subject in its body, which no ACL can limit)
            f"$JS.API.DIRECT.GET.QTD_EVENTS.{p}.evt.{node}.>",
            # preflight's KV round trip on the node's own key
            f"$KV.qtd_control.preflight.{node}",
            f"$JS.API.DIRECT.GET.KV_qtd_control.$KV.qtd_control.preflight.{node}",
        ),
        subscribe=(f"{p}.ctl.{node}.*", f"{p}.ctl.kill", f"{p}.hb.leader", f"{inbox}.>"),
        responses=True,  # answer qtd.ctl.<node>.<verb> once per request
    )


def _leader(p: str, name: str) -> Permissions:
    return Permissions(
        publish=(f"{p}.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.qtd_control.>",
                 "$KV.qtd_deploy.>"),
        subscribe=(f"{p}.>", f"{inbox_of(name)}.>", "$KV.qtd_control.>"),
        responses=True,
    )


def _operator(p: str, name: str) -> Permissions:
    return Permissions(
        publish=(
            "$KV.qtd_control.kill", f"{p}.ctl.kill", f"{p}.ctl.leader.*",
            *_kv_reads(_READ_BUCKETS),
            "$JS.API.DIRECT.GET.KV_qtd_control.$KV.qtd_control.kill",
            "$JS.API.DIRECT.GET.KV_qtd_deploy.>", "$JS.API.DIRECT.GET.KV_qtd_sources.>",
        ),
        subscribe=(f"{p}.ack.kill.*", f"{p}.hb.*", f"{inbox_of(name)}.>"),
    )


def _deployer(p: str, name: str) -> Permissions:
    return Permissions(
        publish=(
            "$KV.qtd_deploy.>", "$KV.qtd_sources.>", f"{p}.ctl.leader.versions",
            "$JS.API.STREAM.INFO.KV_qtd_deploy", "$JS.API.STREAM.INFO.KV_qtd_sources",
            "$JS.API.STREAM.CREATE.KV_qtd_deploy", "$JS.API.STREAM.CREATE.KV_qtd_sources",
            "$JS.API.DIRECT.GET.KV_qtd_deploy.>", "$JS.API.STREAM.MSG.GET.KV_qtd_deploy",
            "$JS.API.DIRECT.GET.KV_qtd_sources.>", "$JS.API.STREAM.MSG.GET.KV_qtd_sources",
        ),
        subscribe=(f"{inbox_of(name)}.>",),
    )


def permissions(role: Role, node: str | None = None, *, prefix: str = "qtd",
                name: str | None = None) -> Permissions:
    """Exactly what ``role``'s login may publish and subscribe to.

    Args:
        role: one of :data:`ROLES`.
        node: the agent's node (:data:`NAME_RULE`); agents only.
        prefix: the fleet's subject prefix (:class:`qtd.bus.subjects.Subjects`).
        name: the login's name for a leader, operator or deployer (default the role's name):
            it reads replies on ``_INBOX_<name>`` only, the inbox its clients use.

    Raises:
        ConfigError: an agent without a valid node.
        ValueError: an unknown role.
    """
    check_token("prefix", prefix)
    if role == "agent":
        login_name("agent", node)
        return _agent(node or "", prefix)
    if role == "leader":
        return _leader(prefix, name or role)
    if role == "operator":
        return _operator(prefix, name or role)
    if role == "deployer":
        return _deployer(prefix, name or role)
    if role == "system":
        return Permissions(publish=(CLAIMS_UPDATE,),
                           subscribe=(f"{inbox_of(SYSTEM_LOGIN)}.>",))
    raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
