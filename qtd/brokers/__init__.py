"""Venue-neutral broker pieces: the :class:`qtd.brokers.base.Broker` Protocol and its tokens,
qtd's paper broker, retries and shadow-mode tracking. Venue adapters live in their venue's
package (:mod:`qtd.venues`); each accepts orders only with a risk-engine token."""
