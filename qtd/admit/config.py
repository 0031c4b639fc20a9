"""Bot config files (``etc/bots/<bot>.toml``): schema and loading with every error collected.

Example::

    name = "momo-goog"                         # bot name, [A-Za-z0-9_-]{1,32}
    strategy = "strategies/ma_cross.py"        # this file's dir or one above it
    venue = "paper"
    account = "paper-main"
    symbols = ["GOOG"]                         # first = the strategy's default symbol
    risk_profile = "momo"                      # [strategies.<profile>] in the risk file
    # stage = "paper"                          # research|backtest|paper|shadow|live
    # risk_file = "../risk.toml"               # default: ../risk.toml beside bots/, if any
    # max_order_notional = 50000.0             # used only when no risk file is found

    [smoke]
    dataset = "goog_1d"                        # a data set (`qtd data list`); default: the
                                               # catalog's venue:SYMBOL:interval of this bot

    [params]                                   # the strategy's Params, checked by its schema
    fast = 10
    slow = 30
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from qtd.admit.problems import Problem, toml_lines
from qtd.admit.schema import check_struct
from qtd.catalog.named import smoke_data
from qtd.errors import ConfigError
from qtd.files import read_capped_text
from qtd.shipped import shipped_root

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Amount = Annotated[float, Meta(gt=0, lt=1e15)]


class SmokeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Smoke backtest settings.

    Attributes:
        dataset: a data set by name (``qtd data list``: bundled, or a catalog set
            ``venue:SYMBOL:interval``, or a symbol one set has); its bars are replayed as
            the bot's first symbol. Empty (the default): the catalog's set of the bot's
            venue and first symbol (shortest interval) when there is one, else ``goog_1d``
            (:func:`qtd.catalog.named.smoke_data`).
        max_bars: replay at most this many bars (the first ones), to bound admission time.
        hook_budget_s: per-hook time budget during the smoke run, seconds.
    """

    dataset: str = ""
    max_bars: Annotated[int, Meta(ge=10, le=100_000)] = 5000
    hook_budget_s: Annotated[float, Meta(gt=0, le=10)] = 0.5


class BotConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One bot: which strategy, where it trades, its params and risk profile (module doc)."""

    name: Name
    strategy: Annotated[str, Meta(min_length=1)]
    venue: Annotated[str, Meta(min_length=1)]
    account: Annotated[str, Meta(min_length=1)]
    symbols: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]
    risk_profile: str = ""
    risk_file: str = ""
    max_order_notional: Amount | None = None
    currency: str = "USD"
    params: dict[str, Any] = {}
    smoke: SmokeConfig = SmokeConfig()
    # lifecycle stage; "live" needs a passed gate result (qtd.gates)
    stage: Literal["research", "backtest", "paper", "shadow", "live"] = "paper"


class LoadedBot(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed bot config with where it came from."""

    path: Path
    config: BotConfig
    lines: dict[str, int]

    @property
    def strategy_path(self) -> Path:
        """The strategy file (:func:`resolve_strategy`)."""
        return resolve_strategy(self.path, self.config.strategy)

    @property
    def smoke_dataset(self) -> str:
        """The data set its smoke run and replay use (:class:`SmokeConfig` ``dataset``)."""
        cfg = self.config
        return smoke_data(cfg.smoke.dataset, cfg.venue, cfg.symbols[0])

    @property
    def profile(self) -> str:
        return self.config.risk_profile or self.config.name


CHECKOUT = shipped_root()
"""Where the sample ``strategies/`` of this ``qtd`` are: the source checkout it is imported
from, or an installed wheel's ``qtd/_shipped`` (:func:`qtd.shipped.shipped_root`)."""


def strategy_candidates(bot_file: Path, strategy: str) -> list[Path]:
    """Where a bot config's ``strategy`` may be, nearest first: an absolute path as is; a
    relative one against the bot file's directory, then each directory above it (as git
    looks for ``.git``), then the checkout or installed wheel qtd runs from
    (:data:`CHECKOUT`). So the samples' ``strategy = "strategies/ma_cross.py"`` finds the
    shipped ``strategies/`` from ``etc/bots/`` and from a copy of ``etc/`` anywhere, and a
    ``strategies/`` beside a copied ``etc/`` takes precedence. Admission records the file
    it used and its hash."""
    rel = Path(strategy)
    if rel.is_absolute():
        return [rel]
    here = bot_file.resolve().parent
    return [(d / rel).resolve() for d in (here, *here.parents, CHECKOUT)]


def resolve_strategy(bot_file: Path, strategy: str) -> Path:
    """The first of :func:`strategy_candidates` that is a file, else the nearest one (so a
    "not found" error names the path relative to the bot file)."""
    candidates = strategy_candidates(bot_file, strategy)
    return next((c for c in candidates if c.is_file()), candidates[0])


def load_bot_config(path: Path) -> tuple[LoadedBot | None, list[Problem]]:
    """Read and validate one bot config; return ``(bot or None, problems)``."""
    file = str(path)
    try:
        text = read_capped_text(path)
        data = tomllib.loads(text)
    except ConfigError as exc:
        return None, [Problem(file=file, field="<file>", value=exc.value, rule=exc.rule)]
    except OSError as exc:
        return None, [Problem(file=file, field="<file>", value=file,
                              rule=f"cannot read: {exc.strerror}")]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [Problem(file=file, field="<file>", value=None, rule=f"not TOML: {exc}")]
    lines = toml_lines(text)
    cfg, problems = check_struct(BotConfig, data, file=file, lines=lines)
    if cfg is None:
        return None, problems
    bot = LoadedBot(path=path, config=cfg, lines=lines)
    if not bot.strategy_path.is_file():
        return None, [Problem(file=file, field="strategy", value=cfg.strategy,
                              rule=f"strategy file not found: {bot.strategy_path} (nor "
                                   "in a directory above the bot file or in qtd's shipped files "
                                   f"{CHECKOUT})",
                              line=lines.get("strategy", 0))]
    return bot, []
