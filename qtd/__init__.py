"""qtd — trading-operations daemon."""

__version__ = "0.1.0"
