"""Does the installed mypyc still resurrect handled exceptions in compiled coroutines?

Why this exists: ``benchmarks/backtest.py``'s 1.5x target is out of reach in CPython (its
*Breakdown* line: the order path alone costs more than the target leaves). Compiling the
order path with mypyc (the mypy project's compiler, https://mypyc.readthedocs.io) measured
1.61x, but only with the coroutines of the order path compiled, and mypyc compiles them
wrongly: an exception the code already handled is raised again, later, somewhere unrelated.
qtd does not ship that into the money path. Run this after a mypy upgrade; exit 0 means the
defect is gone and the compiled build can be reconsidered.

The defect, reduced to 20 lines (``MODULE`` below, compiled; ``DRIVER``, interpreted):

1. two tasks each run a compiled coroutine that awaits inside an ``except`` block
   (qtd's order router does this: it stores a ``BrokerError`` when a submit fails). The
   compiled code saves and restores the thread's handled-exception state
   (``sys.exc_info()``) around the handler; with the two handlers interleaved, the restore
   puts back the other task's exception, which stays there after ``asyncio.run`` returns.
2. later, a compiled coroutine that awaits inside a ``finally`` block, with no exception
   raised at all, raises that stale exception when the block ends.

In qtd this showed as an unrelated backtest failing in ``Backtest.run``'s ``finally`` with
the ``OutcomeUnknown`` of an earlier Alpaca submit test. CPython runs the same source
correctly; the script runs it both ways. Related upstream reports (closed as fixed, this
variant remains in the mypy release installed here): https://github.com/mypyc/mypyc/issues/1114,
https://github.com/mypyc/mypyc/issues/1177.

Needs a C compiler and the Python headers (mypyc builds an extension module).

Usage: ``python benchmarks/mypyc_check.py``. Exit status: 0 compiled == interpreted,
1 the defect is present, 2 the module could not be compiled (or was not the one run).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

MODULE = '''
import asyncio
from typing import Any, Awaitable


async def handle(aw: Awaitable[Any]) -> str:
    try:
        await aw
    except KeyError as exc:
        await asyncio.sleep(0.01)  # e.g. store the error: suspends inside the handler
        return f"handled {exc!r}"
    return "no error"


async def cleanup() -> str:
    try:
        pass
    finally:
        await asyncio.to_thread(lambda: None)  # suspends inside the finally block
    return "cleanup ok"
'''

DRIVER = '''
import asyncio, sys
import repro

async def failing(tag):
    raise KeyError(tag)

async def two_tasks():
    a = asyncio.create_task(repro.handle(failing("A")))
    await asyncio.sleep(0)
    b = asyncio.create_task(repro.handle(failing("B")))
    return [await a, await b]

print("built:", "compiled" if repro.__file__.endswith(".so") else "interpreted")
print("step 1, two handled KeyErrors:", asyncio.run(two_tasks()))
print("step 1, sys.exc_info() afterwards:", repr(sys.exc_info()[1]))
try:
    print("step 2, an unrelated coroutine:", asyncio.run(repro.cleanup()))
except BaseException as exc:
    print("step 2, an unrelated coroutine RAISED", repr(exc))
'''


def run(workdir: Path) -> str:
    out = subprocess.run([sys.executable, "driver.py"], cwd=workdir, capture_output=True,
                         text=True, timeout=120)
    return (out.stdout + out.stderr).strip()


def main() -> int:
    import mypy.version

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "repro.py").write_text(MODULE)
        (work / "driver.py").write_text(DRIVER)
        print(f"CPython {sys.version.split()[0]}, mypy/mypyc {mypy.version.__version__}")
        interpreted = run(work)
        print("-- interpreted (the reference)\n" + interpreted)
        build = subprocess.run([sys.executable, "-m", "mypyc", "repro.py"], cwd=work,
                               capture_output=True, text=True, timeout=600)
        if build.returncode != 0 or not list(work.glob("repro.*.so")):
            print("-- could not compile repro.py with mypyc:\n" + build.stdout + build.stderr)
            return 2
        compiled = run(work)
        print("-- compiled with mypyc\n" + compiled)
        if not compiled.startswith("built: compiled"):
            print("-- the compiled module was not the one imported")
            return 2
    # the first line says which build ran; every line after it must match
    same = compiled.splitlines()[1:] == interpreted.splitlines()[1:]
    print("verdict:", "no difference: the defect is gone" if same else
          "DIFFERENT: mypyc still resurrects handled exceptions in coroutines")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
