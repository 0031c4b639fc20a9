"""Pattern-to-strategy mapper: ordered rules in ``etc/routes.toml``; the first match wins.

Each ``[[route]]`` may constrain (all given conditions must hold; absent = any):

* ``venue`` — exact venue name;
* ``symbol`` — a glob (``"*USDT"``, fnmatch, case-sensitive) or ``symbol_regex`` — a Python
  regex that must match the whole symbol;
* ``asset_class`` — ``equity | index | fx | crypto | future`` (from
  :mod:`qtd.admit.instruments`);
* ``session`` — a session name: a ``[sessions.<name>]`` table of the file (``tz``,
  ``days``, ``start``, ``end``; ``end <= start`` means the session runs past midnight),
  built-in ``FX`` (Sun 17:00 → Fri 17:00 New York) or ``24x7``, or any
  ``exchange-calendars`` code (``XNYS``, ``XNAS``, ``CMES``, ``XLON``, …), which brings that
  exchange's holidays and early closes (:mod:`qtd.calendars`);
* ``regime`` — ``trend | range | high_vol`` from :mod:`qtd.regime` on recent bars;

and yields ``strategy`` (a file stem in ``strategies/``), ``preset`` (a bot config name in
``etc/bots/`` whose ``[params]`` are the preset) and ``risk_profile``.
:func:`explain` reports every rule tried and why it matched or not; :func:`check_routes`
(run by ``qtd validate``) flags unknown names and rules that can never match.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec
from msgspec import Meta

from qtd.admit.instruments import INSTRUMENTS, AssetClass, Instrument
from qtd.admit.problems import Problem, toml_lines
from qtd.admit.schema import check_struct
from qtd.calendars import ExchangeSession, is_calendar
from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.regime import Regime

Day = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
DAYS: tuple[Day, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HHMM = Annotated[str, Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")]
RegimeName = Literal["trend", "range", "high_vol"]


class Session(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Weekly trading hours: opens on each of ``days`` at ``start`` local time in ``tz``,
    closes at ``end`` the same day (or the next day when ``end <= start``)."""

    tz: str = "UTC"
    days: list[Day] = msgspec.field(default_factory=lambda: list(DAYS))
    start: HHMM = "00:00"
    end: HHMM = "24:00"

    def contains(self, ts_ns: int) -> bool:
        """True if UTC ns ``ts_ns`` falls inside the session."""
        local = datetime.fromtimestamp(ts_ns / 1e9, UTC).astimezone(ZoneInfo(self.tz))
        t, day = local.time(), DAYS[local.weekday()]
        start, end = _hhmm(self.start), _hhmm(self.end)
        if start < end:
            return day in self.days and start <= t < end
        prev = DAYS[(local - timedelta(days=1)).weekday()]
        return (day in self.days and t >= start) or (prev in self.days and t < end)


def _hhmm(text: str) -> dtime:
    return dtime.max if text == "24:00" else dtime.fromisoformat(text)


_WEEK: list[Day] = ["Mon", "Tue", "Wed", "Thu", "Fri"]
BUILTIN_SESSIONS: dict[str, Session] = {
    "FX": Session(tz="America/New_York", days=["Sun", "Mon", "Tue", "Wed", "Thu"],
                  start="17:00", end="17:00"),
    "24x7": Session(),
}


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One route (module docstring)."""

    name: str
    strategy: str
    preset: str
    risk_profile: str
    venue: str | None = None
    symbol: str | None = None
    symbol_regex: str | None = None
    asset_class: AssetClass | None = None
    session: str | None = None
    regime: RegimeName | None = None

    def symbol_matches(self, symbol: str) -> bool:
        if self.symbol is not None and not fnmatch.fnmatchcase(symbol, self.symbol):
            return False
        return self.symbol_regex is None or re.fullmatch(self.symbol_regex, symbol) is not None


class RoutesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A routes file: ordered ``route`` rules, custom ``sessions``, ``strategies_dir``
    (relative to the file) where strategy names are looked up."""

    route: list[Rule] = []
    sessions: dict[str, Session] = {}
    strategies_dir: str = "../strategies"

    def session(self, name: str) -> Session | ExchangeSession | None:
        """The named session: the file's own, a built-in, or an exchange calendar."""
        found = self.sessions.get(name) or BUILTIN_SESSIONS.get(name)
        if found is None and is_calendar(name):
            return ExchangeSession(name)
        return found


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """What to route: an instrument at a time (UTC ns) in a regime."""

    venue: str
    symbol: str
    asset_class: str | None
    ts_ns: int
    regime: Regime = Regime.UNKNOWN


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """One rule tried: its position (1-based), name, match and one reason per condition."""

    index: int
    name: str
    matched: bool
    reasons: list[str]


