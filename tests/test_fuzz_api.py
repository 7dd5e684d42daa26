"""schemathesis against the gateway's own ``/openapi.json``, on a live server on loopback.

Both valid (positive) and schema-violating (negative) requests are generated for every
operation, a bounded number each. Whatever is sent: no 5xx, every answer conforms to the
documented status codes, content types and schemas, every error has exactly OpenAI's four
keys, and schema-violating requests are refused.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from gateway.app import create_app
from gateway.config_load import parse_config
from gateway.openapi import build_spec
from tests.conftest import AUTH, base_config_yaml
from tests.fake_upstream import FakeUpstream

MAX_EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [(method.upper(), path) for path, item in build_spec()["paths"].items() for method in item]
#: Only an operation with inputs has schema-violating variants (the GETs take no parameters).
RUNS = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    ("POST", "/v1/images/generations", GenerationMode.NEGATIVE)]


class LiveGateway:
    """The gateway and a fake upstream on their own event loop in a thread, on free loopback ports:
    schemathesis's client is synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.url = ""

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self) -> None:
        upstream = await self._serve(FakeUpstream().app())
        config = parse_config(base_config_yaml(upstream + "/v1"), env={})
        self.url = await self._serve(create_app(config))

    async def _stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()

    def __enter__(self) -> "LiveGateway":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveGateway]:
    with LiveGateway() as gateway:
        yield gateway


@pytest.fixture(scope="module")
def api_schema(live: LiveGateway) -> Any:
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


@pytest.fixture(scope="module")
def http(live: LiveGateway) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


def assert_openai_shape(response: Any) -> None:
    """Beyond the schema (which allows extra keys): an error has exactly OpenAI's four keys."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code >= 400 and content_type.startswith("application/json"):
        body = response.json()
        if "error" in body:
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
            assert isinstance(body["error"]["message"], str)
    assert response.status_code < 500, response.text


@pytest.mark.parametrize("method, path, mode", RUNS, ids=[f"{m} {p} {g.value}" for m, p, g in RUNS])
def test_fuzz_operation(api_schema: Any, http: requests.Session, live: LiveGateway, method: str, path: str,
                        mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=live.url, session=http, timeout=30)
        case.validate_response(response, checks=checks)
        assert_openai_shape(response)

    run()


def test_documented_example_succeeds_in_the_documented_shape(api_schema: Any, http: requests.Session,
                                                             live: LiveGateway) -> None:
    operation = api_schema["/v1/images/generations"]["POST"]
    example = build_spec()["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"][
        "application/json"]["example"]
    case = operation.Case(body=example, media_type="application/json")
    response = case.call(base_url=live.url, session=http, timeout=30)
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=CHECKS)
    assert response.json()["extra"]["routing"]["attempts"][0]["status"] == "succeeded"


def test_missing_key_is_refused_in_openai_shape(api_schema: Any, live: LiveGateway) -> None:
    operation = api_schema["/v1/images/generations"]["POST"]
    case = operation.Case(body={"model": "openai/gpt-image-1", "prompt": "x"}, media_type="application/json")
    response = case.call(base_url=live.url, timeout=30)
    assert response.status_code == 401
    case.validate_response(response, checks=CHECKS)
    assert_openai_shape(response)
