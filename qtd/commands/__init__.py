"""Implementations of the CLI subcommands (kept out of :mod:`qtd.cli` so it stays a parser)."""
