"""``opengateway serve --workers N``: N worker processes on one port, restarted when they crash.

The supervisor binds the listening sockets once and every worker inherits them (``pass_fds``),
as gunicorn and uvicorn do, rather than each worker binding with SO_REUSEPORT:
- bind errors (port in use, no permission) are reported once, before any worker starts, and a
  second gateway on the same port fails instead of silently joining the port group;
- connections waiting in the accept queue survive a worker's crash or restart (with
  SO_REUSEPORT the kernel resets those queued on the dead worker's own socket);
- port 0 and the admin port work unchanged.
The cost: the kernel does not balance accepts between workers; a busy worker's event loop simply
accepts less often. Image calls last seconds, so this evens out; measure before adding workers.

Workers are fresh interpreters (not forks), so ``PROMETHEUS_MULTIPROC_DIR`` is in their
environment before they import prometheus_client; the supervisor creates and empties that
directory at start and marks each dead worker's live gauges dead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from gateway.listeners import Listeners

log = logging.getLogger("opengateway")

#: The variable prometheus_client reads (gateway.metrics.MULTIPROCESS_ENV; not imported here so
#: that the supervisor itself never registers metrics).
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_PID_ENV = "OPENGATEWAY_SUPERVISOR_PID"
#: Restart backoff: doubles on each crash in a row, reset once a worker has stayed up a while.
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
#: After the drain timeout, how long workers get to finish their cleanup before SIGKILL.
STOP_GRACE_S = 10.0


@dataclass
class WorkerSpec:
    """How to start one worker: the CLI arguments after ``python -m gateway`` and its environment."""

    argv: list[str]
    env: dict[str, str]
    drain_timeout_s: float


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    crashes_in_a_row: int = 0
    exit_codes: list[int] = field(default_factory=list)


def prepare_metrics_dir(env: dict[str, str]) -> tuple[str, bool]:
    """The multiprocess metrics directory, emptied (values left by an earlier run would be summed),
    and whether we created it (and so remove it at exit)."""
    path = env.get(PROMETHEUS_DIR_ENV)
    if not path:
        return tempfile.mkdtemp(prefix="opengateway-metrics-"), True
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    return path, False


class Supervisor:
    def __init__(self, spec: WorkerSpec, listeners: Listeners, workers: int, metrics_dir: str) -> None:
        self.spec = spec
        self.listeners = listeners
        self.slots = [_Slot(i + 1) for i in range(workers)]
        self.metrics_dir = metrics_dir
        self.stopping = asyncio.Event()

    def _command(self) -> tuple[list[str], tuple[int, ...]]:
        fds = [self.listeners.public.fileno()]
        argv = [sys.executable, "-m", "gateway", *self.spec.argv, "--listen-fd", str(fds[0])]
        if self.listeners.admin is not None:
            fds.append(self.listeners.admin.fileno())
            argv += ["--admin-fd", str(fds[1])]
        return argv, tuple(fds)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        argv, fds = self._command()
        env = {**self.spec.env, PROMETHEUS_DIR_ENV: self.metrics_dir, SUPERVISOR_PID_ENV: str(os.getpid())}
        process = await asyncio.create_subprocess_exec(*argv, env=env, pass_fds=fds)
        log.info("worker %d started (pid %d)", slot.index, process.pid)
        return process

    async def _run_slot(self, slot: _Slot) -> None:
        """Keep one worker running until the supervisor stops; restart it with backoff if it dies."""
        from prometheus_client import multiprocess

        while not self.stopping.is_set():
            started = time.monotonic()
            slot.process = await self._spawn(slot)
            if self.stopping.is_set():  # the stop came while it was starting: _forward missed it
                slot.process.send_signal(signal.SIGTERM)
            code = await slot.process.wait()
            multiprocess.mark_process_dead(slot.process.pid, self.metrics_dir)
            slot.exit_codes.append(code)
            if self.stopping.is_set():
                log.info("worker %d (pid %d) exited with %d", slot.index, slot.process.pid, code)
                return
            if time.monotonic() - started > STABLE_AFTER_S:
                slot.crashes_in_a_row = 0
            delay_s = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * 2 ** slot.crashes_in_a_row)
            slot.crashes_in_a_row += 1
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.error("worker %d (pid %d) died (%s); restarting in %.1f s",
                      slot.index, slot.process.pid, how, delay_s)
            try:
                await asyncio.wait_for(self.stopping.wait(), delay_s)
            except TimeoutError:
                pass

    def _forward(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(sig)

    def _stop(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            return
        log.info("%s: stopping %d worker(s)", sig.name, len(self.slots))
        self.stopping.set()
        # Our copies of the sockets first: once every worker has closed its own, connections are refused.
        self.listeners.close()
        self._forward(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)  # each worker reloads
        tasks = [asyncio.create_task(self._run_slot(slot)) for slot in self.slots]
        await self.stopping.wait()
        done, pending = await asyncio.wait(tasks, timeout=self.spec.drain_timeout_s + STOP_GRACE_S)
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                log.error("worker %d (pid %d) did not stop in time: killing it", slot.index, slot.process.pid)
                slot.process.kill()
        if pending:
            await asyncio.wait(pending)
        # -SIGTERM: a worker stopped before it had installed its handler, so it held no request.
        clean = all(slot.exit_codes and slot.exit_codes[-1] in (0, -signal.SIGTERM) for slot in self.slots)
        log.info("all workers stopped%s", "" if clean else " (some did not exit cleanly)")
        return 0 if clean else 1


def stop_with_supervisor() -> None:
    """In a worker: get SIGTERM (so, a drain) if the supervisor dies, even by SIGKILL, rather than
    serve on unsupervised. Linux's PR_SET_PDEATHSIG; elsewhere a no-op."""
    import ctypes

    supervisor_pid = int(os.environ.get(SUPERVISOR_PID_ENV, os.getppid()))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor_pid:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(spec: WorkerSpec, listeners: Listeners, workers: int) -> int:
    metrics_dir, created = prepare_metrics_dir(spec.env)
    log.info("OpenGateway listening on http://%s:%s with %d workers (metrics: %s)",
             *listeners.public.getsockname()[:2], workers, metrics_dir)
    try:
        return asyncio.run(Supervisor(spec, listeners, workers, metrics_dir).run())
    finally:
        listeners.close()
        if created:
            shutil.rmtree(metrics_dir, ignore_errors=True)
