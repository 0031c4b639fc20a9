"""Nodes of a fleet: what one host needs to run its qtd unit (systemd drop-ins, ...)."""
