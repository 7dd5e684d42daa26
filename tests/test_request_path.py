"""A request's path from socket to upstream enters validation code once.

The body is decoded into the one request type and the plan is made from it in one call
(gateway/middleware/validation.py -> gateway/plan.py make_plan); neither the router nor a plugin
checks the request again. A profiler hook records every call into the validation modules that
comes from outside them while one request is served.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from tests.conftest import AUTH

VALIDATION = ("gateway/validation.py", "gateway/plan.py")


def _module(frame: FrameType | None) -> str:
    return frame.f_code.co_filename.replace("\\", "/") if frame is not None else ""


async def test_a_request_enters_validation_once(client: Any, upstream: Any) -> None:
    body = {"model": "openai/gpt-image-1", "prompt": "A small red cube", "size": "1024x1024", "n": 2,
            "quality": "low", "extra": {"fallbacks": ["openai/gpt-image-1-mini"]}}
    entries: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = _module(frame)
        if callee.endswith(VALIDATION) and not _module(frame.f_back).endswith(VALIDATION):
            entries.append(f"{frame.f_code.co_name} from {'/'.join(_module(frame.f_back).rsplit('/', 2)[-2:])}")

    assert (await client.post("/v1/images/generations", json=body, headers=AUTH)).status == 200  # warm
    sys.setprofile(profile)
    try:
        resp = await client.post("/v1/images/generations", json=body, headers=AUTH)
    finally:
        sys.setprofile(None)
    assert resp.status == 200
    # decode_request, then make_plan: both from the validation link, nothing from anywhere else.
    assert entries == ["decode_request from middleware/validation.py", "make_plan from middleware/validation.py"], entries
    assert upstream.received[-1].body["n"] == 2
