"""Build hook only (the project's metadata is in pyproject.toml): the wheel carries the
repository's ``etc/``, ``strategies/`` and ``systemd/`` as ``qtd/_shipped/<name>/``, so an
installed qtd needs no checkout (:mod:`qtd.shipped`). The repository keeps one copy of each;
they are copied into the build directory, never into the source tree."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
_SHIPPED = runpy.run_path(str(HERE / "qtd" / "shipped.py"))
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class BuildWithShipped(build_py):
    """``build_py``, then ``etc/``, ``strategies/`` and ``systemd/`` into
    ``<build_lib>/qtd/_shipped/`` (replacing what an earlier build left there)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        target = Path(self.build_lib) / "qtd" / _SHIPPED["INSTALLED_DIR"]
        shutil.rmtree(target, ignore_errors=True)
        for name in _SHIPPED["SHIPPED"]:
            shutil.copytree(HERE / name, target / name, ignore=_IGNORE)


setup(cmdclass={"build_py": BuildWithShipped})
