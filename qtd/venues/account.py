"""Where :class:`~qtd.venues.AccountSettings` used to live (it asks the venue registry, so
it now sits beside it in :mod:`qtd.venues`); kept only for ``qtd.agent.config``'s import
until that module imports it from :mod:`qtd.venues`."""

from __future__ import annotations

from qtd.venues import AccountSettings as AccountSettings

__all__ = ["AccountSettings"]
