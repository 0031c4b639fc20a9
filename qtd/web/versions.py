"""The status page's "versions" section: per bot and node, the desired deployed version
against the running one (:mod:`qtd.leader.versions`)."""

from __future__ import annotations

from html import escape

from qtd.deploy.model import VersionRow

_CLS = {"ok": "pos", "behind": "neg", "refused": "neg", "pending": "muted"}


def _v(n: int, h: str) -> str:
    return f"v{n} <code>{escape(h[:12])}</code>" if h else "–"


def section_html(rows: list[VersionRow]) -> str:
    """HTML of the section (one row per bot and node)."""
    body = "".join(
        f"<tr><td>{escape(r.bot)}</td><td>{escape(r.node or '–')}</td>"
        f"<td>{_v(r.desired_version, r.desired_hash)}</td>"
        f"<td>{_v(r.running_version, r.running_hash)}</td>"
        f'<td class="{_CLS.get(r.status, "")}" title="{escape(r.refused_reason)}">'
        f"{escape(r.status)}</td><td>{escape(r.stage)}{' canary' if r.canary else ''}</td></tr>"
        for r in rows) or '<tr><td colspan="6" class="muted">no versions reported</td></tr>'
    return ('<section id="versions"><h2>versions</h2><table class="versions"><thead><tr>'
            "<th>bot</th><th>node</th><th>desired</th><th>running</th><th>status</th>"
            f"<th>stage</th></tr></thead><tbody>{body}</tbody></table></section>")


def versions_section(rows: list[VersionRow] | None) -> str:
    """The section for the overview page ("" when the source has no version table)."""
    return "" if rows is None else section_html(rows)
