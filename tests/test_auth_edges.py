"""Authorization and analytics-header edge cases: each is accepted or refused as documented,
never a 500. Malformed HTTP is refused by aiohttp's parser before any middleware runs (plain
text 400, docs/security.md); raw sockets show which."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import GATEWAY_KEY
from tests.raw_http import raw

ERROR_KEYS = {"message", "type", "param", "code"}


async def models(client: Any, headers: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/v1/models", headers=headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize("value", [
    f"bearer {GATEWAY_KEY}", f"BEARER {GATEWAY_KEY}", f"Bearer   {GATEWAY_KEY}", f"  Bearer {GATEWAY_KEY}  ",
], ids=["lowercase scheme", "uppercase scheme", "extra spaces", "padded"])
async def test_accepted_spellings(client: Any, value: str) -> None:
    status, _ = await models(client, {"Authorization": value})
    assert status == 200


@pytest.mark.parametrize("value, code", [
    ("Bearer", "invalid_api_key"),
    ("Bearer ", "invalid_api_key"),
    ("", "invalid_api_key"),
    (f"Basic {GATEWAY_KEY}", "invalid_api_key"),
    (GATEWAY_KEY, "invalid_api_key"),
    ("Bearer " + "k" * 5000, "invalid_api_key"),
    (f"Bearer {GATEWAY_KEY} extra", "invalid_api_key"),
    (f"Bearer {GATEWAY_KEY[:5]}\t{GATEWAY_KEY[5:]}", "invalid_api_key"),
], ids=["no token", "empty token", "empty header", "basic scheme", "no scheme", "very long token",
        "two tokens", "tab inside"])
async def test_refused_spellings(client: Any, value: str, code: str) -> None:
    status, body = await models(client, {"Authorization": value})
    assert status == 401
    assert set(body["error"]) == ERROR_KEYS and body["error"]["code"] == code
    assert GATEWAY_KEY not in body["error"]["message"]


async def test_duplicate_authorization_headers_are_refused(client: Any) -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict([("Authorization", f"Bearer {GATEWAY_KEY}"), ("Authorization", f"Bearer {GATEWAY_KEY}")])
    status, body = await models(client, headers)
    assert status == 401 and set(body["error"]) == ERROR_KEYS


@pytest.mark.parametrize("header, value", [
    ("x-opengateway-user-id", "u" * 257), ("x-opengateway-session-id", "s" * 1000),
    ("x-opengateway-user-id", "a\tb"),
], ids=["user id too long", "session id too long", "tab"])
async def test_bad_analytics_headers_are_400(client: Any, header: str, value: str) -> None:
    status, body = await models(client, {"Authorization": f"Bearer {GATEWAY_KEY}", header: value})
    assert status == 400
    assert set(body["error"]) == ERROR_KEYS and body["error"]["param"] == header


async def test_non_ascii_token_is_401_json(client: Any) -> None:
    status, body = await raw(client, "Authorization: Bearer clé-ключ\r\n".encode())
    assert status == 401 and b'"invalid_api_key"' in body
    status, body = await raw(client, b"Authorization: Bearer cl\xe9\r\n")  # not even UTF-8
    assert status == 401 and b'"invalid_api_key"' in body


@pytest.mark.parametrize("lines", [
    b"x-opengateway-user-id: a\rb\r\n",            # bare CR
    b"x-opengateway-user-id: a\r\n b\r\n",         # obs-fold (a CRLF inside the value)
    b"x-opengateway-user-id: a\x00b\r\n",           # NUL
    b"Authorization : Bearer " + GATEWAY_KEY.encode() + b"\r\n",  # space before the colon
    b"Authorization: Bearer " + b"k" * 9000 + b"\r\n",             # past server.max_header_bytes
], ids=["bare CR", "CRLF fold", "NUL", "space before colon", "header too long"])
async def test_malformed_http_is_refused_by_the_parser(client: Any, lines: bytes) -> None:
    """aiohttp answers these with a plain-text 400 before any middleware (no OpenAI shape
    is possible there); what matters is 400, not 500, and a closed connection."""
    status, _ = await raw(client, lines)
    assert status == 400
