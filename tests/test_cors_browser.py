"""A web page calling the gateway from another origin, in a real headless Chromium: the page is
served from one loopback origin (http://127.0.0.1:P1) and calls the gateway on another
(http://127.0.0.1:P2) with ``fetch``, and with the official openai Node SDK loaded as an ES module
(``dangerouslyAllowBrowser: true``, from tests/node, which .ci/run installs).

With ``cors:`` naming the page's origin, the page gets the picture (decoded by the browser), reads
the request id and rate limits of the answer, and reads a 401's error. Without it, or with another
origin allowed, the same call fails as browsers report a CORS refusal: ``fetch`` rejects with a
``TypeError`` ("Failed to fetch" in Chromium), and the page learns nothing of the answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import key_hash
from gateway.config_load import parse_config
from tests.chromium import CHROMIUM, DevTools

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("chromium is not installed (CI installs it and never skips)", allow_module_level=True)

KEY = "og-browser-page-key-4c1d9e"
SDK_DIR = Path(__file__).parent / "node" / "node_modules" / "openai"
PAGE_HTML = "<!doctype html><meta charset=utf-8><title>a page on another origin</title><p>page</p>"

#: The page's call, as a front-end would write it; its outcome as JSON-able values.
FETCH = """
(async () => {
  try {
    const resp = await fetch(%(url)s, {
      method: "POST",
      headers: {"Authorization": "Bearer " + %(key)s, "Content-Type": "application/json",
                "x-opengateway-user-id": "user-42", "x-opengateway-session-id": "tab-1",
                "Idempotency-Key": "page-call-1"},
      body: JSON.stringify({model: "openai/gpt-image-1", prompt: "A small red cube on a white background.",
                            size: "1024x1024", quality: "low"}),
    });
    const body = await resp.json();
    const out = {status: resp.status, requestId: resp.headers.get("x-request-id"),
                 remaining: resp.headers.get("x-ratelimit-remaining-requests"), error: body.error || null};
    if (resp.ok) {
      const img = new Image();
      img.src = "data:image/png;base64," + body.data[0].b64_json;
      await img.decode();
      out.image = [img.naturalWidth, img.naturalHeight];
    }
    return out;
  } catch (e) {
    return {thrown: e.constructor.name, message: e.message};
  }
})()
"""

#: The official SDK in the page: its preflight asks for its x-stainless-* headers.
SDK = """
(async () => {
  const {default: OpenAI} = await import("/sdk/index.mjs");
  const client = new OpenAI({baseURL: %(base)s, apiKey: %(key)s, dangerouslyAllowBrowser: true, maxRetries: 0});
  try {
    const result = await client.images.generate({model: "openai/gpt-image-1", prompt: "A red cube", quality: "low",
                                                 size: "1024x1024"});
    return {images: result.data.length, png: result.data[0].b64_json.startsWith("iVBORw0KGgo"),
            attempts: result.extra.routing.attempts.length};
  } catch (e) {
    return {thrown: e.constructor.name, message: e.message};
  }
})()
"""


def gateway_config(cors: str) -> Any:
    return parse_config(f"""
keys:
  - name: page
    hash: "{key_hash(KEY)}"
    limits: {{requests_per_minute: 100}}
providers:
  - {{id: local, plugin: local}}
{cors}
""", env={})


async def page_origin(aiohttp_server: Callable[..., Any]) -> Any:
    """The page's own origin: the page, and the SDK's ES modules (as a front-end's bundle would be)."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE_HTML, content_type="text/html")

    async def sdk(request: web.Request) -> web.StreamResponse:
        path = (SDK_DIR / request.match_info["path"]).resolve()
        if not path.is_relative_to(SDK_DIR.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "text/javascript"})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/sdk/{path:.+}", sdk)
    return await aiohttp_server(app)


async def open_page(browser: DevTools, url: str) -> Callable[[str], Any]:
    target = await browser.send("Target.createTarget", {"url": "about:blank"})
    session = (await browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
    await browser.send("Page.enable", session=session)
    await browser.send("Page.navigate", {"url": url}, session=session)
    await browser.event("Page.loadEventFired")

    async def evaluate(expression: str) -> Any:
        result = await browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                         "returnByValue": True}, session=session)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")
    return evaluate


async def test_a_page_on_another_origin_calls_the_gateway(aiohttp_server: Callable[..., Any],
                                                           aiohttp_client: Callable[..., Any],
                                                           browser: DevTools) -> None:
    page = await page_origin(aiohttp_server)
    origin = str(page.make_url("")).rstrip("/")
    allowed = await aiohttp_client(create_app(gateway_config(f"cors: {{allow_origins: ['{origin}']}}")))
    off = await aiohttp_client(create_app(gateway_config("")))
    elsewhere = await aiohttp_client(create_app(gateway_config("cors: {allow_origins: ['https://app.example.com']}")))
    assert allowed.port != page.port and off.port != page.port
    evaluate = await open_page(browser, str(page.make_url("/")))
    assert await evaluate("location.origin") == origin

    def call(client: Any, key: str = KEY) -> str:
        return FETCH % {"url": json.dumps(str(client.make_url("/v1/images/generations"))), "key": json.dumps(key)}

    got = await evaluate(call(allowed))
    assert got["status"] == 200, got
    assert got["image"] == [1024, 1024]  # the browser decoded the picture
    assert got["requestId"].startswith("req_") and got["remaining"] == "99"  # exposed headers are readable

    refused = await evaluate(call(allowed, key="og-wrong"))
    assert refused["status"] == 401 and refused["error"]["code"] == "invalid_api_key", refused

    for client in (off, elsewhere):
        failed = await evaluate(call(client))
        assert failed == {"thrown": "TypeError", "message": "Failed to fetch"}, failed

    if not (SDK_DIR / "index.mjs").is_file():
        if os.environ.get("CI"):
            pytest.fail("tests/node/node_modules is missing and CI is set: .ci/run installs it (npm ci)")
        pytest.skip("tests/node/node_modules is missing (cd tests/node && npm ci): the SDK part is not run")
    sdk = SDK % {"base": json.dumps(str(allowed.make_url("/v1"))), "key": json.dumps(KEY)}
    assert await evaluate(sdk) == {"images": 1, "png": True, "attempts": 1}
    sdk_off = SDK % {"base": json.dumps(str(off.make_url("/v1"))), "key": json.dumps(KEY)}
    failed = await evaluate(sdk_off)
    assert failed["thrown"] == "APIConnectionError", failed  # the SDK's name for a fetch that threw
