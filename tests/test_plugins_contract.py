"""The public plugin API: what ``gateway.provider`` exports, and the built-ins honouring it."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import msgspec
import pytest

import gateway.provider as contract
from gateway.http_client import HTTPClient
from gateway.upstream_http import UpstreamHTTP
from gateway.plugins import discover

# Names plugins import today; removing or renaming one breaks third-party plugins.
STABLE = {"API_VERSION", "Answer", "Call", "Capabilities", "ImageRequest", "ImageResult", "Model", "Provider",
          "ProviderError", "SizeRule", "UpstreamHTTP", "check_url", "error_from_openai", "openai_image_models",
          "pass_through", "retry_after_s"}


def test_all_is_accurate() -> None:
    assert STABLE <= set(contract.__all__)
    for name in contract.__all__:
        assert hasattr(contract, name), name
    defined_here = {name for name, obj in vars(contract).items()
                    if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
                    and obj.__module__ == contract.__name__}
    assert defined_here <= set(contract.__all__), "a public class or function of the contract is not exported"


def test_builtin_plugins_use_only_the_public_contract() -> None:
    """The built-ins are written as a third party must write a plugin: everything of the gateway
    they use comes from ``gateway.provider``."""
    from pathlib import Path
    import re
    plugins = Path(__file__).parent.parent / "plugins"
    for source in sorted(plugins.glob("*.py")):
        imported = set(re.findall(r"^\s*(?:from|import) (gateway[.\w]*)", source.read_text(), flags=re.M))
        assert imported <= {"gateway.provider"}, f"{source.name} imports {sorted(imported)}"


@pytest.mark.parametrize(("status", "code", "router_status"), [
    (401, "invalid_api_key", 401), (403, "permission_denied", 403), (404, "model_not_found", 404),
    (429, "rate_limit_exceeded", 429), (503, None, 503), (422, "invalid_value", 400), (409, "invalid_value", 400)])
def test_status_error_maps_the_usual_statuses(status: int, code: str | None, router_status: int) -> None:
    error = contract.status_error(status, "said", {"retry-after": "7"})
    assert (error.status, error.code) == (router_status, code)
    assert error.retry_after_s == (7.0 if status in (429, 503) else None)
    assert contract.status_error(429, "said", {}, retry_after=3.5).retry_after_s == 3.5
    assert contract.scrub("key sk-abc leaked", ("sk-abc", "")) == "key [redacted] leaked"
    assert contract.answered("Acme", 502, b"<html>bad gateway</html>") == "Acme answered HTTP 502: <html>bad gateway</html>"


@pytest.mark.parametrize("name", ["openai", "azure_openai", "local", "google", "bfl", "fal", "stability"])
def test_builtin_plugins_come_through_the_entry_points(name: str) -> None:
    info = discover()[name]
    assert info.ok and info.distribution == "opengateway" and info.api_version == contract.API_VERSION
    assert info.cls is not None and issubclass(info.cls.Settings, msgspec.Struct)


def test_a_provider_must_implement_generate_and_models() -> None:
    class Incomplete(contract.Provider):
        class Settings(msgspec.Struct):
            pass

        def models(self) -> Sequence[contract.Model]:
            return []

    with pytest.raises(TypeError, match="generate"):
        Incomplete(Incomplete.Settings(), UpstreamHTTP(HTTPClient()))  # type: ignore[abstract]


async def test_a_minimal_provider_in_a_few_lines() -> None:
    class Minimal(contract.Provider):
        api_version = contract.API_VERSION

        class Settings(msgspec.Struct):
            greeting: str = "hi"

        def models(self) -> Sequence[contract.Model]:
            return [contract.Model("acme/m", contract.Capabilities(sizes=("auto",), max_n=1))]

        async def generate(self, request: contract.ImageRequest, call: contract.Call) -> contract.ImageResult:
            if request.image_count > 1:
                raise contract.ProviderError("one at a time", status=400, code="invalid_value", param="n")
            call.note("greeted")
            return contract.ImageResult(body=request.openai_body(self.settings.greeting, call.extra_fields))

    provider = Minimal(Minimal.Settings(), UpstreamHTTP(HTTPClient()))
    call = contract.Call("acme/m", 1.0, {"x": 1})
    result = await provider.generate(contract.ImageRequest(model="acme/m", prompt="p"), call)
    assert msgspec.json.decode(result.body) == {"model": "hi", "prompt": "p", "x": 1}
    assert call.notes == ["greeted"]
    with pytest.raises(contract.ProviderError) as caught:
        await provider.generate(contract.ImageRequest(model="acme/m", prompt="p", n=2), contract.Call("acme/m", 1.0))
    assert (caught.value.status, caught.value.param, caught.value.retryable) == (400, "n", None)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "9"}, 9.0),
    ({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
    ({}, None),
])
def test_retry_after_s(headers: dict[str, str], expected: Any) -> None:
    assert contract.retry_after_s(headers) == expected
