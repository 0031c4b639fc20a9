"""The versioned install (issue 25, 3): ``pip wheel --no-deps`` builds
``qtd-<qtd.__version__>-py3-none-any.whl`` carrying every file of the package (bundled data,
the status page's templates and static files) and the shipped ``etc/``, ``strategies/`` and
``systemd/`` as ``qtd/_shipped/``; unpacked away from the checkout, it reports its version
and finds its example configs and sample strategies there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import qtd
from qtd.shipped import INSTALLED_DIR, SHIPPED

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "qtd", *SHIPPED)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _files(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _build(tmp: Path) -> Path:
    """The wheel built from a copy of the checkout's packaging inputs (the checkout's own
    build/ takes no part), where an earlier build left a module since deleted."""
    src = tmp / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_IGNORE)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    stale = src / "build" / "lib" / "qtd" / "removed_since.py"  # an earlier build's output
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, cwd=tmp)
    (wheel,) = out.glob("*.whl")
    return wheel


def test_the_wheel_carries_the_version_and_everything_the_installed_qtd_reads(
    tmp_path: Path,
) -> None:
    wheel = _build(tmp_path)
    assert wheel.name == f"qtd-{qtd.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"qtd-{qtd.__version__}.dist-info/METADATA").decode()
        z.extractall(tmp_path / "site")  # a pure-Python wheel installs by unpacking
    assert f"\nVersion: {qtd.__version__}\n" in metadata
    assert "qtd/removed_since.py" not in names
    package = {f"qtd/{f}" for f in _files(ROOT / "qtd")}
    assert {"qtd/web/templates/panels/nodes.html", "qtd/data/goog_1d.csv.gz"} <= package
    assert package - names == set()  # code, data, templates, static files
    shipped = {f"qtd/{INSTALLED_DIR}/{d}/{f}" for d in SHIPPED for f in _files(ROOT / d)}
    assert f"qtd/{INSTALLED_DIR}/systemd/qtd-agent.service" in shipped
    assert shipped - names == set()
    probe = ("import qtd, qtd.up.layout as l, qtd.admit.config as c; "
             "print(qtd.__file__, l.find_etc(), c.CHECKOUT, sep='\\n')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    run = [sys.executable, "-P", "-c", probe]
    where = subprocess.run(run, env=env, cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.split()
    installed = tmp_path / "site" / "qtd"
    assert where == [str(installed / "__init__.py"), str(installed / INSTALLED_DIR / "etc"),
                     str(installed / INSTALLED_DIR)]
    version = subprocess.run([sys.executable, "-P", "-m", "qtd.cli", "--version"], env=env,
                             cwd=tmp_path, check=True, capture_output=True, text=True)
    assert version.stdout.strip() == f"qtd {qtd.__version__}"
