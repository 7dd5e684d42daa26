"""Config reload (SIGHUP, ``POST /admin/reload``): build a new Runtime from the config file and swap
it in; a config with problems is refused and the running one stays.

One process (``serve`` without workers): the reload happens here. Several workers: every worker
must run the same configuration, so a worker asks the supervisor, which reads the file once and
runs the two-phase reload of gateway/control.py on every worker; ``prepare`` and ``commit`` below
are the worker's two halves of it.

Requests in flight keep the Runtime they started with. The old providers are closed once no
request can still be using them: a request's upstream calls end within the old config's
``router.deadline_s``, so they are closed that long (plus a margin) after the swap, or at shutdown
if that comes first. The limits backend and the connection pools belong to the process, not to a
configuration: counters survive, and the settings tied to them (gateway/runtime.py
``PROCESS_SETTINGS``) wait for a restart, which the reload's answer and the log say.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from gateway.config import ConfigError, Problem
from gateway.config_load import parse_config
from gateway.control import Outcome
from gateway.control import Problem as WireProblem
from gateway.registry import Registry
from gateway.runtime import Resources, Runtime, RuntimeRef, build_runtime, changed_sections, restart_required

log = logging.getLogger("opengateway.reload")

#: Added to the old deadline before its providers are closed (response writing, clock slack).
CLOSE_MARGIN_S = 5.0


def read_config_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def summary(runtime: Runtime, status: str = "reloaded", workers: int = 1, of: int = 1,
            restart: list[str] | None = None) -> Outcome:
    return Outcome(status=status, workers=workers, of=of, generation=runtime.generation,
                   providers=len(runtime.config.providers), models=len(runtime.registry.models),
                   keys=len(runtime.keys), restart_required=restart or [])


def refused(problems: list[Problem], workers: int = 0, of: int = 1) -> Outcome:
    return Outcome(status="refused", workers=workers, of=of,
                   problems=[WireProblem(p.path, p.message, p.line) for p in problems])


class Reloader:
    def __init__(self, config_path: str | None, ref: RuntimeRef, resources: Resources,
                 on_swap: Callable[[Runtime], None] | None = None) -> None:
        self.config_path = config_path
        self.ref = ref
        self.resources = resources
        self.on_swap = on_swap
        #: Set on a worker: asks the supervisor to reload every worker (gateway/worker.py).
        self.coordinator: Callable[[], Awaitable[Outcome]] | None = None
        self._lock = asyncio.Lock()  # one reload at a time: the last file read wins, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired: set[Registry] = set()

    async def reload(self) -> Outcome:
        """Reload from the config file: here, or on every worker through the supervisor."""
        if self.coordinator is not None:
            return await self.coordinator()
        if self.config_path is None:
            problem = Problem("$", "the gateway was started without a config file (--config or "
                                   "OPENGATEWAY_CONFIG), so there is nothing to re-read")
            log.error("config reload refused: %s", problem)
            return refused([problem])
        async with self._lock:
            try:
                text = read_config_text(self.config_path)
            except OSError as exc:
                problem = Problem("$", f"cannot read the file: {exc.strerror}")
                log.error("config reload refused, the running config stays: %s", problem)
                return refused([problem])
            runtime, problems = self.prepare(text)
            if runtime is None:
                return refused(problems)
            return summary(runtime, restart=self.commit(runtime))

    def reload_soon(self) -> None:
        """For a signal handler: run a reload as a task (kept referenced until it ends)."""
        async def run() -> None:
            await self.reload()
        self._track(asyncio.get_running_loop().create_task(run()))

    def prepare(self, text: str | None, generation: int | None = None) -> tuple[Runtime | None, list[Problem]]:
        """Build the Runtime of a config file's text without using it; or the problems found."""
        if text is None:
            return None, [Problem("$", "the gateway was started without a config file (--config or "
                                       "OPENGATEWAY_CONFIG), so there is nothing to re-read")]
        try:
            config = parse_config(text, source=self.config_path or "config")
            # The supervisor numbers the generations of all workers alike.
            runtime = build_runtime(config, self.resources, previous=self.ref.current, generation=generation)
        except ConfigError as exc:
            log.error("config reload refused, the running config stays: %s", exc)
            return None, exc.problems
        return runtime, []

    def commit(self, runtime: Runtime) -> list[str]:
        """Swap ``runtime`` in; the process settings it changes (they wait for a restart)."""
        old = self.ref.current
        self.ref.current = runtime  # one assignment: requests in flight keep the runtime they pinned
        if self.on_swap is not None:
            self.on_swap(runtime)
        config = runtime.config
        changed = changed_sections(old.config, config)
        log.info("config reloaded (generation %d): %d providers, %d models, %d keys; changed: %s",
                 runtime.generation, len(config.providers), len(runtime.registry.models), len(runtime.keys),
                 ", ".join(changed) or "nothing")
        restart = restart_required(old.config, config)
        if restart:
            log.warning("these settings take effect at the next restart: %s", ", ".join(restart))
        if old.registry is not runtime.registry:
            self._close_later(old.registry, old.config.router.deadline_s + CLOSE_MARGIN_S)
        return restart

    def _close_later(self, registry: Registry, delay_s: float) -> None:
        self._retired.add(registry)

        async def close() -> None:
            await asyncio.sleep(delay_s)
            self._retired.discard(registry)
            await registry.close()
        self._track(asyncio.get_running_loop().create_task(close()))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """At shutdown: stop waiting and close every retired registry now."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for registry in list(self._retired):
            await registry.close()
        self._retired.clear()