def match(rule: Rule, q: Query, cfg: RoutesConfig) -> tuple[bool, list[str]]:
    """Evaluate every condition of ``rule`` on ``q``; return (all hold, reasons)."""
    checks: list[tuple[bool, str]] = []
    if rule.venue is not None:
        checks.append((rule.venue == q.venue, f"venue {q.venue!r} vs {rule.venue!r}"))
    if rule.symbol is not None:
        ok = fnmatch.fnmatchcase(q.symbol, rule.symbol)
        checks.append((ok, f"symbol {q.symbol!r} vs glob {rule.symbol!r}"))
    if rule.symbol_regex is not None:
        ok = re.fullmatch(rule.symbol_regex, q.symbol) is not None
        checks.append((ok, f"symbol {q.symbol!r} vs regex {rule.symbol_regex!r}"))
    if rule.asset_class is not None:
        checks.append((rule.asset_class == q.asset_class,
                       f"asset class {q.asset_class!r} vs {rule.asset_class!r}"))
    if rule.session is not None:
        sess = cfg.session(rule.session)
        ok = sess is not None and sess.contains(q.ts_ns)
        when = datetime.fromtimestamp(q.ts_ns / 1e9, UTC).strftime("%a %Y-%m-%d %H:%MZ")
        checks.append((ok, f"{when} {'in' if ok else 'outside'} session {rule.session!r}"))
    if rule.regime is not None:
        checks.append((rule.regime == q.regime, f"regime {q.regime} vs {rule.regime!r}"))
    reasons = [("ok   " if ok else "FAIL ") + text for ok, text in checks] or ["ok   catch-all"]
    return all(ok for ok, _ in checks), reasons


def explain(cfg: RoutesConfig, q: Query) -> tuple[Rule | None, list[Trace]]:
    """Try the rules in order; return (first matching rule or None, every trace).

    Rules after the first match are still evaluated and reported (marked in the CLI as not
    reached), so an operator sees what would have matched next.
    """
    traces, chosen = [], None
    for i, rule in enumerate(cfg.route, 1):
        ok, reasons = match(rule, q, cfg)
        traces.append(Trace(index=i, name=rule.name, matched=ok, reasons=reasons))
        if ok and chosen is None:
            chosen = rule
    return chosen, traces


def load_routes(path: Path, *, partial: bool = False
                ) -> tuple[RoutesConfig | None, list[Problem]]:
    """Parse and schema-check a routes file, all errors collected. With ``partial`` the
    rules that passed are still returned (for admission to check them further)."""
    file = str(path)
    try:
        text = read_capped_text(path)
        data = tomllib.loads(text)
    except ConfigError as exc:
        return None, [Problem(file=file, field="<file>", value=exc.value, rule=exc.rule)]
    except OSError as exc:
        return None, [Problem(file=file, field="<file>", value=file, rule=f"cannot read: {exc}")]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [Problem(file=file, field="<file>", value=None, rule=f"not TOML: {exc}")]
    lines = toml_lines(text)
    problems: list[Problem] = []
    rules: list[Rule] = []
    routes = data.get("route", [])
    for i, raw in enumerate(routes if isinstance(routes, list) else []):
        rule, errs = check_struct(Rule, raw, file=file, prefix=f"route[{i}]", lines=lines)
        problems += errs
        rules += [rule] if rule is not None else []
    sessions = data.get("sessions") or {}
    for name, raw in sessions.items() if isinstance(sessions, dict) else []:
        problems += check_struct(Session, raw, file=file, prefix=f"sessions.{name}")[1]
    rest = {k: v for k, v in data.items() if k != "route"}
    cfg, more = check_struct(RoutesConfig, rest, file=file, lines=lines)
    problems += [p for p in more if not p.field.startswith("sessions.")]
    if cfg is not None:
        cfg = msgspec.structs.replace(cfg, route=rules)
    if problems and not partial:
        return None, problems
    return cfg, problems


