"""Where the files qtd ships beside its code are: the example configs (``etc/``), the
systemd units (``systemd/``) and the sample strategies (``strategies/``).

One copy of each lives at the root of the source checkout. The wheel carries them as
``qtd/_shipped/<name>/`` (``setup.py`` copies them in at build time), so an installed qtd
(``pip install qtd-<version>-py3-none-any.whl``, no checkout) finds them there. A low
module: ``qtd up`` (:func:`qtd.up.layout.find_etc`), admission (a bot's relative
``strategy`` path) and the deploy commands read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

SHIPPED: Final = ("etc", "strategies", "systemd")
"""The directories shipped beside the package (``setup.py`` reads this tuple)."""

INSTALLED_DIR: Final = "_shipped"
"""Their parent inside the installed package: ``qtd/_shipped/``."""


def shipped_root() -> Path:
    """The directory holding ``etc/``, ``strategies/`` and ``systemd/``: ``qtd/_shipped``
    of an installed wheel, else the source checkout ``qtd`` is imported from (its root)."""
    package = Path(__file__).resolve().parent
    installed = package / INSTALLED_DIR
    return installed if installed.is_dir() else package.parent


def shipped_dir(name: str) -> Path:
    """One shipped directory (``"etc"``, ``"strategies"`` or ``"systemd"``), absolute.

    Raises:
        ValueError: ``name`` is not one of :data:`SHIPPED` (the message lists them).
    """
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped directory {name!r}; known: {', '.join(SHIPPED)}")
    return shipped_root() / name
