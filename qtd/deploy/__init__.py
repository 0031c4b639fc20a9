"""Fleet deploys: ship a strategy or params change to every node from one place.

* :mod:`qtd.deploy.plan` — admission (exactly ``qtd validate``) plus the deploy rules
  (stage, promotion order, canary), and the next version of each bot;
* :mod:`qtd.deploy.fleet` — the NATS KV buckets: ``qtd_deploy`` (``desired.<bot>``, the
  history ``version.<bot>.<n>``) and ``qtd_sources`` (strategy files by sha256), published
  with compare-and-set;
* :mod:`qtd.deploy.files` — a version as files for (re-)admission, and the version an agent
  accepted last (``current.json``), which it runs after a restart;
* :mod:`qtd.deploy.diff` — params and source diffs for ``--dry-run`` and ``qtd history``;
* :mod:`qtd.deploy.model` — :class:`DeployVersion`, :class:`VersionRow`.

The agent side is :mod:`qtd.agent.deploy_watch`, the leader's consistency check
:mod:`qtd.leader.versions`, the commands :mod:`qtd.commands.deploy`.
"""

from __future__ import annotations

from qtd.deploy.model import DeployVersion, VersionRow

__all__ = ["DeployVersion", "VersionRow"]
