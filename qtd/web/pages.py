"""Server-rendered HTML: the fleet overview, a bot's drill-down and the login form.

Plain strings with every value escaped; the page works without JavaScript (numbers as of the
render), and ``/static/app.js`` keeps them live from the WebSocket. Controls are rendered
only for a logged-in operator (``csrf`` non-empty).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from qtd.fleetsnapshot import BotView, CapView, FleetSnapshot, LimitView, NodeView
from qtd.web import botrow
from qtd.web.detail import BotDetail

_NS = 1_000_000_000


def money(x: float | None) -> str:
    """``1,234.50`` (``–`` for None)."""
    return "–" if x is None else f"{x:,.2f}"


def _cls(x: float | None) -> str:
    return "neg" if x is not None and x < 0 else "pos" if x else ""


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).strftime("%Y-%m-%d %H:%M:%S") if ns else "–"


def _num(x: float | None, key: str = "", fmt: str = "money") -> str:
    text = money(x) if fmt == "money" else "–" if x is None else f"{x:{fmt}}"
    attr = f' data-k="{escape(key)}"' if key else ""
    return f'<td class="num {_cls(x)}"{attr}>{text}</td>'


def bar(frac: float | None, label: str = "", text: str = "", cls: str = "bar") -> str:
    """A utilisation bar (fraction of the limit; amber from 70 %, red from 90 %) showing
    ``text`` before the percentage, ``label`` as its tooltip."""
    if frac is None:
        return '<span class="muted">–</span>'
    fill = round(min(botrow.pct(frac), 100) / 5) * 5  # app.css .f0 .. .f100
    return (f'<span class="{cls} {botrow.level(frac)}" title="{escape(label)}"><i class="'
            f'f{fill}"></i><b>{escape(text)}{" " if text else ""}{botrow.pct(frac)}%</b></span>')


def limit_bars(limits: list[LimitView], currency: str) -> str:
    """One small bar per limit of a bot (``data-sig``: its layout, for the live updates)."""
    bars = "".join(bar(x.utilisation, botrow.limit_title(x, currency), botrow.limit_label(x),
                       "bar lim") for x in limits)
    return (f'<td class="lims" data-k="bot.lims" data-sig="{escape(botrow.layout(limits))}">'
            f'{bars or "<span class=muted>not reported</span>"}</td>')


def page(title: str, body: str, *, csrf: str = "", operator: str = "",
         auth_enabled: bool = False) -> str:
    """The HTML shell (dark, monospace) around ``body``."""
    if operator:
        who = (f'operator <b>{escape(operator)}</b> <form method="post" action="/logout" '
               f'class="inline"><button>log out</button></form>')
    elif auth_enabled:
        who = '<a href="/login">operator login</a> <span class="muted">(read-only)</span>'
    else:
        who = '<span class="muted">read-only: no operator token configured</span>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{escape(title)}</title>'
        f'<meta name="csrf" content="{escape(csrf)}">'
        '<link rel="stylesheet" href="/static/app.css"></head><body>'
        f'<header><a href="/" class="brand">qtd</a> <span id="conn" class="conn">'
        f'connecting…</span><span class="who">{who}</span></header>'
        f'<main>{body}</main><script src="/static/app.js"></script></body></html>')


def kill_line(scope: str, key: str, reason: str, who: str, kill_id: str) -> str:
    """One active kill as the banner says it (the same text as ``static/app.js``)."""
    return f"KILL {scope} {key} — {reason} ({who}) [{kill_id}]"


def _kill_banner(snap: FleetSnapshot, controls: bool = False) -> str:
    k = snap.kill
    hidden = "" if k.active else " hidden"
    text = " · ".join(escape(kill_line(a.scope, a.key, a.reason, a.operator or a.source,
                                       a.kill_id)) for a in k.kills)
    buttons = ('<div class="controls">' + "".join(
        _btn("resume", "kill", a.kill_id, f"release {escape(a.scope)} {escape(a.key)}")
        for a in k.kills) + "</div>") if controls and k.kills else ""
    return f'<div id="kill" class="kill{hidden}">{text}</div>{buttons}'


def _totals(snap: FleetSnapshot) -> str:
    t = snap.totals
    cells = [("PnL today", t.pnl_today, "fleet.pnl"), ("realized", t.realized, "fleet.realized"),
             ("unrealized", t.unrealized, "fleet.unrealized"), ("equity", snap.equity,
             "fleet.equity"), ("gross exposure", t.gross_exposure, "fleet.gross")]
    items = "".join(f'<div class="tot"><span>{n}</span><b class="{_cls(v)}" data-k="{k}">'
                    f'{money(v)}</b></div>' for n, v, k in cells)
    items += (f'<div class="tot"><span>drawdown</span><b data-k="fleet.dd" data-fmt="pct">'
              f'{snap.drawdown_pct:.2f}%</b></div><div class="tot"><span>orders / fills / '
              f'rejects</span><b data-k="fleet.counts">{botrow.counts(t, 3)}</b></div>')
    return (f'<section class="totals"><h1>fleet <small>{escape(snap.trading_day)} · '
            f'{escape(snap.currency)}</small></h1>{items}</section>')


def _table(cls: str, head: Iterable[str], rows: Iterable[str]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(rows) or f'<tr><td colspan="{len(list(head))}" class="muted">none</td></tr>'
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _btn(verb: str, target: str, key: str, label: str) -> str:
    return (f'<button class="ctl {verb}" data-verb="{verb}" data-target="{target}" '
            f'data-key="{escape(key)}">{label}</button>')


def _caps(caps: list[CapView]) -> str:
    rows = [f'<tr data-cap="{i}"><td>{escape(c.name)}{" ⚡" if c.tripped else ""}</td>'
            f'<td data-k="cap.key">{escape(c.key)}</td><td class="num" data-k="cap.value">'
            f'{money(c.value)}</td><td class="num">{money(c.limit)}</td><td>{escape(c.unit)}'
            f'</td><td data-k="cap.bar">'
            f'{bar(c.utilisation, c.name)}</td><td>{escape(c.level)}</td>'
            f'<td>{_cap_override(c)}</td></tr>'
            for i, c in enumerate(caps)]
    return '<h2>fleet caps</h2>' + _table(
        "caps", ["cap", "key", "value", "limit", "unit", "utilisation", "kill level",
                 "override (today)"], rows)


def _cap_override(c: CapView) -> str:
    o = c.override
    if o is None:
        return '<span class="muted">–</span>'
    return (f'<span class="neg">raised from {money(o.old_limit)} by {escape(o.operator)}: '
            f'{escape(o.reason)} (configured {money(o.configured_limit)}; until the '
            f'{escape(o.trading_day)} trading day ends)</span>')


def _node_row(n: NodeView, controls: bool) -> str:
    age = "–" if n.heartbeat_age_s is None else f"{n.heartbeat_age_s:.1f}s"
    alive = "alive" if n.alive else "DOWN"
    ctl = ("<td>" + _btn("kill", "node", n.node, "halt") + _btn("flatten", "node", n.node,
           "flatten") + _btn("resume", "node", n.node, "resume") + "</td>") if controls else ""
    return (f'<tr data-node="{escape(n.node)}"><td>{escape(n.node)}</td>'
            f'<td class="{"ok" if n.alive else "bad"}" data-k="node.alive">{alive}</td>'
            f'<td data-k="node.state">{escape(n.state)}</td><td class="num" data-k="node.age">'
            f'{age}</td><td class="num" data-k="node.bots">{n.bots_running}</td>'
            f'{_num(n.agg.pnl_today, "node.pnl")}{ctl}</tr>')


def _bot_row(b: BotView, snap: FleetSnapshot, pos: str, controls: bool) -> str:
    key = f"{b.node}/{b.bot}"
    ctl = ("<td>" + _btn("kill", "bot", b.bot, "kill") + _btn("flatten", "bot", b.bot,
           "flatten") + "</td>") if controls else ""
    href = f"/bots/{quote(b.node, safe='')}/{quote(b.bot, safe='')}"
    state = botrow.bot_state(b)
    return (f'<tr data-bot="{escape(key)}"><td><a href="{href}">{escape(key)}</a></td>'
            f'<td class="stage {escape(b.stage)}" data-k="bot.stage">{escape(b.stage or "–")}'
            f'</td><td class="state {state.lower()}" data-k="bot.state">{escape(state)}</td>'
            f'<td class="why" data-k="bot.why">{escape(botrow.bot_why(b, snap.ts_ns))}</td>'
            f'{_num(b.agg.pnl_today, "bot.pnl")}'
            f'{_num(b.agg.realized + b.agg.unrealized, "bot.total")}'
            f'<td data-k="bot.pos">{escape(pos)}</td>{_num(b.agg.gross_exposure, "bot.gross")}'
            f'{limit_bars(b.limits, snap.currency)}'
            f'<td class="num" data-k="bot.counts">{botrow.counts(b.agg)}</td>'
            f'<td class="denies" data-k="bot.denies">{escape(botrow.denials(b))}</td>{ctl}</tr>')


def _alerts(snap: FleetSnapshot, controls: bool) -> str:
    rows = [f'<li class="sev {escape(a.severity)}" data-alert="{escape(a.alert_id)}">'
            f'<b>{escape(a.severity)}</b> <span>{escape(a.status)}</span> {escape(a.title)} '
            f'<small>{escape(a.alert_id)} · {_ts(a.opened_ns)}'
            f'{" · " + escape(a.operator) if a.operator else ""}</small>'
            + (_btn("ack", "alert", a.alert_id, "ack") if controls and a.status == "open"
               else "") + "</li>" for a in snap.alerts]
    body = "".join(rows) or '<li class="muted">no open alerts</li>'
    return f'<h2>alerts</h2><ul id="alerts" class="alerts">{body}</ul>'


def overview(snap: FleetSnapshot, *, controls: bool) -> str:
    """The fleet overview body (totals, fleet caps, chart, alerts, nodes, bots, symbols)."""
    positions = botrow.positions_by_bot(snap)
    node_head = ["node", "heartbeat", "state", "age", "bots", "PnL today"]
    bot_head = ["bot", "stage", "state", "why (since)", "PnL today", "PnL total", "position",
                "gross exposure", "risk limits used (agent)", "ord/fill/rej/deny",
                "top deny reasons"]
    glob = ('<div class="controls">' + _btn("kill", "global", "", "KILL ALL") +
            _btn("flatten", "global", "", "FLATTEN ALL") + _btn("resume", "global", "",
            "RESUME") + "</div>") if controls else ""
    sym_rows = [f'<tr data-symbol="{escape(s.symbol)}"><td>{escape(s.symbol)}</td>'
                f'{_num(s.net_qty, "sym.qty", ",g")}{_num(s.mark, "sym.mark")}'
                f'{_num(s.agg.net_exposure, "sym.net")}<td data-k="sym.bar">'
                f'{bar(s.cap_utilisation, s.symbol)}</td></tr>' for s in snap.symbols]
    bot_rows = [_bot_row(b, snap, positions.get((b.node, b.bot), "flat"), controls)
                for b in snap.bots]
    return (
        _kill_banner(snap, controls) + '<div id="changed" class="changed hidden">the fleet changed '
        '(new bots, nodes or symbols): <a href="">reload</a> to see them</div>' +
        _totals(snap) + glob + _caps(snap.caps) +
        '<section class="chart"><h2>PnL today (live)</h2><canvas id="chart" width="900" '
        f'height="180" data-series="fleet" data-t="{snap.ts_ns // 1_000_000}"></canvas>'
        '</section>' + _alerts(snap, controls) +
        "<h2>nodes</h2>" +
        _table("nodes", node_head + (["control"] if controls else []),
               [_node_row(n, controls) for n in snap.nodes]) + "<h2>bots</h2>" +
        _table("bots", bot_head + (["control"] if controls else []), bot_rows) +
        "<h2>symbols</h2>" + _table("symbols", ["symbol", "net qty", "mark", "net exposure",
                                                "cap"], sym_rows) + _dialog(controls))


def _dialog(controls: bool) -> str:
    if not controls:
        return ""
    return ('<dialog id="confirm"><form method="dialog"><h3 id="confirm-title"></h3>'
            '<label>reason <input name="reason" required maxlength="200"></label>'
            '<label>type <code id="confirm-word"></code> to confirm <input name="confirm" '
            'required autocomplete="off"></label><p id="confirm-error" class="neg"></p>'
            '<menu><button value="cancel" formnovalidate>cancel</button>'
            '<button value="ok" class="danger">confirm</button></menu></form></dialog>')


def bot_page(d: BotDetail, *, controls: bool) -> str:
    """The drill-down body of one bot."""
    key = f"{d.node}/{d.bot}"
    m, a = d.metrics, d.admission
    pf = "∞" if m.profit_factor is None else f"{m.profit_factor:.2f}"
    adm = (f"{escape(a.strategy)} · params <code>{escape(a.params_hash)}</code> · admitted "
           f"{_ts(a.ts_ns)}" if a else '<span class="muted">no admission recorded</span>')
    facts = [("PnL", money(m.pnl)), ("Sharpe", f"{m.sharpe:.2f}"),
             ("win rate", f"{m.win_rate * 100:.1f}%"), ("max drawdown",
             f"{m.max_drawdown * 100:.2f}%"), ("profit factor", pf), ("trades", str(m.trades)),
             ("fills", str(m.fills))]
    tots = "".join(f'<div class="tot"><span>{n}</span><b>{v}</b></div>' for n, v in facts)
    live = d.view.agg.pnl_today if d.view else None
    rows = [f"<tr><td><code>{escape(r.client_order_id)}</code></td><td>{_ts(r.ts_ns)}</td>"
            f"<td>{escape(r.symbol)}</td><td>{escape(r.side)}</td>{_num(r.qty, fmt=',g')}"
            f'<td class="state {r.state.lower()}">{escape(r.state)}</td>{_num(r.decision_price)}'
            f"{_num(r.avg_fill_price)}{_num(r.slippage_bps, fmt='+.1f')}"
            f"{_num(r.latency_ms, fmt='.1f')}<td>{escape(r.note)}</td></tr>" for r in d.blotter]
    ctl = ('<div class="controls">' + _btn("kill", "bot", d.bot, "kill bot") +
           _btn("flatten", "bot", d.bot, "flatten bot") + "</div>") if controls else ""
    stage = d.view.stage if d.view and d.view.stage else "–"
    return (
        f'<section class="totals" data-bot="{escape(key)}"><h1>{escape(key)} <small>stage '
        f'<span class="stage {escape(stage)}">{escape(stage)}</span> · {adm}'
        f'</small></h1><div class="tot"><span>PnL today (live)</span><b data-k="bot.pnl" '
        f'class="{_cls(live)}">{money(live)}</b></div>{tots}</section>{ctl}'
        + _why_section(d) +
        f'<section class="chart"><h2>PnL today (live)</h2><canvas id="chart" width="900" '
        f'height="160" data-series="{escape(key)}" data-t="{d.ts_ns // 1_000_000}"></canvas>'
        '</section>'
        f'<section class="chart"><h2>equity curve (PnL after each fill)</h2><canvas id="equity"'
        f' width="900" height="160" data-points="{escape(_points(d.equity))}"></canvas></section>'
        + _limits_table(d) + "<h2>orders and fills</h2>" + _table("blotter", [
            "client_order_id", "time (UTC)", "symbol", "side", "qty", "state", "decision",
            "fill price", "slippage bps", "ack ms", "note"], rows) + _dialog(controls))


def _why_section(d: BotDetail) -> str:
    """The bot's effective state, why and since when, every cause with its reading, and
    its deny reasons (all from the page's snapshot; state and why stay live)."""
    v = d.view
    state = botrow.bot_state(v) if v else "UNKNOWN"
    text = botrow.bot_why(v, d.ts_ns) if v else "its agent has reported nothing yet"
    rows = [f'<tr class="{"" if c.state == state else "muted"}"><td>{escape(c.kind)}</td>'
            f'<td class="state {c.state.lower()}">{escape(c.state)}</td><td>{escape(c.scope)}'
            f'</td><td>{escape(c.key)}</td><td>{escape(c.node)}</td><td>{escape(c.check)}</td>'
            f'{_num(c.value, fmt=",g")}{_num(c.limit, fmt=",g")}<td>{escape(c.unit)}</td>'
            f'<td>{escape(c.kill_id)}</td><td>{escape(c.operator)}</td>'
            f'<td>{escape(c.reason)}</td><td>{_ts(c.since_ns)}</td></tr>'
            for c in (v.causes if v else [])]
    denies = [f'<tr><td>{escape(x.check)}</td><td class="num">{x.count}</td></tr>'
              for x in (v.deny_reasons if v else [])]
    return (f'<section class="why"><h2>state <b class="state {state.lower()}" '
            f'data-k="bot.state">{escape(state)}</b></h2><p data-k="bot.why">{escape(text)}</p>'
            + _table("causes", ["cause", "state", "scope", "key", "node", "check", "value",
                                "limit", "unit", "kill id", "operator", "reason",
                                "since (UTC)"], rows)
            + "<h2>denied orders by check</h2>" + _table("denies", ["check", "denied"], denies)
            + "</section>")


def _limits_table(d: BotDetail) -> str:
    limits = d.view.limits if d.view else []
    rows = [f"<tr><td>{escape(x.scope)}</td><td>{escape(x.key)}</td><td>{escape(x.name)}</td>"
            f'<td class="num">{x.used:,.2f}</td><td class="num">{x.limit:,.2f}</td><td>'
            f"{escape(d.currency if x.unit == 'currency' else x.unit)}</td>"
            f"<td>{bar(x.utilisation, botrow.limit_title(x, d.currency))}</td></tr>"
            for x in limits]
    return ("<h2>risk limits (as its agent last reported them)</h2>" + _table(
        "limits", ["scope", "key", "name", "used", "limit", "unit", "utilisation"], rows))


def _points(points: list[tuple[int, float]]) -> str:
    return ";".join(f"{t // 1_000_000},{v:.2f}" for t, v in points[-2000:])


def login_form(error: str = "") -> str:
    """The operator login body."""
    err = f'<p class="neg">{escape(error)}</p>' if error else ""
    return ('<section class="login"><h1>operator login</h1>' + err +
            '<form method="post" action="/login"><label>operator <input name="operator" '
            'required maxlength="64" pattern="[A-Za-z0-9._@\\-]+" autocomplete="username">'
            '</label><label>token <input name="token" type="password" required '
            'autocomplete="current-password"></label><button>log in</button></form></section>')
