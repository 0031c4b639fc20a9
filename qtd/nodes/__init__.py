"""Fleet nodes: NATS logins issued from the ops node's keyring, host bundles and installs.

* :mod:`qtd.nodes.keyring` — the operator/account keys and the registry of logins.
* :mod:`qtd.nodes.push` — send the account JWT (revocations) to the running nats-servers.
* :mod:`qtd.nodes.bundle` — ``qtd node add``: one host's files.
* :mod:`qtd.nodes.install` — ``qtd node install``: put a bundle in place, owners and modes.
"""
