"""The contract suite: what the gateway relies on from every provider plugin, as tests a plugin
runs against itself. Subclass ``ProviderContract`` in a test module, in a class whose name starts
with ``Test``, and fill in its hooks; pytest collects the inherited ``test_contract_*`` tests:

    from gateway.testing import FakeUpstream, ProviderContract, json_reply

    class TestAcmeContract(ProviderContract):
        plugin = "acme"                          # your entry-point name (install the plugin first)

        def settings(self, upstream: FakeUpstream) -> dict:
            return {"api_key": "acme-test-key-123", "base_url": upstream.url("/v1")}

        def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
            if kind == "success":
                upstream.script("POST", "/v1/images", json_reply(...n images in Acme's shape...))
                return True
            if kind == "auth":
                upstream.script("POST", "/v1/images", json_reply({"detail": "bad key"}, status=401))
                return True
            return False                          # a kind this upstream cannot show: skipped

The kinds, and what the gateway's router needs the plugin to make of each (gateway/router.py):
``success`` (``n`` images: a body the gateway accepts, with ``n`` decodable images), ``auth`` (a
rejected credential: status 401 or 403, so the router moves on and hides the upstream's words),
``rate_limit`` (429, not final), ``server_error`` (5xx or no status, not final), ``refusal``
(the provider's safety refusal: 400 ``moderation_blocked``, type ``image_generation_user_error``,
final), ``malformed`` (a 200 the gateway cannot use: 5xx, so the next target is tried) and
``hang`` (no answer: ``generate`` gives up with a timeout ProviderError near ``call.timeout_s``).
Every error must keep the instance's credentials out of its message. The tests are plain
functions that run their own event loop, so they need pytest and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from typing import Any, Awaitable, Callable, ClassVar

import msgspec
import pytest

from gateway.api import ImageRequest
from gateway.config_load import is_model_id
from gateway.http_client import HTTPClient
from gateway.plugins import discover
from gateway.provider import API_VERSION, Call, ImageResult, Model, Provider, ProviderError, UpstreamHTTP
from gateway.redact import secrets_of
from gateway.testing.upstream import FakeUpstream
from gateway.upstream import parse_upstream

KINDS = ("success", "auth", "rate_limit", "server_error", "refusal", "malformed", "hang")
_SIZE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
_REQUEST_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(ImageRequest))


class ProviderContract:
    """Inherit it in a ``Test...`` class; see the module docstring for the hooks."""

    #: The entry-point name the plugin's distribution registers in ``opengateway.providers``.
    plugin: ClassVar[str]
    prompt: ClassVar[str] = "A red square on a white background"
    #: The attempt time given to ``generate`` in the ``hang`` test, and the slack allowed past it.
    timeout_s: ClassVar[float] = 0.5
    timeout_slack_s: ClassVar[float] = 1.0

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        """One instance's ``settings:`` block, pointed at ``upstream``."""
        raise NotImplementedError

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        """Queue on ``upstream`` what the provider answers for ``kind`` (see ``KINDS``) to a
        request of ``n`` images of ``model``; False when the plugin has no upstream answer of that
        kind (the test is skipped). The default scripts nothing: a plugin without an upstream."""
        return kind == "success"

    def models_under_test(self, provider: Provider) -> list[Model]:
        """The models to exercise (default: all it declares)."""
        return list(provider.models())

    # -- the tests -----------------------------------------------------------------------------

    def test_contract_entry_point(self) -> None:
        info = discover().get(self.plugin)
        assert info is not None, (f"no provider '{self.plugin}' in the opengateway.providers entry points; install "
                                  "the plugin's distribution (pip install -e .) first")
        assert info.ok, f"the gateway skips the plugin: {info.error}"
        cls = info.cls
        assert cls is not None and "api_version" in vars(cls), "declare api_version = <int> in the class itself"
        assert cls.api_version == API_VERSION
        assert isinstance(cls.bounds_its_time, bool)

    def test_contract_declared_capabilities(self) -> None:
        async def check(provider: Provider, upstream: FakeUpstream) -> None:
            models = provider.models()
            assert models, "models() declares nothing"
            ids = [m.id for m in models]
            assert len(set(ids)) == len(ids), f"duplicate model ids: {ids}"
            for model in models:
                _check_model(model)
        self._run(check)

    def test_contract_success_is_a_body_the_gateway_accepts(self) -> None:
        async def check(provider: Provider, upstream: FakeUpstream) -> None:
            for model in self.models_under_test(provider):
                for n in sorted({1, min(2, model.capabilities.max_n)}):
                    assert self.script(upstream, model.id, "success", n), "script() must script 'success'"
                    call = Call(model.id, 30.0)
                    result = await provider.generate(ImageRequest(model=model.id, prompt=self.prompt, n=n), call)
                    _check_result(result, n)
                    assert call.notes is None or all(isinstance(t, str) and t for t in call.notes)
        self._run(check)

    @pytest.mark.parametrize("kind", ["auth", "rate_limit", "server_error", "refusal", "malformed"])
    def test_contract_failures_map_to_what_the_router_needs(self, kind: str) -> None:
        async def check(provider: Provider, upstream: FakeUpstream) -> None:
            model = self.models_under_test(provider)[0]
            if not self.script(upstream, model.id, kind, 1):
                pytest.skip(f"the plugin scripts no '{kind}' answer")
            secrets = secrets_of(self.settings(upstream))
            try:
                result = await provider.generate(ImageRequest(model=model.id, prompt=self.prompt), Call(model.id, 30.0))
                parse_upstream(result.body)  # a plugin may pass a broken body on: the gateway checks it
            except ProviderError as exc:
                _check_error(exc, kind, secrets)
            else:
                raise AssertionError(f"a '{kind}' answer was returned as a success")
            # What the client sees: no piece of a credential, even one the upstream quoted masked.
            assert self.script(upstream, model.id, kind, 1)
            status, body = await self._through_gateway(upstream, model.id)
            assert status >= 400 and set(body["error"]) == {"message", "type", "param", "code"}, body
            text = msgspec.json.encode(body).decode()
            for secret in secrets:
                assert not any(p in text for p in _pieces(secret)), f"the client saw a credential: {text}"
        self._run(check)

    def test_contract_timeout_is_honoured(self) -> None:
        async def check(provider: Provider, upstream: FakeUpstream) -> None:
            model = self.models_under_test(provider)[0]
            if not self.script(upstream, model.id, "hang", 1):
                pytest.skip("the plugin scripts no 'hang' answer")
            call = Call(model.id, self.timeout_s)
            started = time.monotonic()
            with pytest.raises(ProviderError) as caught:
                # As the router calls it: its own timer only for plugins that do not bound their time.
                try:
                    if provider.bounds_its_time:
                        async with asyncio.timeout(self.timeout_s + 10 * self.timeout_slack_s):
                            await provider.generate(ImageRequest(model=model.id, prompt=self.prompt), call)
                    else:
                        async with asyncio.timeout(self.timeout_s):
                            await provider.generate(ImageRequest(model=model.id, prompt=self.prompt), call)
                except TimeoutError:
                    if provider.bounds_its_time:
                        raise AssertionError("bounds_its_time is True but generate() outlived call.timeout_s")
                    raise ProviderError("timed out", timeout=True) from None
            assert caught.value.timeout, f"a timeout must be marked timeout=True: {caught.value!r}"
            assert time.monotonic() - started < self.timeout_s + self.timeout_slack_s
        self._run(check)

    def test_contract_served_through_the_gateway(self) -> None:
        async def check(provider: Provider, upstream: FakeUpstream) -> None:
            model = self.models_under_test(provider)[0]
            assert self.script(upstream, model.id, "success", 1)
            status, body = await self._through_gateway(upstream, model.id)
            assert status == 200, body
            assert len(body["data"]) == 1
            [attempt] = body["extra"]["routing"]["attempts"]
            assert (attempt["provider"], attempt["status"], attempt["model"]) == (self.plugin, "succeeded", model.id)
        self._run(check)

    # -- running -------------------------------------------------------------------------------

    async def _through_gateway(self, upstream: FakeUpstream, model: str) -> tuple[int, dict[str, Any]]:
        """One request for ``model`` through the real app, configured with one instance of the
        plugin (no retries), as a client sees it."""
        from aiohttp import ClientSession
        from aiohttp.test_utils import TestServer

        from gateway.app import create_app
        from gateway.config import key_hash
        from gateway.config_load import parse_config

        key = "og-contract-suite-key-5e1f0a"
        config = parse_config(msgspec.json.encode({
            "keys": [{"name": "contract", "hash": key_hash(key)}],
            "providers": [{"id": "under-test", "plugin": self.plugin, "settings": self.settings(upstream)}],
            "models": {model: {"targets": ["under-test"]}},
            "router": {"max_attempts_per_target": 1}}).decode(), env={})
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                async with session.post(server.make_url("/v1/images/generations"),
                                        headers={"Authorization": f"Bearer {key}"},
                                        json={"model": model, "prompt": self.prompt}) as resp:
                    return resp.status, await resp.json()
        finally:
            await server.close()

    def _run(self, check: Callable[[Provider, FakeUpstream], Awaitable[None]]) -> None:
        asyncio.run(self._harness(check))

    async def _harness(self, check: Callable[[Provider, FakeUpstream], Awaitable[None]]) -> None:
        info = discover().get(self.plugin)
        if info is None or info.cls is None:
            pytest.fail(f"provider '{self.plugin}' is not installed or does not load (see test_contract_entry_point)")
        client = HTTPClient()
        async with FakeUpstream() as upstream:
            try:
                settings = msgspec.convert(self.settings(upstream), info.cls.Settings)
                provider = info.cls(settings, UpstreamHTTP(client))
                try:
                    await check(provider, upstream)
                finally:
                    await provider.close()
            finally:
                await client.close()


