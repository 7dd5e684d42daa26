"""``opengateway serve --workers N``: N worker processes on one port, restarted when they crash.

The supervisor binds the listening sockets once and every worker inherits them, as gunicorn and
uvicorn do, rather than each worker binding with SO_REUSEPORT:
- bind errors (port in use, no permission) are reported once, before any worker starts, and a
  second gateway on the same port fails instead of silently joining the port group;
- connections waiting in the accept queue survive a worker's crash or restart (with
  SO_REUSEPORT the kernel resets those queued on the dead worker's own socket);
- port 0 and the admin port work unchanged.
The cost: the kernel does not balance accepts between workers; a busy worker's event loop simply
accepts less often. Image calls last seconds, so this evens out; measure before adding workers.

The supervisor is a small program of its own. ``opengateway serve`` reads and checks the config
and binds the sockets as it does for one worker, then replaces itself (``exec_supervisor``: same
pid, so signals and process managers see no change) with ``python -S -P -c ... gateway.supervisor`` (``SUPERVISOR_BOOT``), which
imports none of the app: no asyncio (its loop is gateway/supervisor_loop.py), aiohttp,
prometheus_client, msgspec or YAML. It reads the config file's text and hands it over; the
workers parse it. About 14 MB of RSS instead of a worker's 50 (README, Performance).

Workers are fresh interpreters (not forks), so ``PROMETHEUS_MULTIPROC_DIR`` is in their
environment before they import prometheus_client; the supervisor creates and empties that
directory at start and marks each dead worker's live gauges dead.

Each worker also gets a control channel (gateway/control.py: JSON lines; the workers' side uses
its msgspec types, this side the standard json module): the supervisor hands it the
configuration at start and runs every reload on all workers at once (SIGHUP to the supervisor or
to any worker, ``POST /admin/reload`` on any worker), two-phase, so that they never run different
configurations.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import socket
import sys
import time
from collections import deque

from gateway import LOG_FORMAT
from gateway.metrics_dir import PROMETHEUS_DIR_ENV, mark_process_dead, prepare_metrics_dir, remove_metrics_dir
from gateway.supervisor_loop import LineChannel, Loop, Timer

TYPE_CHECKING = False  # the typing module is not imported at run time (the supervisor stays lean)
if TYPE_CHECKING:
    from typing import Any, Callable, NoReturn

    #: A control message as JSON gives it (its fields: gateway.control.Message).
    Message = dict[str, Any]

class _Log:
    """The supervisor's few log lines, on stderr in every process's format (gateway.LOG_FORMAT,
    logger "opengateway"), written without the logging module, which brings threading,
    traceback and tokenize along: about 1.2 MB, a tenth of this process."""

    LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}

    def __init__(self) -> None:
        self.threshold = self.LEVELS["INFO"]

    def _line(self, level: str, message: str, args: tuple[object, ...]) -> None:
        if self.LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        try:
            sys.stderr.write(LOG_FORMAT % {"asctime": stamp, "levelname": level, "name": "opengateway",
                                           "message": message % args} + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: nothing to tell
            pass

    def info(self, message: str, *args: object) -> None:
        self._line("INFO", message, args)

    def error(self, message: str, *args: object) -> None:
        self._line("ERROR", message, args)


log = _Log()

SUPERVISOR_PID_ENV = "OPENGATEWAY_SUPERVISOR_PID"
#: Restart backoff: doubles on each crash in a row, reset once a worker has stayed up a while.
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
#: After the drain timeout, how long workers get to finish their cleanup before SIGKILL.
STOP_GRACE_S = 10.0
#: How long each phase of a reload waits for the workers' answers.
RELOAD_PHASE_S = 60.0


class Spec:
    """What ``opengateway serve`` hands over on the supervisor's command line (``exec_supervisor``)."""

    __slots__ = ("workers", "listen_fd", "admin_fd", "drain_timeout_s", "log_level", "config_path")

    def __init__(self, workers: int, listen_fd: int, admin_fd: int | None, drain_timeout_s: float,
                 log_level: str, config_path: str | None) -> None:
        self.workers, self.listen_fd, self.admin_fd = workers, listen_fd, admin_fd
        self.drain_timeout_s, self.log_level, self.config_path = drain_timeout_s, log_level, config_path

    def argv(self) -> list[str]:
        out = ["--workers", str(self.workers), "--listen-fd", str(self.listen_fd),
               "--drain-timeout-s", repr(self.drain_timeout_s), "--log-level", self.log_level]
        if self.admin_fd is not None:
            out += ["--admin-fd", str(self.admin_fd)]
        if self.config_path is not None:
            out += ["--config", self.config_path]
        return out

    @classmethod
    def parse(cls, argv: list[str]) -> Spec:
        if len(argv) % 2:
            raise ValueError(f"expected --name value pairs, got {argv!r}")
        given = dict(zip(argv[::2], argv[1::2]))
        admin = given.get("--admin-fd")
        return cls(int(given["--workers"]), int(given["--listen-fd"]), int(admin) if admin is not None else None,
                   float(given["--drain-timeout-s"]), given["--log-level"], given.get("--config"))

    def worker_argv(self) -> list[str]:
        """A worker's arguments after ``python -m gateway`` (the sockets' and channel's fds follow)."""
        return ["--log-level", self.log_level, "serve"] + (["--config", self.config_path] if self.config_path else [])


