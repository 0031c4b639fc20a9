"""Reading the small files an operator writes (configs, params, kill file), with a size cap.

Every config file qtd reads goes through :func:`read_capped`: a file over its limit is
refused before it is read — a clear :class:`~qtd.errors.ConfigError` naming the file, its
size and the limit — so a stray 100 MB file can neither block an event loop while it is
parsed nor be echoed back in an error. :func:`excerpt` is the one way an error quotes
content.
"""

from __future__ import annotations

import os
import tempfile
from typing import Final

from qtd.errors import ConfigError

MAX_CONFIG_BYTES: Final = 256 * 1024  # 35x the largest shipped config (etc/leader.toml)
MAX_SOURCE_BYTES: Final = 1024 * 1024  # a strategy file; the shipped ones are < 4 KB
EXCERPT_CHARS: Final = 200


def too_big(path: str | os.PathLike[str], size: int, limit: int) -> ConfigError:
    """The error for a file of ``size`` bytes over ``limit``."""
    rule = f"file is {size:,} bytes, over the {limit:,}-byte limit for this file; not read"
    return ConfigError(f"{path}: {rule}", source=str(path), field="<file>", value=size,
                       rule=rule)


def read_capped(path: str | os.PathLike[str], limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The whole content of ``path``, at most ``limit`` bytes.

    Raises:
        ConfigError: the file is larger than ``limit`` bytes (checked before reading, and
            again while reading, for a file that grows or a special file).
        OSError: the file cannot be opened or read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise too_big(path, size, limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_big(path, len(data), limit)
    return data


def read_capped_text(path: str | os.PathLike[str], limit: int = MAX_CONFIG_BYTES) -> str:
    """:func:`read_capped` decoded as UTF-8.

    Raises:
        ConfigError: over the limit. OSError: unreadable. UnicodeDecodeError: not UTF-8.
    """
    return read_capped(path, limit).decode("utf-8")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` itself when at most ``limit`` characters, else its start and how many
    characters were left out, ``limit`` characters in all (so an excerpt is its own
    excerpt)."""
    if len(text) <= limit:
        return text
    keep = limit - len(f"... ({len(text):,} more characters)")
    return f"{text[:keep]}... ({len(text) - keep:,} more characters)"


__all__ = ["MAX_CONFIG_BYTES", "MAX_SOURCE_BYTES", "excerpt", "read_capped",
           "read_capped_text", "too_big"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` all or nothing: a new temporary file in the same directory
    (a random name, created exclusively and 0600, then given ``mode``: never wider for a
    moment, and never a file someone else made or linked there first), fsynced, then renamed
    over ``path``.

    Raises:
        OSError: the directory is not writable or the disk is full (``path`` unchanged).
    """
    target = os.fspath(path)
    head, name = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=head or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except OSError:
        os.unlink(tmp)
        raise
