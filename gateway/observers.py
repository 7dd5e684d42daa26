"""Finished requests reach their observers in batches, after their responses have gone out.

The outermost middleware queues each finished request's record here. At the end of the event
loop's turn (``call_soon``: by then aiohttp has written the turn's responses) ``flush`` hands
the batch, in order, to the Prometheus counts (gateway/metrics.py; with several workers they
are counted at once instead, see ``finished``), the dashboard's figures
(gateway/dashboard/stats.py) and the access log (gateway/access_log.py), which writes all the
batch's lines at once. Keeping this off the response path takes it out of every request's
latency, and running it as one loop keeps the three consumers' code and data in the CPU caches.
Each request is observed with the settings of the configuration it was served with.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Iterable

from aiohttp import web

from gateway import metrics
from gateway.access_log import AccessLog
from gateway.dashboard.stats import Stats
from gateway.record import RequestRecord
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.tracing_context import RequestTracer

log = logging.getLogger("opengateway.observers")


class Observers:
    def __init__(self, stats: Stats, access_log: AccessLog | None, release: Iterable[web.RequestKey[Any]],
                 tracing: RequestTracer | None = None) -> None:
        self._stats = stats
        self._access_log = access_log
        #: With ``tracing.enabled``: the request's spans, built from its record (gateway/tracing.py).
        self._tracing = tracing
        #: What to take out of a request once it is observed (see ``flush``).
        self._release = tuple(release)
        self._pending: list[tuple[RequestRecord, str | None, web.Request, Runtime]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def include_prompt(self) -> bool:
        """Whether ``finished`` needs the prompt at all (the access log is on; the runtime decides)."""
        return self._access_log is not None

    def finished(self, record: RequestRecord, prompt: str | None, request: web.Request, runtime: Runtime) -> None:
        """Queue a finished request (``prompt`` only when the access log may include prompts)."""
        if metrics.MULTIPROCESS:
            # Several workers: any worker's /metrics reads this one's files, and a worker can die;
            # the counts are in those files before the response is written.
            metrics.observe(record, runtime.config.metrics.key_name_label)
        self._pending.append((record, prompt, request, runtime))
        if len(self._pending) == 1:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        stats, access_log, tracing = self._stats, self._access_log, self._tracing
        for record, prompt, request, runtime in pending:
            if tracing is not None:  # before the plan (and its prompt, when opted in) is let go
                tracing.observe(record, request, runtime)
            # aiohttp keeps a keep-alive connection's last request until the next one arrives:
            # let go of what is ours in it (the record, the plan with its prompt of up to 32,000
            # characters), now that the answer has gone out.
            for key in self._release:
                request.pop(key, None)
            config = runtime.config
            try:
                if not metrics.MULTIPROCESS:  # counted in finished() otherwise
                    metrics.observe(record, config.metrics.key_name_label)
                stats.add(record)
                if access_log is not None:
                    access_log.write(record, config.log, prompt)
            except Exception:  # a bug here must not lose the rest of the batch
                log.exception("could not observe request %s", record.request_id)
        if access_log is not None:
            access_log.flush()
