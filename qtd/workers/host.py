"""A strategy worker process: runs the hooks of one or more bots, nothing else.

Forked by the worker template (:mod:`qtd.workers.template`), which already imported this
module and the configured ``preload`` modules, :func:`serve` reads one
request at a time (:mod:`qtd.workers.protocol`) from its socket, runs it and writes one
reply. Before the first strategy is imported it

* asks the kernel to kill it when the template ends (``PR_SET_PDEATHSIG``; the template
  ends with the agent), so a worker never outlives its agent;
* lowers its CPU priority by ``nice`` (the agent's loop wins the CPU from strategies);
* leaves the host's network (its own empty network namespace) and installs the sandbox's
  audit hook (:mod:`qtd.workers.sandbox`: no network, processes, ctypes, rlimit changes, and
  none of the agent's protected files) — the rules admission ran the strategy under;
* caps its address space at what it started with plus ``memory_mb`` (RLIMIT_AS): an
  allocation past the cap raises ``MemoryError`` in the hook, reported as a failure naming the
  limit; one outside a hook ends the worker with :data:`~qtd.workers.protocol.MEMORY_EXIT`.

It never enforces time: the agent does, by killing a worker whose reply is late. A worker
therefore needs no watchdog thread, and a hook stuck in one C call holding the GIL costs this
process only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import traceback
from typing import Any, Final

import msgspec

from qtd.projections import Position
from qtd.strategy import CancelAll, Strategy, StrategyContext
from qtd.workers.load import load_admitted
from qtd.workers.protocol import (
    MEMORY_EXIT,
    Call,
    CtxState,
    Drop,
    Failure,
    Load,
    Out,
    Reply,
    Request,
    Spawn,
    Swap,
    frame,
    frame_length,
)
from qtd.workers.sandbox import Guard, isolate_network

log = logging.getLogger("qtd.worker")
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
_BASE_ON_FILL: Final = Strategy.on_fill
_NO_CALL: Final = Reply()


class WorkerClock:
    """The worker's clock: the time of the request being handled (the agent's clock —
    simulated in a backtest), UTC ns."""

    __slots__ = ("ns",)

    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


class Hosted:
    """One bot in this worker: its strategy class, params, context and instance."""

    __slots__ = ("cls", "clock", "ctx", "params", "strategy")

    def __init__(self, msg: Load) -> None:
        self.cls, self.params = load_admitted(msg.ref)
        self.clock = WorkerClock()
        self.ctx = StrategyContext(bot=msg.bot, account=msg.account, venue=msg.venue,
                                   symbols=msg.symbols, clock=self.clock,
                                   strategy=self.cls.__name__, currency=msg.currency)
        self.strategy: Strategy | None = None


def apply_state(ctx: StrategyContext, state: CtxState) -> None:
    """Make the worker's context replica equal to the agent's ``state``."""
    for p in state.positions:
        pos = Position(ctx.bot, ctx.account, p.symbol, p.currency)
        pos.qty, pos.cost, pos.realized, pos.fees = p.qty, p.cost, p.realized, p.fees
        pos.other_fees, pos.last_price, pos.fills = dict(p.other_fees), p.last_price, p.fills
        ctx.positions[p.symbol] = pos
    ctx.inflight = dict(state.inflight)
    ctx.share, ctx.lot = state.share, state.lot
    ctx.marks.update(state.marks)


class Host:
    """The bots of this worker and the dispatch of requests to them.

    Args:
        memory_mb: the address-space allowance (for the message of a ``MemoryError``).
        guard: the sandbox's audit hook: a refusal during a request fails it even when
            strategy code caught the ``PermissionError``.
        sandbox: what :func:`confine` achieved (sent with every ``Load`` reply).
    """

    def __init__(self, memory_mb: int, guard: Guard | None = None, sandbox: str = "") -> None:
        self.memory_mb, self.guard, self.sandbox = memory_mb, guard or Guard(), sandbox
        self.bots: dict[str, Hosted] = {}

    def handle(self, msg: Request) -> Reply:
        seen = len(self.guard.violations)
        reply = self._dispatch(msg)
        if len(self.guard.violations) > seen and reply.failure is None:
            v = self.guard.violations[seen]
            hook = msg.hook if type(msg) is Call else "import"
            reply = Reply(failure=Failure(
                hook, "SandboxRefusal",
                f"{v.rule} ({v.event} {v.detail}) at {v.file}:{v.line}"))
        return reply

    def _dispatch(self, msg: Request) -> Reply:
        if type(msg) is Call:
            return self.call(msg)
        if type(msg) is Load:
            return self.load(msg)
        if type(msg) is Swap:
            return self.swap(msg)
        if type(msg) is Drop:
            self.bots.pop(msg.handle, None)
        return _NO_CALL

    def load(self, msg: Load) -> Reply:
        try:
            hosted = self.bots[msg.handle] = Hosted(msg)
        except BaseException as exc:  # the operator's module body: any failure is reported
            return Reply(failure=self._failure("import", exc))
        return Reply(has_on_fill=hosted.cls.on_fill is not _BASE_ON_FILL, sandbox=self.sandbox)

    def swap(self, msg: Swap) -> Reply:
        hosted = self.bots[msg.handle]
        try:
            params = msgspec.convert(msg.params, hosted.cls.Params)
        except (msgspec.ValidationError, TypeError) as exc:
            return Reply(failure=Failure("params", type(exc).__name__, str(exc)))
        hosted.params = params
        if hosted.strategy is not None:
            hosted.strategy.params = params
        return _NO_CALL

    def call(self, msg: Call) -> Reply:
        hosted = self.bots[msg.handle]
        hosted.clock.ns = msg.now_ns
        ctx = hosted.ctx
        if msg.state is not None:
            apply_state(ctx, msg.state)
        failure = None
        try:
            self._run(hosted, msg)
        except BaseException as exc:  # the operator's code: everything is reported
            failure = self._failure(msg.hook, exc)
        out = [Out(cancel=r) if type(r) is CancelAll else Out(order=r)  # type: ignore[arg-type]
               for r in ctx.take_outbox()]
        return Reply(outbox=out, inflight=ctx.inflight, targets=ctx.targets, failure=failure)

    @staticmethod
    def _run(hosted: Hosted, msg: Call) -> None:
        hook, ctx = msg.hook, hosted.ctx
        if hook == "on_bar":
            bar: Any = msg.bar
            ctx.marks[bar.symbol] = bar.close
            hosted.strategy.on_bar(bar)  # type: ignore[union-attr]
        elif hook == "on_trade":
            trade: Any = msg.trade
            ctx.marks[trade.symbol] = trade.price
            hosted.strategy.on_trade(trade)  # type: ignore[union-attr]
        elif hook == "on_fill":
            hosted.strategy.on_fill(msg.fill)  # type: ignore[union-attr, arg-type]
        elif hook == "__init__":
            hosted.strategy = hosted.cls(ctx, hosted.params)
        elif hook == "on_start":
            hosted.strategy.on_start()  # type: ignore[union-attr]
        elif hook == "on_stop":
            hosted.strategy.on_stop()  # type: ignore[union-attr]
        else:
            raise ValueError(f"unknown hook {hook!r}")

    def _failure(self, hook: str, exc: BaseException) -> Failure:
        if isinstance(exc, MemoryError):  # usually without a message
            detail = f": {exc}" if str(exc) else ""
            return Failure(hook, "MemoryLimit",
                           f"{hook} ran out of the worker's memory limit "
                           f"(workers.memory_mb = {self.memory_mb} MiB){detail}")
        return Failure(hook, type(exc).__name__, str(exc),
                       "".join(traceback.format_exception(exc)))


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent ends (``man 2 prctl``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _cap_memory(memory_mb: int) -> None:
    with open("/proc/self/statm", "rb") as f:
        pages = int(f.read().split()[0])
    cap = pages * os.sysconf("SC_PAGE_SIZE") + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def confine(how: Spawn) -> str:
    """Apply the worker's limits; returns what was achieved, one clause per limit (a limit
    the kernel or a seccomp filter refuses is said, not fatal: the agent logs it and shows
    it in ``status``)."""
    done = []
    try:
        os.nice(how.nice)
        done.append(f"nice +{how.nice}")
    except OSError as exc:
        done.append(f"nice not set ({exc.strerror})")
    try:
        _cap_memory(how.memory_mb)
        done.append(f"memory cap +{how.memory_mb} MiB")
    except (OSError, ValueError) as exc:
        done.append(f"NO memory cap ({exc})")
    try:  # under the unit's MemoryMax=, the kernel's OOM killer takes a worker first
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        done.append("OOM-killed before the agent")
    except OSError as exc:
        done.append(f"oom_score_adj not set ({exc.strerror})")
    if how.isolate_network:
        try:
            done.append(f"network: {isolate_network()}")
        except (OSError, RuntimeError) as exc:
            done.append(f"network: audit hook only ({exc})")
    return "; ".join(done)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(sock: socket.socket, how: Spawn) -> None:
    """The worker's main loop (the target of its process): until the agent closes the
    socket, read a request, handle it, write the reply. Exits the process when done."""
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when workers stop
    code = 0
    try:
        sandbox = confine(how)
        guard = Guard(how.protected)
        sys.addaudithook(guard)  # before any strategy code is imported; never removed
        host = Host(how.memory_mb, guard, sandbox)
        decode = msgspec.msgpack.Decoder(Request).decode
        encode = msgspec.msgpack.Encoder(decimal_format="string").encode
        sock.setblocking(True)
        while True:
            header = _read_exact(sock, 4)
            if header is None:
                break
            body = _read_exact(sock, frame_length(header))
            if body is None:
                break
            sock.sendall(frame(encode(host.handle(decode(body)))))
    except MemoryError:
        code = MEMORY_EXIT
    except (OSError, ValueError, msgspec.DecodeError) as exc:
        log.error("strategy worker %d: link to the agent failed: %s", os.getpid(), exc)
        code = 1
    os._exit(code)  # strategy threads that never end do not keep the worker alive

