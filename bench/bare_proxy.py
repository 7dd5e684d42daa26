"""The benchmark's floor: the least an aiohttp + msgspec proxy can do for this endpoint.

One handler, no middleware: decode the JSON body with msgspec, POST it to the upstream over a
pooled aiohttp ClientSession, answer with the upstream's bytes. No auth, no validation beyond
"is it a JSON object with a model", no routing, no metrics, no log. bench/run.py runs it beside
nginx so that "gateway / bare aiohttp" says what our features cost on top of the framework.

    python bench/bare_proxy.py --port 8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import msgspec
from aiohttp import web


class Body(msgspec.Struct):
    model: str


async def main(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), read_bufsize=1 << 20)
    url = upstream.rstrip("/") + "/v1/images/generations"
    decode = msgspec.json.Decoder(Body).decode

    async def images(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            decode(raw)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        async with session.post(url, data=raw, headers={"Content-Type": "application/json"}) as up:
            body = await up.read()
            return web.Response(body=body, status=up.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/images/generations", images)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await session.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.port, args.upstream))
