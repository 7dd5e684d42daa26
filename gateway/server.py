"""Running the app in one process: listening sockets, signals, and a graceful drain.

The sockets are bound by ``bind_listeners`` before the app starts: in-process for a single
worker, or once by the supervisor (gateway/supervisor.py) and inherited by every worker.

On SIGTERM / SIGINT ``/readyz`` turns 503 at once, the listening sockets close (new connections
are refused), idle keep-alive connections close, requests in flight finish (up to
``server.drain_timeout_s``, after which aiohttp cancels them), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
from typing import Callable

from aiohttp import web

from gateway.app import create_app
from gateway.appkeys import DASHBOARD_SESSIONS, LIFECYCLE, RELOADER
from gateway.config import Config
from gateway.control import Channel
from gateway.half_close import HalfCloseAppRunner
from gateway.listeners import BACKLOG, Listeners, bind_listeners
from gateway.worker import WorkerControl

__all__ = ["Listeners", "bind_listeners", "install_uvloop", "serve"]

log = logging.getLogger("opengateway")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


#: glibc malloc: buffers below this come from the heap instead of a fresh mmap each (M_MMAP_THRESHOLD).
MMAP_THRESHOLD_BYTES = 16 << 20
#: ...and the heap keeps this much free memory at its top instead of returning it (M_TRIM_THRESHOLD).
TRIM_THRESHOLD_BYTES = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Keep megabyte buffers (upstream answers, their socket reads) on glibc's heap.

    By default glibc serves every allocation above 128 KiB-32 MiB (its threshold moves) with a
    fresh mmap and unmaps it on free, so each 2 MB image answer costs hundreds of page faults in
    the kernel: on the benchmark's S3 that was half the gateway's CPU time, and the most variable
    half. The MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ environment variables, when an
    operator sets them, win. Not glibc (musl, macOS): nothing to do."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's own symbol: other libcs' mallopt take other parameters
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def _on_reload(app: web.Application) -> Callable[[], None]:
    """SIGHUP: re-read the config file and swap it in (gateway/reload.py); on a worker, through the
    supervisor, on every worker."""
    def reload() -> None:
        log.info("SIGHUP received: reloading the config")
        app[RELOADER].reload_soon()
    return reload


class WorkerStart:
    """What a worker was handed by the supervisor: its control socket and the config's
    generation and session secret (gateway/control.py)."""

    def __init__(self, control: socket.socket, generation: int, session_secret: str | None) -> None:
        self.control = control
        self.generation = generation
        self.session_secret = session_secret


async def serve(config: Config, listeners: Listeners, *,
                on_ready: Callable[[Listeners], None] | None = None, config_path: str | None = None,
                worker: WorkerStart | None = None) -> None:
    """Serve on already-bound sockets until SIGTERM / SIGINT, then drain and return."""
    tune_malloc()
    share_request_attributes()
    app = create_app(config, config_path, session_secret=worker.session_secret if worker else None,
                     generation=worker.generation if worker else 1)
    # handler_cancellation: a client that disconnects cancels its handler, and with it the
    # upstream call (aiohttp >= 3.9 leaves handlers running unless asked).
    # shutdown_timeout: how long runner.cleanup() lets handlers in flight finish before it
    # cancels them (web_protocol.RequestHandler.shutdown); idle keep-alive connections are
    # closed at once (web_server.Server.pre_shutdown) and busy ones close after their response.
    # HalfCloseAppRunner: a client that shuts down its write side after its request still gets
    # the answer (gateway/half_close.py); one that closed its socket is still cancelled.
    # auto_decompress=False: aiohttp's parser would inflate a compressed request body as it
    # arrives, before any middleware could refuse it (a 1 MB gzip body is a gigabyte of CPU work
    # on the event loop, key or not); the body link refuses such bodies with 415 instead.
    runner = HalfCloseAppRunner(app, access_log=None, shutdown_timeout=config.server.drain_timeout_s,
                                handle_signals=False, handler_cancellation=True, auto_decompress=False)
    await runner.setup()
    if listeners.admin is not None:
        # Known before the first request can be accepted, so admin routes are never served by mistake.
        app[LIFECYCLE].admin_port = listeners.admin_port
        await web.SockSite(runner, listeners.admin, backlog=BACKLOG).start()
        log.info("admin routes (/metrics, /dashboard) on http://%s:%s",
                 config.server.admin_host, listeners.admin_port)
    await web.SockSite(runner, listeners.public, backlog=BACKLOG).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = None
    if worker is not None:  # before SIGHUP is handled: a worker's reload goes through the supervisor
        control = WorkerControl(await Channel.open(worker.control), app[RELOADER],
                                on_broadcast=app[DASHBOARD_SESSIONS].on_broadcast)
        app[DASHBOARD_SESSIONS].broadcast = control.broadcast
    # Config reload: SIGHUP to this process (to a worker: the supervisor reloads them all).
    loop.add_signal_handler(signal.SIGHUP, _on_reload(app))
    # A worker starts with SIGHUP blocked (gateway/supervisor.py), so one sent before this point
    # waits instead of killing it; it is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if control is not None:
        control.start()  # tells the supervisor it serves (and on which config generation)

    _freeze_startup_objects()
    log.info("OpenGateway listening on http://%s:%s", *listeners.public.getsockname()[:2])
    if on_ready is not None:
        on_ready(listeners)
    try:
        await stop.wait()
    finally:
        try:
            # The handlers stay during the drain: a second signal (Ctrl-C reaches every worker
            # of the terminal's process group, besides the supervisor's SIGTERM) changes nothing.
            await _drain(app, runner, config.server.drain_timeout_s)
            if control is not None:
                await control.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def share_request_attributes() -> None:
    """Make every aiohttp Request keep its attributes in the table its class shares.

    CPython 3.11 keeps an object's attributes in a key table shared by its class, and stops
    adding names to it once enough instances have been made. aiohttp sets some of a Request's
    attributes only later in its life (the match info, the parsed content type): when the first
    requests of a process arrive together, as thousands of connections do, those names miss the
    table, and from then on every Request carries a dict of its own, about 630 bytes more per
    request in flight (bench/inflight_memory.py). One instance made before any request, with
    every attribute aiohttp declares, puts them all in the table."""
    probe = object.__new__(web.Request)
    for name in sorted(web.Request.ATTRS):
        object.__setattr__(probe, name, None)


def _freeze_startup_objects() -> None:
    """Move everything start-up allocated (modules, config, catalogue: a few hundred thousand
    objects) out of the garbage collector's reach. Its full collections then walk only what
    requests allocate: a few milliseconds instead of tens, which shows in p99 latency. Then give
    back to the system the heap pages start-up freed (the YAML, the plugins' metadata), which
    ``tune_malloc``'s thresholds would otherwise keep: about 2 MB of every process's idle RSS."""
    gc.collect()
    gc.freeze()
    trim_heap()


def trim_heap() -> bool:
    """glibc's malloc_trim(0): free pages anywhere in the heap go back to the system."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's own symbol (see tune_malloc)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


async def _drain(app: web.Application, runner: web.AppRunner, drain_timeout_s: float) -> None:
    app[LIFECYCLE].draining = True  # /readyz answers 503 on connections still open
    for site in list(runner.sites):
        await site.stop()  # closes this process's listening sockets: no new connections
    server = runner.server
    busy = len(server.connections) if server is not None else 0
    log.info("draining: listener closed, %d connection(s) open, waiting up to %g s for requests "
             "in flight", busy, drain_timeout_s)
    await runner.cleanup()
    log.info("stopped")
