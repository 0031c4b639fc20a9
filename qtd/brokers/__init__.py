"""Broker adapters behind the :class:`qtd.brokers.base.Broker` Protocol (paper, alpaca,
binance); each accepts orders only with a risk-engine token."""
