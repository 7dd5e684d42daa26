"""The dashboard in a real headless Chromium, driven over the DevTools protocol: sign in through
the form, read the rendered figures, and prove attacker-controlled ids render as inert text.

The page's CSP would block an injected script on its own; the browser is told to bypass CSP so
that this test proves the escaping, not the header. ``alert`` is replaced before any page script
runs, so a script that did run would be recorded.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.chromium import CHROMIUM, DevTools
from tests.conftest import ADMIN, ADMIN_KEY, AUTH

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("chromium is not installed (CI installs it and never skips)", allow_module_level=True)

XSS_USER = "<script>alert(1)</script>"
XSS_SESSION = '"><img src=x onerror="alert(2)">'
XSS_MODEL = "openai/<svg onload=alert(3)>"
RECORD_ALERTS = """
window.__alerts = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = (...args) => { window.__alerts.push(name + ":" + String(args[0])); };
}
"""




async def test_dashboard_in_chromium(upstream: Any, make_client: Any, browser: DevTools) -> None:
    client = await make_client(ADMIN)
    route = "/v1/images/generations"
    hostile = {**AUTH, "x-opengateway-user-id": XSS_USER, "x-opengateway-session-id": XSS_SESSION}
    for _ in range(3):
        resp = await client.post(route, headers=hostile, json={"model": "openai/gpt-image-1", "prompt": "x"})
        assert resp.status == 200
    assert (await client.post(route, headers=hostile, json={"model": XSS_MODEL, "prompt": "x"})).status == 400

    target = await browser.send("Target.createTarget", {"url": "about:blank"})
    session = (await browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
    await browser.send("Page.enable", session=session)
    await browser.send("Page.setBypassCSP", {"enabled": True}, session=session)
    await browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_ALERTS}, session=session)

    async def evaluate(expression: str) -> Any:
        result = await browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                    session=session)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    await browser.send("Page.navigate", {"url": str(client.make_url("/dashboard"))}, session=session)
    await browser.event("Page.loadEventFired")
    assert await evaluate("!!document.querySelector('form#login input[type=password]')")
    await evaluate(f"document.getElementById('key').value = {ADMIN_KEY!r}; document.getElementById('login').submit()")
    await browser.event("Page.loadEventFired")

    assert await evaluate("location.pathname + location.search") == "/dashboard"  # the key is not in the URL
    assert await evaluate("document.getElementById('admin').textContent") == "ops"
    assert await evaluate("document.getElementById('requests').textContent") == "4"
    assert await evaluate("document.getElementById('images').textContent") == "3"
    assert await evaluate("document.getElementById('server-errors').textContent") == "0"
    assert (await evaluate("document.getElementById('cost').textContent")).startswith("$0.1270")  # 3 x 0.04234
    users = await evaluate("[...document.querySelectorAll('#top-users td:first-child')].map(td => td.textContent)")
    assert users == [XSS_USER]
    sessions = await evaluate("[...document.querySelectorAll('#top-sessions td:first-child')].map(td => td.textContent)")
    assert sessions == [XSS_SESSION]
    recent_text = await evaluate("document.getElementById('recent').textContent")
    assert XSS_MODEL in recent_text and XSS_USER in recent_text
    # Rendered as text: no element came out of the hostile strings, and nothing ran.
    assert await evaluate("document.querySelectorAll('script, img, svg').length") == 0
    assert await evaluate("window.__alerts") == []
    assert browser.queue("Page.javascriptDialogOpening").empty()
    assert await evaluate("document.cookie") == ""  # HttpOnly: page script cannot read the session
