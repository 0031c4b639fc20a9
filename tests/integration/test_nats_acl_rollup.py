"""No login that may write one key of the control bucket can erase the others (review of
issue 25).

An agent login may write its own test key ``preflight.<node>`` in ``qtd_control`` (for
``qtd preflight``), the operator login the ``kill`` key. A JetStream publish carrying the
header ``Nats-Rollup: all`` purges every other subject of the stream, and nats-server checks
no permission for it beyond the publish itself: on a bucket that allows rollups, node-c's
preflight login would erase the kill set (an agent that restarts then trades through a fleet
kill). :func:`qtd.bus.ensure_jetstream` makes the control bucket refuse rollups, on creation
and on an existing bucket.
"""

from __future__ import annotations

from pathlib import Path

import nats.js.errors
import pytest

from qtd.bus import CONTROL_BUCKET, ensure_jetstream
from tests.shipped import shipped_nats


@pytest.mark.parametrize("existing", [False, True], ids=["new-bucket", "existing-bucket"])
async def test_a_test_key_write_cannot_erase_the_kill_key(tmp_path: Path, existing: bool
                                                          ) -> None:
    async with shipped_nats(tmp_path, nodes=("node-c",)) as server:
        leader = await server.connect("leader")
        js = leader.jetstream(timeout=2)
        if existing:  # a bucket made by an earlier qtd: rollups allowed
            await js.create_key_value(bucket=CONTROL_BUCKET, history=16)
        kv = (await ensure_jetstream(js)).control
        await kv.put("kill", b'{"kills": ["fleet"]}')
        agent = await server.connect("agent-node-c")
        ajs = agent.jetstream(timeout=2)
        with pytest.raises(nats.js.errors.APIError, match="rollup"):
            await ajs.publish(f"$KV.{CONTROL_BUCKET}.preflight.node-c", b"x",
                              headers={"Nats-Rollup": "all"})
        assert (await kv.get("kill")).value == b'{"kills": ["fleet"]}'
        # the plain test-key write preflight does still works
        await ajs.publish(f"$KV.{CONTROL_BUCKET}.preflight.node-c", b"x")
        info = await js.stream_info(f"KV_{CONTROL_BUCKET}")
        assert not info.config.allow_rollup_hdrs
