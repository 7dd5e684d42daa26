"""Running the app: one process on one port, with a graceful drain on SIGTERM / SIGINT.

On a signal ``/readyz`` turns 503 at once, the listening socket closes, requests in flight
finish (up to ``server.drain_timeout_s``), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.keys import LIFECYCLE

log = logging.getLogger("opengateway")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve(config: Config, host: str, port: int, *, on_ready: "asyncio.Future[int] | None" = None) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.server.drain_timeout_s,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=False)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("OpenGateway listening on http://%s:%s", host, bound)
    if on_ready is not None:
        on_ready.set_result(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[LIFECYCLE].draining = True
    log.info("draining: no new connections, waiting up to %.0f s for requests in flight",
             config.server.drain_timeout_s)
    await runner.cleanup()  # closes the listener, waits for handlers up to shutdown_timeout
    log.info("stopped")
