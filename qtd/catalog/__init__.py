"""Local market data catalog: bars by ``venue:SYMBOL:interval`` in monthly Parquet files.

See :mod:`qtd.catalog.store` for the layout and :mod:`qtd.catalog.parquet` for the file format.

Example::

    from qtd.catalog import Catalog, SetKey
    bars = Catalog().read(SetKey.parse("binance:ETHUSDT:1h"))
"""

from __future__ import annotations

from qtd.catalog.keys import INTERVALS, Provenance, SetInfo, SetKey, is_set_name
from qtd.catalog.store import Catalog, default_root, month_of

__all__ = [
    "INTERVALS",
    "Catalog",
    "Provenance",
    "SetInfo",
    "SetKey",
    "default_root",
    "is_set_name",
    "month_of",
]
