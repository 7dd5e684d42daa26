"""Finished requests reach their observers in batches, after their responses have gone out.

The outermost middleware queues each finished request's record here. At the end of the event
loop's turn (``call_soon``: by then aiohttp has written the turn's responses) ``flush`` hands
the batch, in order, to the Prometheus counts (gateway/metrics.py; with several workers they
are counted at once instead, see ``finished``), the dashboard's figures
(gateway/dashboard/stats.py) and the access log (gateway/access_log.py), which writes all the
batch's lines at once. Keeping this off the response path takes it out of every request's
latency, and running it as one loop keeps the three consumers' code and data in the CPU caches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import metrics
from gateway.keys import ACCESS_LOG, BODY, CONFIG, OBSERVERS, RECORD, STATS, RequestRecord

log = logging.getLogger("opengateway.observers")


class Observers:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._pending: list[tuple[RequestRecord, str | None, web.Request]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def finished(self, record: RequestRecord, prompt: str | None, request: web.Request) -> None:
        """Queue a finished request (``prompt`` only when the access log includes prompts)."""
        if metrics.MULTIPROCESS:
            # Several workers: any worker's /metrics reads this one's files, and a worker can die;
            # the counts are in those files before the response is written.
            metrics.observe(record, self._app[CONFIG].metrics.key_name_label)
        self._pending.append((record, prompt, request))
        if len(self._pending) == 1:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        app = self._app
        key_label = app[CONFIG].metrics.key_name_label
        stats, access_log = app[STATS], app[ACCESS_LOG]
        for record, prompt, request in pending:
            # aiohttp keeps a keep-alive connection's last request until the next one arrives:
            # let go of what is ours in it (the record, the body with its prompt of up to 32,000
            # characters), now that the answer has gone out.
            request.pop(RECORD, None)
            request.pop(BODY, None)
            try:
                if not metrics.MULTIPROCESS:  # counted in finished() otherwise
                    metrics.observe(record, key_label)
                stats.add(record)
                if access_log is not None:
                    access_log.write(record, prompt)
            except Exception:  # a bug here must not lose the rest of the batch
                log.exception("could not observe request %s", record.request_id)
        if access_log is not None:
            access_log.flush()


async def lifetime(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after the access log's: what is still queued at shutdown is observed before
    the access log closes."""
    yield
    app[OBSERVERS].flush()
