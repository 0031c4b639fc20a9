"""``qtd node revoke`` on a real nats-server when the include cannot be written (review of
issue 25): the default ``--nats-include /etc/qtd/nats-auth.conf`` does not exist on an ops
node that is not the NATS host; the command died with a traceback BEFORE pushing, so the
running server never learned of the revocation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qtd.cli import main
from tests.shipped import keyring_of, shipped_nats


async def test_revoke_pushes_even_when_the_include_cannot_be_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with shipped_nats(tmp_path, nodes=("node-c",)) as server:
        keys = str(keyring_of(server.url).path)
        code = await asyncio.to_thread(main, [
            "node", "revoke", "node-c", "--keys", keys, "--server", server.url,
            "--nats-include", str(tmp_path / "no" / "such" / "nats-auth.conf")])
        out, err = capsys.readouterr()
        assert code == 78, out + err
        assert ": 200 " in out and "NOT rewritten" in out
        assert "--nats-include" in err and "applied the revocation" in err
        assert "Traceback" not in err
