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
    """``build_py`` into an emptied ``<build_lib>/qtd`` (a module or file deleted from the
    checkout since an earlier build must not ship), then ``etc/``, ``strategies/`` and
    ``systemd/`` into ``<build_lib>/qtd/_shipped/``."""

    def run(self) -> None:
        if self.editable_mode:  # an editable install reads everything from the checkout
            super().run()
            return
        shutil.rmtree(Path(self.build_lib) / "qtd", ignore_errors=True)
        super().run()
        target = Path(self.build_lib) / "qtd" / _SHIPPED["INSTALLED_DIR"]
        for name in _SHIPPED["SHIPPED"]:
            shutil.copytree(HERE / name, target / name, ignore=_IGNORE)


setup(cmdclass={"build_py": BuildWithShipped})
