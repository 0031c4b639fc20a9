"""The context file of a running ``qtd up`` fleet (:mod:`qtd.fleetctx`) and the lines that
tell the operator how to use it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qtd.fleetctx import DEFAULT_STATE_DIR, STATE_ENV, FleetContext, NodeContext, write_context
from qtd.up.configs import FleetPlan
from qtd.up.layout import Layout


def fleet_context(layout: Layout, plan: FleetPlan, nats_url: str, web_url: str | None
                  ) -> FleetContext:
    """What operator commands need to reach the fleet ``plan`` describes."""
    prefix = str(plan.leader_doc.get("bus", {}).get("prefix", "qtd"))
    nodes = {node: NodeContext(config=str(plan.agent_configs[node]),
                               kill_file=str(layout.kill_file(node)),
                               events_db=str(layout.events_db(node)), bots=tuple(bots))
             for node, bots in plan.nodes.items()}
    return FleetContext(state_dir=str(layout.root), nats_url=nats_url, prefix=prefix,
                        leader_config=str(plan.leader_config), fleet_db=str(layout.fleet_db),
                        web_url=web_url, nodes=nodes, pid=os.getpid(),
                        started_ns=time.time_ns())


def publish_context(layout: Layout, plan: FleetPlan, nats_url: str, web_url: str | None
                    ) -> list[str]:
    """Write the context file; return the lines that tell the operator how to use it."""
    path = write_context(fleet_context(layout, plan, nats_url, web_url))
    env = os.environ.get(STATE_ENV)
    found = Path(env).resolve() if env else (Path.cwd() / DEFAULT_STATE_DIR).resolve()
    if layout.root == found:
        where = "from this directory"
    else:
        where = f"with --context {layout.root} (or export {STATE_ENV}={layout.root})"
    return [f"operate this fleet {where}: qtd alerts, qtd kill --reason WHY --operator "
            "NAME, qtd resume ..., qtd events --tail 20, qtd positions",
            f"(context: {path}; see docs/operating.md)"]
