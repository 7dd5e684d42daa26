"""Config reload (SIGHUP, ``POST /admin/reload``): re-read the file the gateway started with,
build a new GatewayState and swap it in; a config with problems is refused and the old one stays.

Requests in flight keep the state they started with (the handler holds a reference). The old
providers are closed once no request can still be using them: a handler's upstream calls end
within the old config's ``router.deadline_s``, so they are closed that long (plus a margin) after
the swap, or at shutdown if that comes first. The limits backend belongs to the app, not to a
config, so counters survive; a change of ``limits.backend`` / ``key_prefix`` needs a restart.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import warnings
from datetime import UTC, datetime
from typing import AsyncIterator

import msgspec
from aiohttp import web

from gateway.config import ConfigError, Problem, load_config
from gateway.errors import InvalidRequest, PermissionDenied, Unauthorized
from gateway.keys import HTTP, RELOADER, SESSION, STATE
from gateway.middleware import public
from gateway.middleware.auth import bearer_token, key_digest
from gateway.registry import Registry
from gateway.state import GatewayState

log = logging.getLogger("opengateway.reload")

#: Added to the old deadline before its providers are closed (response writing, clock slack).
CLOSE_MARGIN_S = 5.0


class Reloader:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._lock = asyncio.Lock()  # one reload at a time: the last file read wins, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._retired: set[Registry] = set()

    async def reload(self, app: web.Application) -> list[Problem]:
        """Swap in the config file's current content; the problems found if it was refused."""
        if self.config_path is None:
            problem = Problem("$", "the gateway was started without a config file (--config or "
                                   "OPENGATEWAY_CONFIG), so there is nothing to re-read")
            log.error("config reload refused: %s", problem)
            return [problem]
        async with self._lock:
            try:
                config = load_config(self.config_path)
                state = GatewayState.build(config, app[SESSION], app[HTTP])
            except ConfigError as exc:
                log.error("config reload refused, the running config stays: %s", exc)
                return exc.problems
            old = app[STATE]
            _swap_state(app, state)
            log.info("config reloaded from %s: %d providers, %d models, %d keys", self.config_path,
                     len(config.providers), len(state.registry.models), len(config.keys))
            if (config.limits.backend, config.limits.key_prefix) != (old.config.limits.backend,
                                                                     old.config.limits.key_prefix):
                log.warning("limits.backend and limits.key_prefix take effect at the next restart")
            if config.server != old.config.server:
                log.warning("the server section takes effect at the next restart")
            self._close_later(old.registry, old.config.router.deadline_s + CLOSE_MARGIN_S)
            return []

    def reload_soon(self, app: web.Application) -> None:
        """For a signal handler: run a reload as a task (kept referenced until it ends)."""
        self._track(asyncio.get_running_loop().create_task(self.reload(app)))

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


def _swap_state(app: web.Application, state: GatewayState) -> None:
    # aiohttp warns when a started app's state changes, because handlers may have cached it;
    # here that is the point: one assignment, atomic in the event loop, and requests in flight
    # keep the state object they already hold.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app[STATE] = state


async def reloader_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after the upstream session's: retired providers close before the session."""
    yield
    await app[RELOADER].close()


def _require_admin(request: web.Request) -> None:
    digest = key_digest(bearer_token(request))
    config = request.app[STATE].config
    for key in config.admin_keys:
        expired = key.expires_at is not None and datetime.now(UTC) >= key.expires_at
        if key.enabled and not expired and hmac.compare_digest(bytes.fromhex(key.hash.removeprefix("sha256:")), digest):
            return
    if any(hmac.compare_digest(bytes.fromhex(k.hash.removeprefix("sha256:")), digest) for k in config.keys):
        raise PermissionDenied("This endpoint needs an admin key (admin_keys in the config).",
                               code="admin_key_required")
    raise Unauthorized("Incorrect API key provided.", headers={"WWW-Authenticate": 'Bearer realm="opengateway"'})


class ReloadAnswer(msgspec.Struct):
    status: str
    providers: int
    models: int
    keys: int


@public  # authenticated here with an admin key, not by the gateway-key middleware
async def admin_reload(request: web.Request) -> web.Response:
    _require_admin(request)
    problems = await request.app[RELOADER].reload(request.app)
    if problems:
        raise InvalidRequest(f"The new config was refused ({len(problems)} problem(s)); the running config "
                             "stays.", code="invalid_config",
                             extra={"problems": [msgspec.to_builtins(p) for p in problems]})
    state = request.app[STATE]
    answer = ReloadAnswer("reloaded", len(state.config.providers), len(state.registry.models),
                          len(state.config.keys))
    return web.Response(body=msgspec.json.encode(answer), content_type="application/json")
