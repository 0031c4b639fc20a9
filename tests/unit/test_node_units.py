"""qtd.nodes.units: the credentials drop-in of one host's qtd unit, rendered from names."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtd.nodes.units import (
    NAME_RULE,
    check_credential_name,
    credentials_dropin_path,
    render_credentials_dropin,
)


def test_renders_one_sorted_line_per_credential() -> None:
    text = render_credentials_dropin("qtd-agent.service",
                                     ["binance-live.env", "alpaca-live.env"])
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["[Service]",
                     "LoadCredential=alpaca-live.env:/etc/qtd/credentials/alpaca-live.env",
                     "LoadCredential=binance-live.env:/etc/qtd/credentials/binance-live.env"]
    assert text.endswith("\n")


def test_no_names_renders_a_dropin_that_loads_nothing() -> None:
    text = render_credentials_dropin("qtd-leader.service", [])
    # Not even an empty LoadCredential=: it would reset the shipped unit's own (nats.creds).
    assert "[Service]" in text.splitlines()
    assert not any(ln.startswith("LoadCredential") for ln in text.splitlines())


def test_path_under_a_root() -> None:
    assert credentials_dropin_path(Path("/tmp/r"), "qtd-agent.service") == Path(
        "/tmp/r/etc/systemd/system/qtd-agent.service.d/credentials.conf")


@pytest.mark.parametrize("name", [
    "", "a/b", "..", ".hidden", "-rf", "alpaca:live.env", "a b", "%n", "a\\x2f",
    "alpaca-live.env\nExecStart=/bin/sh", "caf\u00e9.env", "'q'", "x" * 256,
])
def test_a_name_systemd_or_a_path_would_misread_is_refused(name: str) -> None:
    with pytest.raises(ValueError) as exc:
        render_credentials_dropin("qtd-agent.service", ["alpaca-live.env", name])
    assert repr(name) in str(exc.value) and NAME_RULE in str(exc.value)


def test_plain_names_pass() -> None:
    for name in ("nats.creds", "alpaca-live.env", "Binance_2.env", "x" * 255):
        assert check_credential_name(name) == name


def test_the_shipped_units_own_credential_and_repeats_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'nats.creds'.*qtd-agent.service already loads"):
        render_credentials_dropin("qtd-agent.service", ["nats.creds"])
    with pytest.raises(ValueError, match=r"'a.env'.*listed twice"):
        render_credentials_dropin("qtd-agent.service", ["a.env", "a.env"])


def test_an_unknown_unit_is_refused_listing_the_known_ones() -> None:
    for call in (lambda: render_credentials_dropin("nats-server.service", []),
                 lambda: credentials_dropin_path(Path("/"), "qtd-agent")):
        with pytest.raises(ValueError, match=r"qtd-agent\.service, qtd-leader\.service"):
            call()