def exec_supervisor(spec: Spec, env: dict[str, str]) -> NoReturn:
    """Become the supervisor: the listening sockets (``spec``'s fds) stay open across the exec."""
    os.set_inheritable(spec.listen_fd, True)
    if spec.admin_fd is not None:
        os.set_inheritable(spec.admin_fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *SUPERVISOR_FLAGS, "-c", SUPERVISOR_BOOT, _package_root(),
                               *spec.argv()], env)


#: The supervisor's interpreter runs without ``site`` (-S): no .pth files, no editable-install
#: finders, no sitecustomize, about 1.2 MB less, for a process that needs only the standard
#: library and this package, whose directory it is handed (``SUPERVISOR_BOOT``). -P: the working
#: directory is not on sys.path (a file there named like a standard module would shadow it); the
#: workers are started with -P too.
SUPERVISOR_FLAGS = ("-S", "-P")
#: sys.argv[1] is the directory that holds the ``gateway`` package; the supervisor's arguments follow.
SUPERVISOR_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); import gateway.supervisor as s; sys.exit(s.main())"


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Slot:
    """One worker's place: restarted in it when it dies."""

    __slots__ = ("index", "pid", "channel", "ready", "generation", "crashes_in_a_row", "exit_codes", "started_at",
                 "restart")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.channel: LineChannel | None = None
        #: The worker said it serves, on this generation of the config.
        self.ready = False
        self.generation = 0
        self.crashes_in_a_row = 0
        self.exit_codes: list[int] = []
        self.started_at = 0.0
        self.restart: Timer | None = None


def _refused(of: int, path: str, message: str) -> Message:
    """A reload's outcome (gateway.control.Outcome, as JSON) for a config that was not taken."""
    return {"status": "refused", "of": of, "problems": [{"path": path, "message": message}]}


def _unique(problems: list[Message]) -> list[Message]:
    """Every worker reports the same problems of the same file: once each."""
    return list({(p.get("path"), p.get("message"), p.get("line")): p for p in problems}.values())