def _check_model(model: Model) -> None:
    caps = model.capabilities
    assert is_model_id(model.id), f"'{model.id}' is not an owner/model id"
    assert caps.sizes or caps.flexible_sizes, f"{model.id}: no size is accepted"
    for size in caps.sizes:
        assert size == "auto" or _SIZE.match(size), f"{model.id}: size '{size}' is neither auto nor WxH"
    rule = caps.flexible_sizes
    if rule is not None:
        assert rule.multiple_of >= 1 and rule.max_edge >= rule.multiple_of and rule.max_aspect >= 1
        assert 0 <= rule.min_pixels <= rule.max_pixels
    assert caps.qualities and set(caps.qualities) <= {"auto", "low", "medium", "high"}, model.id
    assert caps.output_formats and set(caps.output_formats) <= {"png", "jpeg", "webp"}, model.id
    assert set(caps.compression_formats) <= set(caps.output_formats) & {"jpeg", "webp"}, model.id
    assert set(caps.transparent_formats) <= set(caps.output_formats) & {"png", "webp"}, model.id
    assert caps.moderation and set(caps.moderation) <= {"auto", "low"}, model.id
    assert 1 <= caps.max_n <= 10, f"{model.id}: max_n {caps.max_n} is outside OpenAI's 1..10"
    shadowed = set(caps.extra_fields) & _REQUEST_FIELDS
    assert not shadowed, f"{model.id}: extra_fields {shadowed} are request fields already"
    if model.price is not None:
        rates = [v for v in msgspec.structs.astuple(model.price) if v is not None]
        assert rates and all(v >= 0 for v in rates), f"{model.id}: a price needs at least one rate, none negative"


