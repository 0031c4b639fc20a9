"""qtd.files.atomic_write_bytes never writes a secret into a file it did not create (review
of issue 25: ``qtd node add --out`` writes a bundle holding a NATS seed, maybe into a shared
directory)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qtd.files import atomic_write_bytes


def test_a_file_planted_at_a_guessable_temporary_name_is_not_used(tmp_path: Path) -> None:
    target = tmp_path / "qtd-node-node-c.tar.gz"
    planted = tmp_path / f"{target.name}.tmp{os.getpid()}"  # the name it used to write to
    planted.write_bytes(b"planted")
    planted.chmod(0o644)
    fd = os.open(planted, os.O_RDONLY)  # whoever planted it keeps it open
    try:
        atomic_write_bytes(target, b"SEED", mode=0o600)
        assert os.pread(fd, 100, 0) == b"planted"
    finally:
        os.close(fd)
    assert target.read_bytes() == b"SEED"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, planted.name])