class _Phase:
    """One phase of a reload: a message to some workers, then their answers, until each has
    answered (or died) or ``RELOAD_PHASE_S`` has passed; ``on_done`` gets the answers in the
    order of ``slots`` (None: none in time)."""

    __slots__ = ("_owner", "_id", "_answers", "_waiting", "_on_done", "_timer", "_done")

    def __init__(self, owner: Supervisor, op: str, reload_id: int, slots: list[_Slot],
                 on_done: Callable[[list[Message | None]], None], text: str | None = None,
                 generation: int = 0) -> None:
        self._owner, self._id, self._on_done = owner, reload_id, on_done
        self._answers: dict[int, Message | None] = {slot.index: None for slot in slots}
        self._waiting = set(self._answers)
        self._done = False
        message: Message = {"op": op, "id": reload_id}
        if generation:
            message["generation"] = generation
        if text is not None:
            message["text"] = text
        for slot in slots:
            owner.phases[(slot.index, reload_id)] = self
            assert slot.channel is not None
            slot.channel.send(message)
        self._timer = owner.loop.call_later(RELOAD_PHASE_S, self._finish)
        if not self._waiting:
            self._finish()

    def answer(self, index: int, outcome: Message | None) -> None:
        if index in self._waiting:
            self._answers[index] = outcome
            self._waiting.discard(index)
            if not self._waiting:
                self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._timer.cancel()
        for index in self._answers:
            self._owner.phases.pop((index, self._id), None)
        self._on_done(list(self._answers.values()))