def _check_result(result: ImageResult, n: int) -> None:
    from PIL import Image

    assert isinstance(result, ImageResult) and isinstance(result.body, bytes)
    parsed = parse_upstream(result.body)  # raises the gateway's own 502 for a body it would refuse
    assert len(parsed.data) == n, f"asked for {n} images, got {len(parsed.data)}"
    for raw in parsed.data:
        item = msgspec.json.decode(raw)
        with Image.open(io.BytesIO(base64.b64decode(item["b64_json"], validate=True))) as image:
            image.verify()
    usage = parsed.usage
    if usage is not None:
        assert min(usage.input_tokens, usage.output_tokens, usage.total_tokens) >= 0
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.headers.items())
    assert result.output_megapixels is None or result.output_megapixels > 0


def _pieces(secret: str) -> set[str]:
    """A credential and, for a long one, its first and last eight characters (upstreams quote
    keys masked: ``sk-abc*****wxyz``)."""
    return {secret} | ({secret[:8], secret[-8:]} if len(secret) >= 16 else set())


def _check_error(exc: ProviderError, kind: str, secrets: list[str]) -> None:
    # Whole credentials never; pieces an upstream quotes are scrubbed by the gateway (checked above).
    text = f"{exc.message} {exc!r} {exc.param or ''} {exc.code or ''}"
    assert not any(secret in text for secret in secrets), f"the error for '{kind}' shows a credential: {exc.message}"
    assert exc.message and isinstance(exc.type, str) and exc.type
    assert exc.status is None or 100 <= exc.status <= 599
    assert exc.code is None or _CODE.match(exc.code), f"code '{exc.code}' is not OpenAI's snake_case"
    assert exc.retry_after_s is None or exc.retry_after_s >= 0
    if exc.code == "moderation_blocked":
        assert kind == "refusal", f"a '{kind}' answer was reported as a safety refusal"
    if kind == "auth":
        assert exc.status in (401, 403), f"a rejected credential must be 401 or 403, not {exc.status}"
    elif kind == "rate_limit":
        assert exc.status == 429 and exc.retryable is not False, repr(exc)
    elif kind == "server_error":
        assert (exc.status is None or exc.status >= 500) and exc.retryable is not False, repr(exc)
    elif kind == "refusal":
        assert (exc.status, exc.type, exc.code) == (400, "image_generation_user_error", "moderation_blocked")
        assert exc.retryable is not True
    elif kind == "malformed":
        assert exc.status is not None and exc.status >= 500 and exc.retryable is not False, repr(exc)
