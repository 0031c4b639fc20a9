"""Reading a SQLite file the way an outsider does: its own read-only connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def read_rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """The rows of one statement on ``path``, opened read-only (``mode=ro``) for just it."""
    return _rows(f"file:{path}?mode=ro", sql, params)


def main_file_rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """The rows of one statement on ``path``'s main database file alone (``immutable=1``:
    SQLite reads neither the WAL nor locks), i.e. what a WAL checkpoint has copied there."""
    return _rows(f"file:{path}?immutable=1", sql, params)


def _rows(uri: str, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    con = sqlite3.connect(uri, uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()