class Supervisor:
    def __init__(self, spec: Spec, listeners: list[socket.socket], config_text: str | None, env: dict[str, str],
                 metrics_dir: str, loop: Loop) -> None:
        self.spec, self.listeners, self.env, self.metrics_dir, self.loop = spec, listeners, env, metrics_dir, loop
        self.slots = [_Slot(i + 1) for i in range(spec.workers)]
        #: The configuration every worker runs, and its generation (+1 per committed reload).
        self.config_text = config_text
        self.generation = 1
        #: Signs dashboard sessions when the config sets no dashboard.session_secret, so that a
        #: session works on every worker of this run.
        self.session_secret = os.urandom(32).hex()
        self.phases: dict[tuple[int, int], _Phase] = {}
        self._ids = itertools.count(1)
        self._reloads: deque[Callable[[Message], None]] = deque()
        self._reloading = False
        self._by_pid: dict[int, _Slot] = {}
        self.stopping = False
        #: Set when no worker could start with the config (exit code 2 before serving): nothing
        #: would fix it by restarting, so the supervisor stops with that code.
        self.fatal: int | None = None
        self._ever_ready = False
        self._kill_timer: Timer | None = None

    # -- workers --------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair()
        try:
            theirs.set_inheritable(True)  # with the listening sockets, the only descriptors it inherits
            argv = [sys.executable, "-P", "-m", "gateway", *self.spec.worker_argv(), "--listen-fd",
                    str(self.spec.listen_fd), "--control-fd", str(theirs.fileno())]
            if self.spec.admin_fd is not None:
                argv += ["--admin-fd", str(self.spec.admin_fd)]
            env = {**self.env, PROMETHEUS_DIR_ENV: self.metrics_dir, SUPERVISOR_PID_ENV: str(os.getpid())}
            # SIGHUP blocked in the worker until its handler is in place (gateway/server.py): a
            # reload asked meanwhile waits instead of killing it.
            pid = os.posix_spawn(sys.executable, argv, env, setsigmask={signal.SIGHUP})
        except OSError as exc:
            ours.close()
            log.error("worker %d could not be started: %s", slot.index, exc)
            self._schedule_restart(slot)
            return
        finally:
            theirs.close()
        slot.pid, slot.started_at, slot.ready, slot.generation = pid, time.monotonic(), False, 0
        self._by_pid[pid] = slot
        channel = slot.channel = LineChannel(self.loop, ours, functools.partial(self._handle, slot),
                                             lambda: self._channel_closed(slot, channel))
        # The committed configuration, whatever the file holds now: a worker that starts during a
        # reload joins on the old one and is brought up to date once it is ready.
        channel.send({"op": "start", "generation": self.generation, "text": self.config_text,
                      "session_secret": self.session_secret})
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _channel_closed(self, slot: _Slot, channel: LineChannel) -> None:
        if slot.channel is channel:
            slot.channel = None

    def _reap(self) -> None:
        """SIGCHLD: every worker that has exited."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self._by_pid.pop(pid, None)
            if slot is not None:
                self._exited(slot, pid, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, pid: int, code: int) -> None:
        mark_process_dead(pid, self.metrics_dir)
        slot.exit_codes.append(code)
        slot.pid, slot.ready = None, False
        if slot.channel is not None:
            slot.channel.close()
        for phase in list(self.phases.values()):
            phase.answer(slot.index, None)
        if self.stopping:
            log.info("worker %d (pid %d) exited with %d", slot.index, pid, code)
            return
        if code == 2 and not self._ever_ready:
            # The config (or a plugin's settings) cannot start a worker: restarting won't help.
            log.error("worker %d could not start with the configuration (above); stopping", slot.index)
            self.fatal = 2
            self._stop(signal.SIGTERM)
            return
        how = f"signal {-code}" if code < 0 else f"code {code}"
        delay_s = self._schedule_restart(slot)
        log.error("worker %d (pid %d) died (%s); restarting in %.1f s", slot.index, pid, how, delay_s)

    def _schedule_restart(self, slot: _Slot) -> float:
        if time.monotonic() - slot.started_at > STABLE_AFTER_S:
            slot.crashes_in_a_row = 0
        delay_s = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S * 2 ** slot.crashes_in_a_row)
        slot.crashes_in_a_row += 1
        slot.restart = self.loop.call_later(delay_s, functools.partial(self._restart, slot))
        return delay_s

    def _restart(self, slot: _Slot) -> None:
        slot.restart = None
        if not self.stopping:
            self._spawn(slot)

    # -- messages from the workers --------------------------------------------------------------

    def _handle(self, slot: _Slot, message: Message) -> None:
        op = message.get("op")
        if op == "ready":
            slot.ready, slot.generation = True, int(message.get("generation", 0))
            self._ever_ready = True
            if slot.generation < self.generation and self.config_text is not None and slot.channel is not None:
                slot.channel.send({"op": "apply", "id": next(self._ids), "generation": self.generation,
                                   "text": self.config_text})
        elif op in ("prepared", "committed"):
            outcome = message.get("outcome")
            if not isinstance(outcome, dict):
                return
            if op == "committed":
                slot.generation = int(outcome.get("generation", 0))
            phase = self.phases.get((slot.index, int(message.get("id", 0))))
            if phase is not None:
                phase.answer(slot.index, outcome)
        elif op == "reload":
            channel, ask_id = slot.channel, message.get("id", 0)

            def answer(outcome: Message) -> None:
                if channel is not None:
                    channel.send({"op": "reloaded", "id": ask_id, "outcome": outcome})
            self.reload(answer)
        elif op == "broadcast":
            for other in self.slots:
                if other is not slot and other.channel is not None:
                    other.channel.send(message)

    # -- reload ---------------------------------------------------------------------------------

    def reload(self, done: Callable[[Message], None]) -> None:
        """Reload every worker from the config file, all or none (gateway/control.py); ``done``
        gets the outcome. Reloads run one after the other."""
        self._reloads.append(done)
        if not self._reloading:
            self._next_reload()

    def _next_reload(self) -> None:
        if not self._reloads:
            self._reloading = False
            return
        self._reloading = True
        done = self._reloads.popleft()

        def finish(outcome: Message) -> None:
            done(outcome)
            self._next_reload()
        self._reload(finish)

    def _reload(self, finish: Callable[[Message], None]) -> None:
        of = len(self.slots)
        path = self.spec.config_path
        if path is None:
            finish(_refused(of, "$", "the gateway was started without a config file (--config or "
                                     "OPENGATEWAY_CONFIG), so there is nothing to re-read"))
            return
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            finish(_refused(of, "$", f"cannot read the file: {exc.strerror}"))
            return
        live = [s for s in self.slots if s.ready and s.channel is not None and s.pid is not None]
        reload_id, generation = next(self._ids), self.generation + 1

        def prepared(outcomes: list[Message | None]) -> None:
            problems = [p for o in outcomes if o is not None for p in o.get("problems", [])]
            ok = sum(1 for o in outcomes if o is not None and o.get("status") == "reloaded")
            if problems or ok < len(live):
                for slot in live:
                    if slot.channel is not None:
                        slot.channel.send({"op": "abort", "id": reload_id})
                status = "refused" if problems else "failed"
                if not problems:
                    problems = [{"path": "$", "message": f"{len(live) - ok} worker(s) did not answer the reload in time"}]
                log.error("config reload %s on %d of %d worker(s); every worker keeps the running config: %s",
                          status, len(live) - ok, len(live),
                          "; ".join(f"{p.get('path')}: {p.get('message')}" for p in problems[:5]))
                finish({"status": status, "workers": 0, "of": of, "problems": _unique(problems)})
                return
            self.config_text, self.generation = text, generation
            committing = [s for s in live if s.channel is not None]
            _Phase(self, "commit", reload_id, committing, committed)

        def committed(outcomes: list[Message | None]) -> None:
            took = [o for o in outcomes if o is not None]
            log.info("config reloaded on %d of %d worker(s) (generation %d)", len(took), of, generation)
            if not took:
                finish({"status": "failed", "of": of, "problems": [{"path": "$", "message": "no worker confirmed the new config"}]})
                return
            # A worker that is (re)starting joins on the new config; the answer says how many run it now.
            finish({**took[0], "workers": len(took), "of": of})

        _Phase(self, "prepare", reload_id, live, prepared, text, generation)

    def _reload_on_signal(self) -> None:
        log.info("SIGHUP received: reloading the config on every worker")
        self.reload(lambda outcome: None)  # the outcome is logged by _reload

    # -- stop -----------------------------------------------------------------------------------

    def _stop(self, sig: signal.Signals) -> None:
        if self.stopping:
            return
        log.info("%s: stopping %d worker(s)", sig.name, len(self.slots))
        self.stopping = True
        # Our copies of the sockets first: once every worker has closed its own, connections are refused.
        for sock in self.listeners:
            sock.close()
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.pid is not None:
                os.kill(slot.pid, signal.SIGTERM)
        self._kill_timer = self.loop.call_later(self.spec.drain_timeout_s + STOP_GRACE_S, self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                log.error("worker %d (pid %d) did not stop in time: killing it", slot.index, slot.pid)
                os.kill(slot.pid, signal.SIGKILL)

    def _stopped(self) -> bool:
        return self.stopping and all(slot.pid is None for slot in self.slots)

    def run(self) -> int:
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, functools.partial(self._stop, sig))
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        for slot in self.slots:
            self._spawn(slot)
        loop.run_until(self._stopped)
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.close()
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


def main(argv: list[str] | None = None) -> int:
    spec = Spec.parse(sys.argv[1:] if argv is None else argv)
    log.threshold = _Log.LEVELS[spec.log_level]
    listeners = [socket.socket(fileno=spec.listen_fd)]
    if spec.admin_fd is not None:
        listeners.append(socket.socket(fileno=spec.admin_fd))
    env = dict(os.environ)
    config_text = None
    if spec.config_path is not None:
        try:  # checked a moment ago by `opengateway serve`; the workers check it again
            with open(spec.config_path, encoding="utf-8") as f:
                config_text = f.read()
        except OSError as exc:
            log.error("cannot read %s: %s", spec.config_path, exc.strerror)
            return 2
    metrics_dir, created = prepare_metrics_dir(env)
    log.info("OpenGateway listening on http://%s:%s with %d workers (metrics: %s)",
             *listeners[0].getsockname()[:2], spec.workers, metrics_dir)
    loop = Loop()
    try:
        return Supervisor(spec, listeners, config_text, env, metrics_dir, loop).run()
    finally:
        loop.close()
        for sock in listeners:
            sock.close()
        if created:
            remove_metrics_dir(metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
