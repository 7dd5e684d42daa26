"""``Gate``: a fake-upstream behaviour that holds requests until the test releases them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fake_upstream import ok


class Gate:
    """An upstream behaviour that holds requests until released, and says when ``count`` arrived."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self.all_arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.arrived += 1
        if self.arrived >= self.count:
            self.all_arrived.set()
        await self.release.wait()
        return await ok()(request, body)
