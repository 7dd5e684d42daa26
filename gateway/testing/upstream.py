"""A fake upstream for plugin tests: a real aiohttp server on loopback that answers each request
with the next behaviour scripted for its method and path, and records what it received.

    async with FakeUpstream() as upstream:
        upstream.script("POST", "/v1/images", json_reply({"images": [...]}), json_reply({...}, status=429))
        settings = {"api_key": "test-key", "base_url": upstream.url("/v1")}
        ...  # build the plugin, call it
        [sent] = upstream.received
        assert sent.headers["authorization"] == "Bearer test-key" and sent.json()["prompt"] == "..."

Behaviours queued with ``script`` answer one request each, in order; ``always`` sets the answer
once the queue is empty; a request nothing was scripted for gets a 404 naming it, so a plugin
calling the wrong URL fails visibly. A behaviour is any ``async (request, received) -> response``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
from typing import Any, Awaitable, Callable, Mapping

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy


class Received(msgspec.Struct):
    """One request as the fake upstream received it; ``headers`` are case-insensitive."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def form(self) -> dict[str, str | bytes]:
        """A ``multipart/form-data`` body's fields: text as str, files as bytes."""
        head = f"Content-Type: {self.headers.get('content-type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        fields: dict[str, str | bytes] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            assert isinstance(name, str) and isinstance(payload, bytes), "a form part without a name or body"
            fields[name] = payload if part.get_filename() else payload.decode()
        return fields


Behaviour = Callable[[web.Request, Received], Awaitable[web.StreamResponse]]


def json_reply(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Behaviour:
    """Answer ``payload`` encoded as JSON."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(status=status, body=msgspec.json.encode(payload), content_type="application/json",
                            headers=headers)
    return reply


def bytes_reply(data: bytes, status: int = 200, content_type: str = "application/octet-stream",
                headers: Mapping[str, str] | None = None) -> Behaviour:
    """Answer ``data`` as it is (an image to download, a broken body)."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(status=status, body=data, content_type=content_type, headers=headers)
    return reply


def hang(seconds: float = 3600.0) -> Behaviour:
    """Answer nothing for ``seconds`` (a plugin must give up at its ``call.timeout_s``)."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=504)
    return reply


def close_connection() -> Behaviour:
    """Close the connection without answering."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    return reply


def png_bytes(width: int = 1, height: int = 1, color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A real PNG, for answers a client (or the plugin) decodes."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


class FakeUpstream:
    """A scripted HTTP server on 127.0.0.1 (see the module docstring). ``in_flight`` counts
    requests being answered, ``cancelled`` those whose client went away mid-answer."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.in_flight = 0
        self.cancelled = 0
        self._queues: dict[tuple[str, str], list[Behaviour]] = {}
        self._always: dict[tuple[str, str], Behaviour] = {}
        self._server: TestServer | None = None

    def script(self, method: str, path: str, *behaviours: Behaviour) -> None:
        """Queue ``behaviours`` for ``method`` requests to ``path`` (no query), one per request."""
        self._queues.setdefault((method.upper(), path), []).extend(behaviours)

    def always(self, method: str, path: str, behaviour: Behaviour) -> None:
        """Answer ``method`` requests to ``path`` with ``behaviour`` once its queue is empty."""
        self._always[(method.upper(), path)] = behaviour

    def sent_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def url(self, path: str = "") -> str:
        """The absolute URL of ``path`` on this server (``http://127.0.0.1:PORT/path``)."""
        if self._server is None:
            raise RuntimeError("start the fake upstream first (async with FakeUpstream() as upstream)")
        return str(self._server.make_url(path))

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path, dict(request.query),
                            CIMultiDictProxy(CIMultiDict(request.headers)), await request.read())
        self.received.append(received)
        key = (request.method, request.path)
        queue = self._queues.get(key)
        behaviour = queue.pop(0) if queue else self._always.get(key)
        if behaviour is None:
            return web.json_response({"error": f"no behaviour scripted for {request.method} {request.path}"},
                                     status=404)
        self.in_flight += 1
        try:
            return await behaviour(request, received)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
