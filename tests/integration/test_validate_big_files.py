"""``qtd validate`` on oversized input (issue 21, finding 12): a 100 MB bot config is refused
before it is read, and no error echoes more than a short excerpt of a value."""

from __future__ import annotations

from pathlib import Path

from qtd.files import MAX_CONFIG_BYTES
from tests.shipped import ROOT, run_qtd

MA = ROOT / "strategies" / "ma_cross.py"


def bot(tmp: Path, value_chars: int) -> Path:
    """A bot config whose ``params.fast`` is a string of ``value_chars`` characters."""
    (tmp / "bots").mkdir(exist_ok=True)
    p = tmp / "bots" / "big.toml"
    with p.open("w") as f:
        f.write(f'name = "big"\nstrategy = "{MA}"\nvenue = "paper"\naccount = "acct"\n'
                'symbols = ["GOOG"]\nmax_order_notional = 50000.0\n[params]\nfast = "')
        for _ in range(value_chars // 1_000_000):
            f.write("x" * 1_000_000)
        f.write("x" * (value_chars % 1_000_000) + '"\n')
    return p


def test_a_100_mb_bot_config_is_refused_without_being_echoed(tmp_path: Path) -> None:
    p = bot(tmp_path, 100_000_000)
    size = p.stat().st_size
    run = run_qtd(["validate", "--no-smoke", str(p)])
    assert run.returncode == 78
    assert f"file is {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit" in run.stdout
    assert len(run.stdout) + len(run.stderr) < 2000


def test_a_long_value_is_echoed_as_a_short_excerpt(tmp_path: Path) -> None:
    p = bot(tmp_path, 200_000)  # under the cap: read, refused by the schema
    run = run_qtd(["validate", "--no-smoke", str(p)])
    assert run.returncode == 78
    assert "params.fast" in run.stdout and "more characters)" in run.stdout
    assert len(run.stdout) + len(run.stderr) < 2000
    doc = run_qtd(["validate", "--no-smoke", "--json", str(p)])
    assert len(doc.stdout) < 2000