def _instruments() -> list[Instrument]:
    return [inst for table in INSTRUMENTS.values() for inst in table.values()]


def _covers(earlier: Rule, later: Rule, reach: dict[str, set[tuple[str, str]]]) -> bool:
    """True if ``earlier`` matches everything ``later`` can match (so ``later`` is dead)."""
    same = all(getattr(earlier, f) in (None, getattr(later, f)) for f in ("session", "regime"))
    return same and reach[later.name] <= reach[earlier.name]


def check_routes(path: Path, *, bot_files: dict[str, Path] | None = None) -> list[Problem]:
    """Admission checks of a routes file (see the module docstring).

    Args:
        path: the routes TOML file.
        bot_files: bot name → bot config path of the admitted bot configs (the presets).

    Problems: schema errors; bad regex; unknown venue, session, strategy or preset; a
    preset running another strategy; duplicate rule names; a rule matching no listed
    instrument; a rule shadowed by an earlier one that matches all it could match.
    """
    cfg, problems = load_routes(path, partial=True)
    if cfg is None:
        return problems
    file, lines = str(path), toml_lines(read_capped_text(path))
    strategies = {p.stem for p in (path.parent / cfg.strategies_dir).glob("*.py")}
    presets = _preset_strategies(bot_files or {})

    def bad(i: int, fld: str, value: object, rule: str) -> None:
        line = lines.get(f"route[{i}].{fld}", lines.get(f"route[{i}]", 0))
        problems.append(Problem(file=file, field=f"route[{i}].{fld}", value=value, rule=rule,
                                line=line))

    reach: dict[str, set[tuple[str, str]]] = {}
    seen: set[str] = set()
    for i, r in enumerate(cfg.route):
        if r.name in seen:
            bad(i, "name", r.name, "duplicate rule name")
        seen.add(r.name)
        _check_names(r, i, cfg, strategies, presets, bad)
        try:
            reach[r.name] = {
                (x.venue, x.symbol) for x in _instruments()
                if r.venue in (None, x.venue) and r.asset_class in (None, x.asset_class)
                and r.symbol_matches(x.symbol)}
        except re.error as exc:
            bad(i, "symbol_regex", r.symbol_regex, f"invalid regex: {exc}")
            continue
        if not reach[r.name]:
            bad(i, "name", r.name, "can never match: no listed instrument fits venue, "
                "symbol and asset_class")
            continue
        for e in cfg.route[:i]:
            if e.name in reach and e.name != r.name and _covers(e, r, reach):
                bad(i, "name", r.name, f"can never match: shadowed by earlier rule {e.name!r}")
                break
    return problems


def _preset_strategies(bot_files: dict[str, Path]) -> dict[str, str]:
    out = {}
    for name, p in bot_files.items():
        try:
            out[name] = Path(tomllib.loads(read_capped_text(p)).get("strategy", "")).stem
        except (OSError, UnicodeDecodeError, ConfigError, tomllib.TOMLDecodeError):
            continue
    return out


def _check_names(r: Rule, i: int, cfg: RoutesConfig, strategies: set[str],
                 presets: dict[str, str], bad: object) -> None:
    report = bad  # (index, field, value, rule) -> None
    assert callable(report)
    if r.venue is not None and r.venue not in INSTRUMENTS:
        report(i, "venue", r.venue, f"unknown venue; known: {', '.join(sorted(INSTRUMENTS))}")
    if r.session is not None and cfg.session(r.session) is None:
        known = sorted({*BUILTIN_SESSIONS, *cfg.sessions})
        report(i, "session", r.session, f"unknown session; known: {', '.join(known)} "
               "or an exchange-calendars code (e.g. XNYS, XNAS, CMES)")
    if r.strategy not in strategies:
        report(i, "strategy", r.strategy,
               f"unknown strategy; known: {', '.join(sorted(strategies)) or 'none'}")
    if r.preset not in presets:
        report(i, "preset", r.preset,
               f"unknown preset (bot config); known: {', '.join(sorted(presets)) or 'none'}")
    elif presets[r.preset] != r.strategy:
        report(i, "preset", r.preset,
               f"preset runs strategy {presets[r.preset]!r}, not {r.strategy!r}")
