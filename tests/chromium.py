"""A real headless Chromium for the browser tests, driven over the DevTools protocol (the
``browser`` fixture in tests/conftest.py starts one per test)."""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser websocket (flattened sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.queue(data["method"]).put_nowait(data.get("params", {}))

    def queue(self, method: str) -> asyncio.Queue[dict[str, Any]]:
        return self.events.setdefault(method, asyncio.Queue())

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        msg_id = next(self.ids)
        future = self.pending[msg_id] = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_json(message)
        answer = await asyncio.wait_for(future, timeout=60)
        assert "error" not in answer, answer
        return answer.get("result", {})

    async def event(self, method: str) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue(method).get(), timeout=60)



@asynccontextmanager
async def launch() -> AsyncIterator[DevTools]:
    """Chromium on a fresh profile, stopped (by its pid) and its profile removed afterwards."""
    profile = tempfile.mkdtemp(prefix="og-chromium-")
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        url = None
        for _ in range(500):  # bounded: chromium logs a few lines before the DevTools one
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
            if not line:
                break
            if m := re.search(rb"DevTools listening on (ws://\S+)", line):
                url = m.group(1).decode()
                break
        assert url, "chromium did not open its DevTools port"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            devtools = DevTools(ws)
            yield devtools
            await ws.send_json({"id": 0, "method": "Browser.close", "params": {}})
            devtools.reader.cancel()
    finally:
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()  # only the chromium this fixture started
            await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
