"""qtd — trading-operations daemon."""

__version__ = "0.1.0"
"""The one place the version is written: the wheel's version (pyproject.toml reads it), what
``qtd --version`` prints and what every agent reports in its heartbeats."""
