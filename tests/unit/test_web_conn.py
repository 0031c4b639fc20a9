"""The status page's descriptor budget: connection cap and accept burst fit RLIMIT_NOFILE."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from qtd.web.conn import BACKLOG_MAX, OWN_FDS, ConnectionGuard


@pytest.fixture
def soft_nofile() -> Iterator[object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def set_soft(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield set_soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("nofile", [256, 512, 1024, 8192])
def test_cap_and_three_accept_bursts_fit_under_the_descriptor_limit(soft_nofile, nofile):
    soft_nofile(nofile)
    guard = ConnectionGuard(max_connections=1000)
    assert guard.max_connections + 3 * guard.backlog + OWN_FDS <= nofile
    assert guard.backlog >= 16


def test_the_shipped_units_limit_keeps_uvicorns_backlog(soft_nofile):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 8192:
        pytest.skip("hard RLIMIT_NOFILE below the units' LimitNOFILE=8192")
    soft_nofile(8192)  # systemd/*.service LimitNOFILE=
    guard = ConnectionGuard(max_connections=1000)
    assert (guard.max_connections, guard.backlog) == (1000, BACKLOG_MAX)
