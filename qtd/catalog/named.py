"""Market data by name, for every consumer (backtests, sweeps, admission, reports, qtd up).

A name is, in this order: a bundled data set (``"goog_1d"``, :mod:`qtd.data`); a catalog set
(``"binance:ETHUSDT:1h"``, :mod:`qtd.catalog.store`); an existing bar file (CSV or Parquet,
:func:`qtd.feeds.loaders.load_bars`); or a symbol (``"GOOG"``, ``"ETHUSDT"``) that exactly one
bundled or catalog set has. Anything else is a :class:`~qtd.errors.ConfigError` that lists
the sets that match (a symbol several sets have) or every known set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from qtd.catalog.keys import SetKey, is_set_name
from qtd.catalog.store import Catalog
from qtd.data import DATASETS, load_dataset
from qtd.errors import ConfigError
from qtd.feeds.bars import MarketData
from qtd.feeds.loaders import load_bars

DEFAULT_DATA = "goog_1d"
"""The data set of a bot whose ``[smoke].dataset`` is unset and whose own venue and symbol
the catalog does not hold."""


class DataRef(msgspec.Struct, frozen=True, kw_only=True):
    """What a data name resolved to.

    Attributes:
        kind: ``"bundled"``, ``"catalog"`` or ``"file"``.
        name: the bundled set's name, the catalog set's ``venue:SYMBOL:interval``, or the
            file path.
        symbol: the symbol of the set (a file: its name up to the first dot, upper case).
    """

    kind: Literal["bundled", "catalog", "file"]
    name: str
    symbol: str


def set_names(catalog: Catalog) -> list[str]:
    """Every bundled set's name, then every catalog set's name."""
    return [*DATASETS, *(key.name for key in catalog.set_keys())]


def matching(symbol: str, catalog: Catalog) -> list[DataRef]:
    """The bundled and catalog sets whose symbol is ``symbol`` (any case)."""
    wanted = symbol.strip().upper()
    bundled = [
        DataRef(kind="bundled", name=info.name, symbol=info.symbol)
        for info in DATASETS.values()
        if info.symbol.upper() == wanted
    ]
    fetched = [
        DataRef(kind="catalog", name=key.name, symbol=key.symbol)
        for key in catalog.set_keys()
        if key.symbol == wanted
    ]
    return bundled + fetched


def resolve_data(text: str, catalog: Catalog | None = None, *, field: str = "data") -> DataRef:
    """Resolve a data name (module docstring).

    Args:
        text: the name as the operator wrote it.
        catalog: the catalog to look in (default: :class:`Catalog` at its default root).
        field: the option or config field the name came from, for errors.

    Raises:
        ConfigError: a catalog set the catalog lacks, a bad set name, a symbol several sets
            have (the error lists them), or nothing by that name (the error lists every set).
    """
    catalog = catalog or Catalog()
    if text.lower() in DATASETS:
        info = DATASETS[text.lower()]
        return DataRef(kind="bundled", name=info.name, symbol=info.symbol)
    if is_set_name(text) and not Path(text).is_file():
        key = SetKey.parse(text)
        if not catalog.has(key):
            raise _error(
                text,
                field,
                f"the catalog ({catalog.root}) has no set {key.name}; fetch it "
                f"with `qtd data fetch {key.venue} {key.symbol} --interval {key.interval} "
                f"--start ...` or import a file with `qtd data import`; known sets: "
                f"{_listed(set_names(catalog))}",
            )
        return DataRef(kind="catalog", name=key.name, symbol=key.symbol)
    if Path(text).is_file():
        return DataRef(kind="file", name=text, symbol=Path(text).name.split(".")[0].upper())
    found = matching(text, catalog)
    if len(found) == 1:
        return found[0]
    if found:
        raise _error(
            text,
            field,
            f"symbol {text.upper()} is in {len(found)} sets: "
            f"{_listed([ref.name for ref in found])}; name one of them",
        )
    raise _error(
        text,
        field,
        f"no data set, file or symbol by that name; known sets: {_listed(set_names(catalog))}",
    )


def load_data_ref(
    ref: DataRef, catalog: Catalog | None = None, *, limit: int | None = None
) -> list[MarketData]:
    """The bars (or trades) ``ref`` names, the first ``limit`` of them if given (a catalog
    set then reads only the months they are in).

    Raises:
        ConfigError: a file that fails validation.
    """
    if ref.kind == "catalog":
        catalog = catalog or Catalog()
        key = SetKey.parse(ref.name)
        span = catalog.span(key) if limit is not None else None
        end = None if span is None or limit is None else span[0] + limit * key.interval_ns
        items: list[MarketData] = list(catalog.read(key, None, end))
    elif ref.kind == "bundled":
        items = list(load_dataset(ref.name))
    else:
        items = list(load_bars(ref.name, ref.symbol))
    return items if limit is None else items[:limit]


def own_set(venue: str, symbol: str, catalog: Catalog | None = None) -> SetKey | None:
    """The catalog's set of ``venue`` and ``symbol`` with the shortest interval, if any."""
    wanted = symbol.strip().upper()
    mine = [k for k in (catalog or Catalog()).set_keys() if (k.venue, k.symbol) == (venue, wanted)]
    return min(mine, key=lambda k: k.interval_ns) if mine else None


def smoke_data(dataset: str, venue: str, symbol: str, catalog: Catalog | None = None) -> str:
    """A bot's data set name: its ``[smoke].dataset`` if set, else its own catalog set
    (:func:`own_set` of its venue and first symbol), else :data:`DEFAULT_DATA`."""
    if dataset:
        return dataset
    own = own_set(venue, symbol, catalog)
    return DEFAULT_DATA if own is None else own.name


class DataSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Size and range of a data set (for replay pacing).

    Attributes:
        rows: bars or trades.
        first_ns: first item's time, UTC ns.
        last_ns: last item's time, UTC ns.
        ticks: trades rather than bars.
    """

    rows: int
    first_ns: int
    last_ns: int
    ticks: bool


def summary(ref: DataRef, catalog: Catalog | None = None) -> DataSummary:
    """Rows and range of ``ref`` (a bundled or catalog set from its metadata; a file by
    loading it).

    Raises:
        ConfigError: a file that fails validation.
    """
    if ref.kind == "bundled":
        info = DATASETS[ref.name]
        return DataSummary(
            rows=info.rows,
            first_ns=info.first_ts_ns,
            last_ns=info.last_ts_ns,
            ticks=info.kind == "ticks",
        )
    if ref.kind == "catalog":
        catalog = catalog or Catalog()
        key = SetKey.parse(ref.name)
        first, last = catalog.span(key) or (0, 0)
        return DataSummary(rows=catalog.rows(key), first_ns=first, last_ns=last, ticks=False)
    items = load_data_ref(ref, catalog)
    return DataSummary(
        rows=len(items),
        first_ns=items[0].ts_ns if items else 0,
        last_ns=items[-1].ts_ns if items else 0,
        ticks=False,
    )


def load_named(
    text: str, catalog: Catalog | None = None, *, field: str = "data"
) -> list[MarketData]:
    """:func:`resolve_data` then :func:`load_data_ref`.

    Raises:
        ConfigError: see both.
    """
    catalog = catalog or Catalog()
    return load_data_ref(resolve_data(text, catalog, field=field), catalog)


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def _error(text: str, field: str, why: str) -> ConfigError:
    return ConfigError(
        f"{field} {text!r}: {why}", source="<arg>", field=field, value=text, rule=why
    )
