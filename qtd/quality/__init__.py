"""Beyond "is it running": execution quality (:mod:`.execution`), trade surveillance
(:mod:`.surveil`), the daily report (:mod:`.daily`), live-vs-backtest drift (:mod:`.drift`)
and canary rollouts of a params change (:mod:`.canary`); the leader runs the first three
through :mod:`.monitor`. Modules are imported directly (this package imports nothing, so
the leader's config can use :mod:`.config` without cycles)."""
