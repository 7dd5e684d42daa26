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

Each worker also gets a control channel (gateway/control.py): the supervisor hands it the
configuration at start and runs every reload on all workers at once (SIGHUP to the supervisor or
to any worker, ``POST /admin/reload`` on any worker), two-phase, so that they never run different
configurations. The supervisor imports neither the app nor the plugins: it reads the config
file's text and the workers parse it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from gateway.control import Channel, Message, Outcome, Problem
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
#: How long each phase of a reload waits for the workers' answers.
RELOAD_PHASE_S = 60.0


@dataclass
class WorkerSpec:
    """How to start one worker: the CLI arguments after ``python -m gateway``, its environment,
    and the config file (None: the workers configure themselves from the environment) with the
    text the supervisor read from it at start."""

    argv: list[str]
    env: dict[str, str]
    drain_timeout_s: float
    config_path: str | None = None
    config_text: str | None = None


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    crashes_in_a_row: int = 0
    exit_codes: list[int] = field(default_factory=list)
    channel: Channel | None = None
    #: The worker said it serves, on this generation of the config.
    ready: bool = False
    generation: int = 0


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
        #: The configuration every worker runs, and its generation (+1 per committed reload).
        self.config_text = spec.config_text
        self.generation = 1
        #: Signs dashboard sessions when the config sets no dashboard.session_secret, so that a
        #: session works on every worker of this run.
        self.session_secret = secrets.token_urlsafe(32)
        self._reload_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._answers: dict[tuple[int, int], asyncio.Future[Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when no worker could start with the config (exit code 2 before serving): nothing
        #: would fix it by restarting, so the supervisor stops with that code.
        self.fatal: int | None = None
        self._ever_ready = False

    def _command(self, control_fd: int) -> tuple[list[str], tuple[int, ...]]:
        fds = [self.listeners.public.fileno(), control_fd]
        argv = [sys.executable, "-m", "gateway", *self.spec.argv, "--listen-fd", str(fds[0]),
                "--control-fd", str(control_fd)]
        if self.listeners.admin is not None:
            fds.append(self.listeners.admin.fileno())
            argv += ["--admin-fd", str(fds[-1])]
        return argv, tuple(fds)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair()
        try:
            argv, fds = self._command(theirs.fileno())
            env = {**self.spec.env, PROMETHEUS_DIR_ENV: self.metrics_dir, SUPERVISOR_PID_ENV: str(os.getpid())}
            # The worker inherits SIGHUP blocked (the mask survives fork and exec) and unblocks it once
            # its handler is in place: a reload asked meanwhile waits instead of killing it.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            try:
                process = await asyncio.create_subprocess_exec(*argv, env=env, pass_fds=fds)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.ready, slot.generation = False, 0
        slot.channel = await Channel.open(ours)
        # The committed configuration, whatever the file holds now: a worker that starts during a
        # reload joins on the old one and is brought up to date once it is ready.
        slot.channel.send(Message(op="start", generation=self.generation, text=self.config_text,
                                  session_secret=self.session_secret))
        self._track(asyncio.create_task(slot.channel.serve(functools.partial(self._handle, slot))))
        log.info("worker %d started (pid %d)", slot.index, process.pid)
        return process

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, slot: _Slot, message: Message) -> None:
        op = message.op
        if op == "ready":
            slot.ready, slot.generation = True, message.generation
            self._ever_ready = True
            if message.generation < self.generation and self.config_text is not None and slot.channel is not None:
                slot.channel.send(Message(op="apply", id=next(self._ids), generation=self.generation,
                                          text=self.config_text))
        elif op in ("prepared", "committed"):
            if op == "committed" and message.outcome is not None:
                slot.generation = message.outcome.generation
            answer = self._answers.get((slot.index, message.id))
            if answer is not None and not answer.done() and message.outcome is not None:
                answer.set_result(message.outcome)
        elif op == "reload":
            async def answer_reload() -> None:
                outcome = await self.reload()
                if slot.channel is not None:
                    slot.channel.send(Message(op="reloaded", id=message.id, outcome=outcome))
            self._track(asyncio.create_task(answer_reload()))
        elif op == "broadcast":
            for other in self.slots:
                if other is not slot and other.channel is not None:
                    other.channel.send(message)

    async def _phase(self, op: str, reload_id: int, slots: list[_Slot], text: str | None = None,
                     generation: int = 0) -> list[Outcome | None]:
        """Send one phase of a reload to ``slots``; each one's answer (None if it gave none in time)."""
        futures = []
        loop = asyncio.get_running_loop()
        for slot in slots:
            future = self._answers[(slot.index, reload_id)] = loop.create_future()
            futures.append(future)
            assert slot.channel is not None
            slot.channel.send(Message(op=op, id=reload_id, generation=generation, text=text))
        try:
            done, _ = await asyncio.wait(futures, timeout=RELOAD_PHASE_S)
            return [f.result() if f in done else None for f in futures]
        finally:
            for slot in slots:
                self._answers.pop((slot.index, reload_id), None)

    async def reload(self) -> Outcome:
        """Reload every worker from the config file, all or none (gateway/control.py)."""
        of = len(self.slots)
        if self.spec.config_path is None:
            return Outcome(status="refused", of=of, problems=[Problem(
                "$", "the gateway was started without a config file (--config or OPENGATEWAY_CONFIG), "
                     "so there is nothing to re-read")])
        async with self._reload_lock:
            try:
                with open(self.spec.config_path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                return Outcome(status="refused", of=of, problems=[Problem("$", f"cannot read the file: {exc.strerror}")])
            live = [s for s in self.slots if s.ready and s.channel is not None and s.process is not None
                    and s.process.returncode is None]
            reload_id, generation = next(self._ids), self.generation + 1
            prepared = await self._phase("prepare", reload_id, live, text, generation)
            problems = [p for o in prepared if o is not None for p in o.problems]
            ok = sum(1 for o in prepared if o is not None and o.status == "reloaded")
            if problems or ok < len(live):
                for slot in live:
                    if slot.channel is not None:
                        slot.channel.send(Message(op="abort", id=reload_id))
                status = "refused" if problems else "failed"
                if not problems:
                    problems = [Problem("$", f"{len(live) - ok} worker(s) did not answer the reload in time")]
                log.error("config reload %s on %d of %d worker(s); every worker keeps the running config: %s",
                          status, len(live) - ok, len(live), "; ".join(f"{p.path}: {p.message}" for p in problems[:5]))
                return Outcome(status=status, workers=0, of=of, problems=_unique(problems))
            self.config_text, self.generation = text, generation
            committed = await self._phase("commit", reload_id, live)
            took = [o for o in committed if o is not None]
            log.info("config reloaded on %d of %d worker(s) (generation %d)", len(took), of, generation)
            if not took:
                return Outcome(status="failed", of=of, problems=[Problem("$", "no worker confirmed the new config")])
            # A worker that is (re)starting joins on the new config; the answer says how many run it now.
            outcome = took[0]
            outcome.workers, outcome.of = len(took), of
            return outcome

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
            if code == 2 and not self._ever_ready:
                # The config (or a plugin's settings) cannot start a worker: restarting won't help.
                log.error("worker %d could not start with the configuration (above); stopping", slot.index)
                self.fatal = 2
                self._stop(signal.SIGTERM)
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

    def _reload_on_signal(self) -> None:
        log.info("SIGHUP received: reloading the config on every worker")
        self._track(asyncio.create_task(self._logged_reload()))

    async def _logged_reload(self) -> None:
        await self.reload()  # the outcome is logged by reload()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        tasks = [asyncio.create_task(self._run_slot(slot)) for slot in self.slots]
        await self.stopping.wait()
        done, pending = await asyncio.wait(tasks, timeout=self.spec.drain_timeout_s + STOP_GRACE_S)
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                log.error("worker %d (pid %d) did not stop in time: killing it", slot.index, slot.process.pid)
                slot.process.kill()
        if pending:
            await asyncio.wait(pending)
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # -SIGTERM: a worker stopped before it had installed its handler, so it held no request.
        clean = all(slot.exit_codes and slot.exit_codes[-1] in (0, -signal.SIGTERM) for slot in self.slots)
        if self.fatal is not None:
            return self.fatal
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


def _unique(problems: list[Problem]) -> list[Problem]:
    """Every worker reports the same problems of the same file: once each."""
    return list(dict.fromkeys(problems))
