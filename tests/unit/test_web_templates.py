"""The status page's HTML is Jinja2 templates, one per panel, autoescaped, and nowhere else:
no Python module of the page or the quality reports writes HTML."""

from __future__ import annotations

import re
from pathlib import Path

from qtd.fleetsnapshot import Agg, BotView, FleetSnapshot, KillView
from qtd.web import pages

ROOT = Path(__file__).resolve().parents[2] / "qtd"
TAG = re.compile(r"<(td|tr|th|section|div|span|table|p|h[1-6]|li|ul|b|code|a|button|form)[ >]")


def test_no_html_in_python_modules_of_the_page() -> None:
    found = [f"{p.relative_to(ROOT)}:{n}" for d in ("web", "quality")
             for p in sorted((ROOT / d).rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if TAG.search(line)]
    assert found == []


def test_every_template_loads() -> None:
    names = pages.ENV.list_templates()
    assert "overview.html" in names and "panels/bots.html" in names
    for name in names:
        pages.ENV.get_template(name)


def test_values_are_escaped_and_layout_breaks_are_not_output() -> None:
    bot = BotView(node="n<1>", bot='b"<script>', accounts=[], last_activity_age_s=None,
                  reported_pnl=None, agg=Agg())
    snap = FleetSnapshot(ts_ns=1, trading_day="2026-12-04", currency="USD", capital=0.0,
                         equity=0.0, peak_equity=0.0, drawdown_pct=0.0, totals=Agg(),
                         nodes=[], bots=[bot], accounts=[], symbols=[], positions=[],
                         caps=[], kill=KillView(), alerts=[], ingest={})
    html = pages.render("panels/bots.html", snap=snap, controls=False)
    assert "<script>" not in html and "b&#34;&lt;script&gt;" in html
    assert 'href="/bots/n%3C1%3E/b%22%3Cscript%3E"' in html
    assert "\n" not in html
