"""Server-rendered HTML: the Jinja2 templates of ``qtd/web/templates`` and what they call.

One template per panel (``templates/panels/*.html``); a page (``overview.html``,
``bot.html``, ``daily.html``, ``login.html``) extends ``base.html`` and includes its panels.
Autoescape is on: every value is escaped unless a macro made it markup. The page works
without JavaScript (numbers as of the render), and ``/static/app.js`` keeps the cells marked
``data-k`` live from the WebSocket. Controls are rendered only for a logged-in operator
(``controls`` true).

Layout rule of the templates: a line break (with the indentation after it) next to a tag
or a ``{% ... %}``/``{{ ... }}`` is layout only and is not output (:class:`Spaceless`); a
space the page needs is written within a line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from jinja2.ext import Extension
from starlette.templating import Jinja2Templates

from qtd import __version__
from qtd.quality.execution_quality import ExecBreach, ExecRow
from qtd.quality.surveil import Finding
from qtd.web import botrow

_NS = 1_000_000_000
_LAYOUT = re.compile(r"(?<=[>}])\n[ \t]*|\n[ \t]*(?=[<{])")


class Spaceless(Extension):
    """Drops the templates' layout line breaks (module docstring) when a template loads."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return _LAYOUT.sub("", source)


def money(x: float | None) -> str:
    """``1,234.50`` (``–`` for None)."""
    return "–" if x is None else f"{x:,.2f}"


def sign(x: float | None) -> str:
    """CSS class of a figure: ``neg`` below zero, ``pos`` above, "" at zero or None."""
    return "neg" if x is not None and x < 0 else "pos" if x else ""


def fmt(x: float | None, spec: str) -> str:
    """``format(x, spec)``; ``–`` for None."""
    return "–" if x is None else format(x, spec)


def utc(ns: int) -> str:
    """``2026-12-06 08:41:03`` (UTC) of a time in ns; ``–`` for 0."""
    return datetime.fromtimestamp(ns / _NS, UTC).strftime("%Y-%m-%d %H:%M:%S") if ns else "–"


def kill_line(scope: str, key: str, reason: str, who: str, kill_id: str) -> str:
    """One active kill as the banner says it (the same text as ``static/app.js``)."""
    return f"KILL {scope} {key} — {reason} ({who}) [{kill_id}]"


def points(pts: list[tuple[int, float]]) -> str:
    """An equity curve for ``data-points``: ``ms,pnl;ms,pnl;...`` (the last 2,000)."""
    return ";".join(f"{t // 1_000_000},{v:.2f}" for t, v in pts[-2000:])


def crossed(breaches: list[ExecBreach], r: ExecRow, metric: str) -> bool:
    """Whether ``metric`` of row ``r`` crossed its threshold (shown red)."""
    return any((b.bot, b.venue, b.symbol, b.metric) == (r.bot, r.venue, r.symbol, metric)
               for b in breaches)


def finding_line(f: Finding) -> str:
    """``[wash] ... (events: seq 12 c-1, seq 13 c-2)``."""
    return f"[{f.pattern}] {f.message} (events: " + ", ".join(
        f"seq {e.seq} {e.client_order_id}" for e in f.events) + ")"


def environment() -> Environment:
    """The templates' environment: package loader (the templates ship in the wheel),
    autoescape on, undefined names are errors, the filters and helpers above, and
    ``qtd_version`` (this process's: the leader's, in the page header)."""
    env = Environment(loader=PackageLoader("qtd.web", "templates"), autoescape=True,
                      undefined=StrictUndefined, extensions=[Spaceless])
    env.filters.update(money=money, sign=sign, fmt=fmt, utc=utc, finding_line=finding_line,
                       urlpart=lambda s: quote(s, safe=""))
    env.globals.update(
        qtd_version=__version__,
        level=botrow.level, pct=botrow.pct, bar_fill=botrow.fill, kill_line=kill_line,
        points=points, crossed=crossed, counts=botrow.counts, bot_state=botrow.bot_state,
        bot_why=botrow.bot_why, denials=botrow.denials, layout=botrow.layout,
        limit_bars=botrow.limit_bars, limit_title=botrow.limit_title,
        positions_by_bot=botrow.positions_by_bot)
    return env


ENV = environment()
TEMPLATES = Jinja2Templates(env=ENV)


def compile_all() -> None:
    """Compile every template now (about 0.5 s once per process; Jinja keeps them), so that
    the first page served costs no more than the next."""
    for name in ENV.list_templates():
        ENV.get_template(name)


def render(name: str, **context: Any) -> str:
    """A template (or one panel, ``panels/<name>.html``) rendered to a string."""
    return ENV.get_template(name).render(**context)
