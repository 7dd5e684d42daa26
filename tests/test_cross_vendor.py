"""Cross-vendor fallback, end to end (issue 17, point 8): one gateway whose models fall back
``openai -> google -> bfl -> stability -> fal``, five fake upstreams on their own loopback ports,
each speaking its provider's documented API, and the official openai SDK (or plain HTTP) as the
client. Every test of this module also proves that no provider credential reaches a response or a
log line (the ``run`` fixture; tests/test_secrets.py's approach, extended to pieces of the keys).

Where each provider's answers come from is cited in its fake: tests/fake_google.py,
tests/fake_bfl.py, tests/fake_stability.py, tests/fake_fal.py. OpenAI's own answers (tests/fake_upstream.py):
401 ``invalid_api_key`` "Incorrect API key provided", 429 ``rate_limit_exceeded`` with
``retry-after``, 503 "The engine is currently overloaded", and the safety block as 400
``image_generation_user_error`` / ``moderation_blocked`` — https://platform.openai.com/docs/guides/error-codes
and the project's contract notes (/work/shared/docs/openai-images-contract.md, "Error body").

How the walk goes (docs/routing.md): the model asked, then each of *its* fallback
models (the request's ``extra.fallbacks``, else the model's configured ``fallbacks``; a fallback's
own fallbacks are not followed), so each model below lists every vendor after it. The first pass
tries each target once; a failure moves on at once; a retryable one (429, 5xx, a malformed answer)
is tried again only when no target served, no sooner than its ``retry-after``.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import openai
import pytest
from aiohttp import web
from PIL import Image

from gateway.app import create_app
from gateway.config import key_hash
from gateway.config_load import parse_config
from gateway.router import CREDENTIALS_REJECTED
from gateway.testing import FakeUpstream, bytes_reply, json_reply
from tests import fake_bfl as b
from tests import fake_fal as f
from tests import fake_google as g
from tests import fake_stability as s
from tests import fake_upstream as fu
from tests.conftest import AUTH, GATEWAY_KEY, eventually

PROMPT = "A lighthouse on a cliff at dusk"
# Credentials of the run: random-looking, so that any 8 characters of one are a fair sign of a
# leak (tests/test_secrets.py looks for whole keys; these are looked for in pieces too).
OPENAI_KEY = "sk-proj-Qv7LmR2tK9dW4nZ8cH3p"
GOOGLE_KEY = "AIzaSyQ3vN8kLw2Rt7Hc9Zm4Xp6Jd1Fb5Gs0TyE"
BFL_KEY = "bfl_Wm5Qx9Lr3Nv7Kz2Hd8Tc4PbY6"
STABILITY_KEY = "sk-Vq4Nz8Lx2Kw7Rm3Hd9Tc6PbJ5"
FAL_KEY = "7c1e9a4b-3d8f-4e2a-b6c5-0f9d8e7a6b5c:Rz4Kq8Wm2Lx7Nv3Hd9Tc5Pb1Jg6Fs0Ya"
KEYS = (OPENAI_KEY, GOOGLE_KEY, BFL_KEY, STABILITY_KEY, FAL_KEY)
PIECE_CHARS = 8


@dataclass(frozen=True)
class Vendor:
    name: str    # the plugin
    model: str   # the gateway model id
    target: str  # the provider instance
    region: str

    @property
    def target_id(self) -> str:
        return f"{self.target}:{self.model}"


OPENAI = Vendor("openai", "openai/gpt-image-1", "openai-us", "us")
GOOGLE = Vendor("google", "google/gemini-3-pro-image-preview", "gemini", "global")
BFL = Vendor("bfl", "bfl/flux-pro-1.1", "bfl-eu", "eu")
STABILITY = Vendor("stability", "stability/stable-image-ultra", "stability", "global")
FAL = Vendor("fal", "fal/flux-1-dev", "fal-us", "us")
CHAIN = (OPENAI, GOOGLE, BFL, STABILITY, FAL)
BY_NAME = {v.name: v for v in CHAIN}
NAMES = [v.name for v in CHAIN]
#: The vendor a request names as its fallback in the tests of one vendor's failure (fal's is openai).
NEXT = {v.name: CHAIN[(i + 1) % len(CHAIN)] for i, v in enumerate(CHAIN)}

# What each serving vendor bills for one 1024x1024 image, and whether it reports tokens:
# - openai/gpt-image-1, bundled rates (gateway/data/models.yaml): 20 text tokens in at $5/1M and
#   1056 image tokens out at $40/1M (the fake's usage) = 0.0001 + 0.04224;
# - google/gemini-3-pro-image-preview, the plugin's declared (unverified) rates on the fake's
#   usageMetadata: 10 text in at $2/1M, 10 text out at $12/1M, 1120 image out at $120/1M;
# - bfl/flux-pro-1.1: $0.04 an image (BFL's credits, plugins/data/bfl.yaml);
# - stability/stable-image-ultra: 8 credits an image at the operator's usd_per_credit (0.01 here);
# - fal/flux-1-dev: $0.025 a megapixel, 1.048576 MP (https://fal.ai/models/fal-ai/flux-1/dev/llms.txt).
BILLED: dict[str, tuple[float, str, dict[str, float], bool]] = {
    "openai": (0.04234, "bundled", {"text_input": 0.0001, "image_output": 0.04224}, True),
    "google": (0.13454, "plugin", {"text_input": 0.00002, "text_output": 0.00012, "image_output": 0.1344}, True),
    "bfl": (0.04, "plugin", {"images": 0.04}, False),
    "stability": (0.08, "plugin", {"images": 0.08}, False),
    "fal": (0.0262144, "plugin", {"megapixels": 0.0262144}, False),
}


def masked(key: str) -> str:
    """A key as OpenAI quotes it in a 401 ("sk-abc*****wxyz")."""
    return f"{key[:6]}*****{key[-4:]}"


def pieces(secret: str) -> set[str]:
    return {secret[i:i + PIECE_CHARS] for i in range(len(secret) - PIECE_CHARS + 1)}


# -- the run: everything a client or an operator sees, scanned for credentials -----------------

@dataclass
class Run:
    """Every response body and header of a test, and its log output (read through ``output``)."""

    capfd: pytest.CaptureFixture[str]
    seen: list[tuple[str, str]] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    def saw(self, where: str, text: str) -> None:
        self.seen.append((where, text))

    def output(self) -> str:
        """stdout and stderr (the access log) so far."""
        captured = self.capfd.readouterr()
        self.out += [captured.out, captured.err]
        return "".join(self.out)


def assert_no_credential(where: str, text: str) -> None:
    for key in KEYS:
        assert key not in text, f"a provider key leaked into {where}"
        leaked = [piece for piece in pieces(key) if piece in text]
        assert not leaked, f"a piece of a provider key ({leaked[0]!r}) leaked into {where}: {text[:3000]}"
    for marker in (GATEWAY_KEY, GATEWAY_KEY.removeprefix("og-")):
        assert marker not in text, f"the gateway key leaked into {where}"


@pytest.fixture
def run(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Iterator[Run]:
    caplog.set_level(logging.DEBUG)
    this = Run(capfd)
    yield this
    for where, text in this.seen:
        assert_no_credential(where, text)
    assert_no_credential("stdout/stderr (the access log)", this.output())
    assert_no_credential("the log records", "\n".join(
        r.getMessage() + str(r.exc_text or "") + str(r.args) for r in caplog.get_records("call")))


# -- the five vendors on loopback --------------------------------------------------------------

AnyBehaviour = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
#: ``gateway(router="", fal="")``: the app of config_yaml on the vendors, as a test client.
Gateway = Callable[..., Awaitable[Any]]


@dataclass
class Vendors:
    """The five fakes. OpenAI's is scripted per model (an empty queue answers an image); the
    others per path, each with its success as the answer once its queue is empty."""

    openai: fu.FakeUpstream
    openai_url: str
    google: FakeUpstream
    bfl_up: FakeUpstream
    stability: FakeUpstream
    fal_up: FakeUpstream
    bfl: b.FakeBFL
    fal: f.FakeFal
    #: (vendor, time.monotonic()) of each generation request that went through ``timed``.
    times: list[tuple[str, float]] = field(default_factory=list)

    PATHS = {"google": g.gemini_path("gemini-3-pro-image-preview"), "bfl": "/v1/flux-pro-1.1",
             "stability": s.path("ultra"), "fal": "/fal-ai/flux-1/dev"}

    def fake(self, name: str) -> FakeUpstream:
        return {"google": self.google, "bfl": self.bfl_up, "stability": self.stability, "fal": self.fal_up}[name]

    def success(self, name: str) -> AnyBehaviour:
        answers: dict[str, Callable[[], AnyBehaviour]] = {
            "openai": fu.ok, "google": g.gemini_ok, "bfl": self.bfl.submit,
            "stability": lambda: s.ok(key=STABILITY_KEY), "fal": self.fal.run}
        return answers[name]()

    def failure(self, name: str, kind: str, wait_s: int = 1) -> AnyBehaviour:
        """``name``'s answer of ``kind``, in its own dialect (the fakes' modules cite each shape);
        a rate limit asks to wait ``wait_s``, as each vendor says it."""
        answers: dict[str, dict[str, Callable[[], AnyBehaviour]]] = {
            "openai": {
                "auth": lambda: fu.error(401, "invalid_api_key", f"Incorrect API key provided: {masked(OPENAI_KEY)}. "
                                         "You can find your API key at https://platform.openai.com/account/api-keys."),
                "rate_limit": lambda: fu.error(429, "rate_limit_exceeded", "Rate limit reached for requests.",
                                               type="requests", headers={"retry-after": str(wait_s)}),
                "refusal": lambda: fu.error(400, "moderation_blocked", "Your request was rejected by the safety "
                                            "system.", type="image_generation_user_error"),
                "malformed": lambda: fu.raw(200, b'{"created": 1, "data": "many"}'),
                "overloaded": lambda: fu.error(503, None, "The engine is currently overloaded, please try again "
                                               "later."),
            },
            "google": {
                "auth": g.api_key_invalid,
                "rate_limit": lambda: g.rate_limited(f"{wait_s}s"),  # RetryInfo.retryDelay
                "refusal": lambda: json_reply(g.REFUSALS["image prohibited"]),
                "malformed": lambda: bytes_reply(b'{"candidates": "many"}', content_type="application/json"),
                # https://ai.google.dev/gemini-api/docs/troubleshooting : 503 UNAVAILABLE, overloaded.
                "overloaded": lambda: g.google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again "
                                                     "later."),
            },
            "bfl": {
                "auth": lambda: b.error(403, {"detail": "Not authenticated"}),
                "rate_limit": lambda: b.rate_limited(str(wait_s)),
                "refusal": lambda: self.bfl.submit("Request Moderated"),
                "malformed": lambda: json_reply({"id": "task-without-polling-url"}),
                "overloaded": lambda: self.bfl.submit("Error"),
            },
            "stability": {
                "auth": s.unauthorized,
                "rate_limit": lambda: s.rate_limited(),  # no retry-after: Stability documents none
                "refusal": s.moderated,
                "malformed": lambda: bytes_reply(b'{"finish_reason": "SUCCESS"}', content_type="application/json"),
                "overloaded": s.server_error,
            },
            "fal": {
                "auth": f.unauthorized,
                "rate_limit": lambda: f.error(429, {"detail": "Too many requests"},
                                              headers={"Retry-After": str(wait_s)}),
                "refusal": lambda: self.fal.run(nsfw=[True]),
                "malformed": lambda: json_reply({"images": "many"}),
                "overloaded": lambda: f.error(503, {"detail": "Runner disconnected"}),
            },
        }
        return answers[name][kind]()

    def script(self, name: str, *behaviours: AnyBehaviour) -> None:
        """Queue answers for ``name``'s generation requests, one each, before its success."""
        if name == "openai":
            self.openai.script("gpt-image-1", *behaviours)
        else:
            self.fake(name).script("POST", self.PATHS[name], *behaviours)

    def always(self, name: str, behaviour: AnyBehaviour, times: int = 8) -> None:
        if name == "openai":
            self.openai.script("gpt-image-1", *(behaviour for _ in range(times)))
        else:
            self.fake(name).always("POST", self.PATHS[name], behaviour)

    def calls(self, name: str) -> list[Any]:
        """The generation requests ``name`` received."""
        if name == "openai":
            return list(self.openai.received)
        return self.fake(name).sent_to(self.PATHS[name])

    def timed(self, name: str, behaviour: AnyBehaviour) -> AnyBehaviour:
        async def reply(request: web.Request, received: Any) -> web.StreamResponse:
            self.times.append((name, time.monotonic()))
            return await behaviour(request, received)
        return reply


@pytest.fixture
async def vendors(aiohttp_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Vendors]:
    # The fake BFL checks x-key on its polls against its module's key: this run's key instead.
    monkeypatch.setattr(b, "API_KEY", BFL_KEY)
    openai_fake = fu.FakeUpstream()
    server = await aiohttp_server(openai_fake.app())
    async with FakeUpstream() as google, FakeUpstream() as bfl, FakeUpstream() as stability, FakeUpstream() as fal:
        up = Vendors(openai_fake, str(server.make_url("/v1")), google, bfl, stability, fal, b.FakeBFL(bfl),
                     f.FakeFal(fal))
        for name in NAMES[1:]:
            up.always(name, up.success(name))
        yield up


def config_yaml(up: Vendors, router: str = "", fal: str = "") -> str:
    # The fakes are reached as 127.0.0.1, which the operator adds to the domains BFL's polling and
    # result URLs and fal's result URLs may be on (the plugins' extra_domains, for a test double).
    after = {v.name: ", ".join(w.model for w in CHAIN[i + 1:]) for i, v in enumerate(CHAIN)}
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - id: {OPENAI.target}
    plugin: openai
    region: {OPENAI.region}
    settings: {{api_key: "{OPENAI_KEY}", base_url: "{up.openai_url}"}}
  - id: {GOOGLE.target}
    plugin: google
    region: {GOOGLE.region}
    settings: {{api_key: "{GOOGLE_KEY}", base_url: "{up.google.url('/v1beta')}"}}
  - id: {BFL.target}
    plugin: bfl
    region: {BFL.region}
    settings: {{api_key: "{BFL_KEY}", base_url: "{up.bfl_up.url('')}", extra_domains: ["127.0.0.1"],
                poll_interval_s: 0.02, max_poll_interval_s: 0.1}}
  - id: {STABILITY.target}
    plugin: stability
    region: {STABILITY.region}
    settings: {{api_key: "{STABILITY_KEY}", base_url: "{up.stability.url('')}", usd_per_credit: 0.01}}
  - id: {FAL.target}
    plugin: fal
    region: {FAL.region}
    settings: {{api_key: "{FAL_KEY}", base_url: "{up.fal_up.url('')}", extra_domains: ["127.0.0.1"]}}
models:
  {OPENAI.model}: {{targets: [{OPENAI.target}], fallbacks: [{after["openai"]}]}}
  {GOOGLE.model}: {{targets: [{GOOGLE.target}], fallbacks: [{after["google"]}]}}
  {BFL.model}: {{targets: [{BFL.target}], fallbacks: [{after["bfl"]}]}}
  {STABILITY.model}: {{targets: [{STABILITY.target}], fallbacks: [{after["stability"]}]}}
  {FAL.model}: {{targets: [{FAL.target}]{fal}}}
router: {{backoff_base_s: 0.05, backoff_cap_s: 0.2{router}}}
"""


@pytest.fixture
def gateway(aiohttp_client: Callable[..., Any], vendors: Vendors) -> Gateway:
    async def make(router: str = "", fal: str = "") -> Any:
        return await aiohttp_client(create_app(parse_config(config_yaml(vendors, router, fal), env={})))
    return make


async def generate(gw: Any, run: Run, **fields: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await gw.post("/v1/images/generations", headers=AUTH, json={"prompt": PROMPT, **fields})
    text = await resp.text()
    run.saw(f"the body of a {resp.status}", text)
    run.saw(f"the headers of a {resp.status}", str(list(resp.headers.items())))
    return resp.status, msgspec.json.decode(text), resp


def attempts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts without their latencies (checked to be measured, then left out)."""
    out = []
    for attempt in body["extra"]["routing"]["attempts"]:
        latency_ms = attempt.pop("latency_ms")
        assert isinstance(latency_ms, float) and latency_ms >= 0
        out.append(attempt)
    return out


def failed(vendor: Vendor, http_status: int | None, code: str | None, message: str,
           notes: list[str] | None = None) -> dict[str, Any]:
    attempt = {"provider": vendor.name, "region": vendor.region, "status": "failed", "model": vendor.model,
               "target": vendor.target_id, "http_status": http_status, "error_code": code, "error_message": message,
               "notes": notes}
    return {k: v for k, v in attempt.items() if v is not None}


def succeeded(vendor: Vendor, notes: list[str] | None = None) -> dict[str, Any]:
    attempt = {"provider": vendor.name, "region": vendor.region, "status": "succeeded", "model": vendor.model,
               "target": vendor.target_id, "http_status": 200, "notes": notes}
    return {k: v for k, v in attempt.items() if v is not None}


def picture(b64: str) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return str(image.format), image.size


# -- 1. the walk -------------------------------------------------------------------------------

N_CALLS = "n=2 asked in 2 calls of at most 1 image (at most 4 at once); each call is billed by the provider"


async def test_the_walk_from_openai_to_fal_every_attempt_reported(run: Run, gateway: Gateway,
                                                                  vendors: Vendors) -> None:
    vendors.script("openai", vendors.failure("openai", "overloaded"))
    for name in ("google", "bfl", "stability"):
        vendors.always(name, vendors.failure(name, "overloaded"))
    gw = await gateway()
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        raw = await sdk.images.with_raw_response.generate(model=OPENAI.model, prompt=PROMPT, n=2, size="1536x1024",
                                                          output_format="webp")
    body_text = await raw.http_response.aread()
    run.saw("the walk's body", body_text.decode())
    run.saw("the walk's headers", str(list(raw.headers.items())))
    result = raw.parse()

    # The client gets fal's images, as it asked for them: two webp images (fal made png; the
    # gateway converted them), at the size fal's grid allowed.
    assert result.data is not None and len(result.data) == 2
    assert [picture(d.b64_json or "") for d in result.data] == [("WEBP", (1440, 960))] * 2
    assert (result.output_format, result.size) == ("webp", "1440x960")
    assert raw.headers["x-upstream-request-id"] == f.REQUEST_ID

    body = msgspec.json.decode(body_text)
    assert attempts(body) == [
        failed(OPENAI, 503, None, "The engine is currently overloaded, please try again later."),
        failed(GOOGLE, 503, None, "0 of 2 images were made before a call failed: The model is overloaded. "
               "Please try again later.", notes=[
                   "size 1536x1024 sent as aspect ratio 3:2, size class 1K (the provider chooses the exact pixels)",
                   N_CALLS]),
        failed(BFL, 502, "upstream_task_failed", "0 of 2 images were made before a call failed: BFL task "
               "00000001-5c1e-4b7a-9d2f-3e8a6b0c4d1f ended with status 'Error': {\"error\":\"Generation failed\"}",
               notes=["size 1536x1024 sent as 1440x960 (edges multiples of 32 from 256 to 1440)", N_CALLS]),
        failed(STABILITY, 500, None, "0 of 2 images were made before a call failed: Stability AI answered HTTP 500 "
               "(internal_error): An unexpected server error has occurred, please try again later.", notes=[
                   "size 1536x1024 sent as aspect ratio 3:2 (the provider chooses the exact pixels)",
                   "size 1536x1024 is 1.6 megapixels; this model makes about 1 at any aspect ratio", N_CALLS]),
        succeeded(FAL, notes=["size 1536x1024 sent as 1440x960 (edges multiples of 32 from 256 to 1440)",
                              "2 images converted from png to webp at quality 100 by the gateway"]),
    ]

    # Each vendor was asked in its own dialect, once per pass (no retries: fal served).
    [asked] = vendors.calls("openai")
    assert (asked.body["model"], asked.body["n"], asked.body["size"], asked.body["output_format"]) == (
        "gpt-image-1", 2, "1536x1024", "webp")
    assert asked.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    google_calls = vendors.calls("google")
    assert len(google_calls) == 2 and all(c.headers["x-goog-api-key"] == GOOGLE_KEY for c in google_calls)
    assert all(c.json()["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "1K"}
               for c in google_calls)
    bfl_calls = vendors.calls("bfl")
    assert len(bfl_calls) == 2 and all(c.headers["x-key"] == BFL_KEY for c in bfl_calls)
    assert all((c.json()["width"], c.json()["height"], c.json()["output_format"]) == (1440, 960, "webp")
               for c in bfl_calls)
    stability_calls = vendors.calls("stability")
    assert len(stability_calls) == 2
    assert all(c.headers["authorization"] == f"Bearer {STABILITY_KEY}" for c in stability_calls)
    assert all((c.form()["aspect_ratio"], c.form()["output_format"]) == ("3:2", "webp") for c in stability_calls)
    [fal_call] = vendors.calls("fal")
    assert fal_call.headers["authorization"] == f"Key {FAL_KEY}"
    assert {k: fal_call.json()[k] for k in ("num_images", "image_size", "output_format")} == {
        "num_images": 2, "image_size": {"width": 1440, "height": 960}, "output_format": "png"}

    # 3. The cost is fal's, as fal bills: $0.025 a megapixel of the two 1440x960 images made
    # (https://fal.ai/models/fal-ai/flux-1/dev/llms.txt); fal reports no tokens, so no usage.
    assert result.usage is None and "usage" not in body
    assert body["extra"]["usage"] == {"cost_usd": 0.06912, "price_source": "plugin",
                                      "cost_usd_details": {"megapixels": 0.06912}}
    assert await eventually(lambda: '"model_served":"fal/flux-1-dev"' in run.output())
    [line] = [msgspec.json.decode(x) for x in run.output().splitlines() if '"route":"/v1/images/generations"' in x]
    assert {k: line[k] for k in ("status", "model_asked", "model_served", "provider", "region", "attempts", "images",
                                 "input_tokens", "output_tokens", "cost_usd", "cost_unknown_reason")} == {
        "status": 200, "model_asked": OPENAI.model, "model_served": FAL.model, "provider": "fal", "region": "us",
        "attempts": 5, "images": 2, "input_tokens": None, "output_tokens": None, "cost_usd": 0.06912,
        "cost_unknown_reason": None}


async def test_what_only_openai_honours_is_never_dropped_silently_on_the_way(run: Run, gateway: Gateway,
                                                                             vendors: Vendors) -> None:
    """``quality`` is OpenAI's alone: the other vendors are skipped, not sent a request without it,
    unless the operator lets one drop it (``models.<id>.drop_unsupported``), said in its attempt."""
    vendors.always("openai", vendors.failure("openai", "overloaded"))
    status, body, _ = await generate(await gateway(), run, model=OPENAI.model, quality="high", size="1024x1024")
    assert status == 502, body
    overloaded = failed(OPENAI, 503, None, "The engine is currently overloaded, please try again later.")
    assert attempts(body) == [overloaded, *({**failed(v, None, "unsupported_request", "Invalid value: 'high'. "
                                                      "Supported values are: 'auto'."), "status": "skipped"}
                                            for v in CHAIN[1:]), overloaded]
    assert all(vendors.calls(name) == [] for name in NAMES[1:])

    status, body, _ = await generate(await gateway(fal=", drop_unsupported: [quality]"), run, model=OPENAI.model,
                                     quality="high", size="1024x1024")
    assert status == 200, body
    assert attempts(body)[-1] == succeeded(FAL, notes=[
        "quality=high dropped: fal/flux-1-dev cannot honour it here (models.fal/flux-1-dev.drop_unsupported allows "
        "this)"])
    assert "quality" not in vendors.calls("fal")[0].json()


# -- 2. each vendor's failures as the cause that moves the walk on -----------------------------

#: (http_status, error_code) of the failed attempt, per vendor and kind.
FAILED_AS: dict[tuple[str, str], tuple[int, str]] = {
    **{(name, "auth"): (401, "invalid_api_key") for name in NAMES},
    ("bfl", "auth"): (403, "permission_denied"),  # BFL's Errors page: 403 for a key without permission
    **{(name, "rate_limit"): (429, "rate_limit_exceeded") for name in NAMES},
    **{(name, "malformed"): (502, "invalid_upstream_response") for name in NAMES},
}


def billed(vendor: Vendor, body: dict[str, Any]) -> None:
    """3. The answer is priced as ``vendor`` bills, and carries ``usage`` only if it reports tokens."""
    cost_usd, source, details, reports_tokens = BILLED[vendor.name]
    assert body["extra"]["usage"] == {"cost_usd": pytest.approx(cost_usd), "price_source": source,
                                      "cost_usd_details": pytest.approx(details)}
    assert ("usage" in body) is reports_tokens
    if vendor is OPENAI:
        assert body["usage"]["total_tokens"] == 20 + 1056  # the fake OpenAI's own count
    if vendor is GOOGLE:
        assert body["usage"]["total_tokens"] == 1140  # usageMetadata.totalTokenCount


@pytest.mark.parametrize("kind", ["auth", "rate_limit", "malformed"])
@pytest.mark.parametrize("name", NAMES)
async def test_each_failure_moves_the_walk_to_the_next_vendor(run: Run, gateway: Gateway, vendors: Vendors,
                                                              caplog: pytest.LogCaptureFixture, name: str,
                                                              kind: str) -> None:
    """An account refused, a rate limit or an answer the gateway cannot use: the next vendor is
    tried at once and serves (the failed vendor would be tried again only if none did)."""
    vendor, after = BY_NAME[name], NEXT[name]
    vendors.script(name, vendors.failure(name, kind))
    status, body, resp = await generate(await gateway(), run, model=vendor.model, size="1024x1024",
                                        extra={"fallbacks": [after.model]})
    assert status == 200, body
    [first, second] = attempts(body)
    http_status, code = FAILED_AS[name, kind]
    assert (first["provider"], first["region"], first["status"], first["http_status"], first["error_code"]) == (
        name, vendor.region, "failed", http_status, code)
    if kind == "auth":  # the upstream's words go to the operator's log, not to the client
        assert first["error_message"] == CREDENTIALS_REJECTED.format(target=vendor.target_id, status=http_status)
        assert any(r.levelno == logging.WARNING and r.getMessage().startswith(
            f"target {vendor.target_id}: the upstream refused the gateway's credentials (HTTP {http_status}")
            for r in caplog.records)
    assert second == succeeded(after, second.get("notes"))
    assert len(vendors.calls(name)) == 1 and len(vendors.calls(after.name)) == 1  # moving on never waits
    assert len(body["data"]) == 1 and picture(body["data"][0]["b64_json"])[1]
    billed(after, body)


@pytest.mark.parametrize("name", NAMES)
async def test_a_rate_limited_vendor_is_tried_again_after_its_retry_after(run: Run, gateway: Gateway,
                                                                          vendors: Vendors, name: str) -> None:
    """The walk moves on at once; only when the rest failed too (here: the next vendor refuses
    the gateway's key) is the rate-limited vendor tried again, no sooner than its retry-after
    (Stability documents none: then after the backoff, at most ``backoff_cap_s``)."""
    vendor, after = BY_NAME[name], NEXT[name]
    vendors.script(name, vendors.timed(name, vendors.failure(name, "rate_limit")),
                   vendors.timed(name, vendors.success(name)))
    vendors.script(after.name, vendors.timed(after.name, vendors.failure(after.name, "auth")))
    status, body, _ = await generate(await gateway(), run, model=vendor.model, size="1024x1024",
                                     extra={"fallbacks": [after.model]})
    assert status == 200, body
    assert [(a["provider"], a["status"], a.get("http_status")) for a in attempts(body)] == [
        (name, "failed", 429), (after.name, "failed", FAILED_AS[after.name, "auth"][0]), (name, "succeeded", 200)]
    [(_, rate_limited_at), (_, moved_on_at), (_, retried_at)] = vendors.times
    assert moved_on_at - rate_limited_at < 0.5  # moving on never waits for the retry-after
    assert retried_at - rate_limited_at >= (0.0 if name == "stability" else 1.0)
    billed(vendor, body)


async def test_when_every_vendor_is_rate_limited_the_client_gets_one_429(run: Run, gateway: Gateway,
                                                                         vendors: Vendors) -> None:
    """Each vendor's wait as it says it (Stability names none); the client is told the shortest
    (docs/routing.md, "What the client sees"), so the SDK raises RateLimitError and waits that long."""
    waits = {"openai": 7, "google": 3, "bfl": 5, "stability": 1, "fal": 4}  # stability: sends none whatever
    for name in NAMES:
        vendors.always(name, vendors.failure(name, "rate_limit", wait_s=waits[name]))
    status, body, resp = await generate(await gateway(", max_attempts_per_target: 1"), run, model=OPENAI.model)
    assert (status, body["error"]["type"], body["error"]["code"]) == (429, "requests", "rate_limit_exceeded")
    assert resp.headers["retry-after"] == "3"
    assert [(a["provider"], a["http_status"], a["error_code"]) for a in attempts(body)] == [
        (name, 429, "rate_limit_exceeded") for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
async def test_a_refusal_ends_the_walk_with_moderation_blocked(run: Run, gateway: Gateway,
                                                               vendors: Vendors, name: str) -> None:
    vendor, after = BY_NAME[name], NEXT[name]
    vendors.script(name, vendors.failure(name, "refusal"))
    status, body, resp = await generate(await gateway(), run, model=vendor.model, size="1024x1024",
                                        extra={"fallbacks": [after.model]})
    assert status == 400, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("image_generation_user_error", "moderation_blocked",
                                                              None)
    assert "data" not in body and resp.headers["x-should-retry"] == "false"
    [attempt] = attempts(body)
    assert (attempt["provider"], attempt["status"], attempt["http_status"], attempt["error_code"]) == (
        name, "failed", 400, "moderation_blocked")
    assert len(vendors.calls(name)) == 1 and vendors.calls(after.name) == []  # not retried, not routed around


@pytest.mark.parametrize("name", NAMES)
async def test_a_refusal_is_routed_around_only_with_fallback_on_moderation(run: Run, gateway: Gateway,
                                                                           vendors: Vendors, name: str) -> None:
    vendor, after = BY_NAME[name], NEXT[name]
    vendors.script(name, vendors.failure(name, "refusal"))
    status, body, _ = await generate(await gateway(", fallback_on_moderation: true"), run, model=vendor.model,
                                     size="1024x1024", extra={"fallbacks": [after.model]})
    assert status == 200, body
    [first, second] = attempts(body)
    assert (first["provider"], first["status"], first["http_status"], first["error_code"]) == (
        name, "failed", 400, "moderation_blocked")
    assert second == succeeded(after, second.get("notes"))
    billed(after, body)


async def test_when_every_vendor_refuses_the_client_gets_the_400(run: Run, gateway: Gateway,
                                                                 vendors: Vendors) -> None:
    for name in NAMES:
        vendors.always(name, vendors.failure(name, "refusal"))
    gw = await gateway(", fallback_on_moderation: true")
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.generate(model=OPENAI.model, prompt=PROMPT, size="1024x1024")
    run.saw("the refusal's body", caught.value.response.text)
    run.saw("the refusal's headers", str(list(caught.value.response.headers.items())))
    assert caught.value.code == "moderation_blocked"
    assert caught.value.message.endswith("Your request was rejected by the safety system.")  # the first refusal's
    walked = caught.value.response.json()["extra"]["routing"]["attempts"]
    assert [(a["provider"], a["error_code"]) for a in walked] == [(n, "moderation_blocked") for n in NAMES]
    assert all(len(vendors.calls(n)) == 1 for n in NAMES)


# -- 4. no credential anywhere, even when every upstream quotes its key ------------------------

def quoting(name: str, kind: str) -> AnyBehaviour:
    """An error of ``kind`` in ``name``'s dialect whose words quote the key, whole and masked: the
    worst an upstream can do (OpenAI's 401 does quote a masked key; the others are made up)."""
    key = dict(zip(NAMES, KEYS))[name]
    words = f"key {key} (or {masked(key)}, ...{key[-10:]}) was used"
    status = {"auth": 401, "rate_limit": 429, "client": 400, "server": 500}[kind]
    if name == "openai":
        return fu.error(status, {"auth": "invalid_api_key", "rate_limit": "rate_limit_exceeded",
                                 "client": "invalid_value"}.get(kind), words)
    if name == "google":
        return g.google_error(status, {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT",
                                       500: "INTERNAL"}[status], words)
    if name == "bfl":
        return b.error(422 if status == 400 else status, {"detail": words})
    if name == "stability":
        return s.error(status, "bad_request" if status == 400 else "error", [words])
    return f.error(422 if status == 400 else status, {"detail": [{"loc": ["body", "prompt"], "msg": words,
                                                                  "type": "value_error"}]}
                   if status == 400 else {"detail": words})


async def test_no_credential_in_any_response_or_log_line(run: Run, gateway: Gateway,
                                                         vendors: Vendors) -> None:
    gw = await gateway(", max_attempts_per_target: 1, breaker: {enabled: false}")
    for name, kind in itertools.product(NAMES, ("auth", "rate_limit", "client", "server")):
        vendors.script(name, quoting(name, kind))
        status, body, _ = await generate(gw, run, model=BY_NAME[name].model, extra={"fallbacks": []})
        assert status == {"auth": 502, "rate_limit": 429, "client": 400, "server": 502}[kind], (name, kind, body)
    # And the walk over all five, each failing with its key in its words but the last.
    for name in NAMES[:-1]:
        vendors.script(name, quoting(name, "server"))
    status, body, _ = await generate(gw, run, model=OPENAI.model)
    assert status == 200 and len(attempts(body)) == 5
    metrics = await gw.get("/metrics")
    run.saw("/metrics", await metrics.text())
    await gw.close()  # flushes the access log
    assert run.output().count('"route":"/v1/images/generations"') == 21
    # Not vacuous: each upstream did receive its key, and quoted it back.
    assert all(r.headers["Authorization"] == f"Bearer {OPENAI_KEY}" for r in vendors.calls("openai"))
    assert {r.headers["x-goog-api-key"] for r in vendors.calls("google")} == {GOOGLE_KEY}
    assert {r.headers["x-key"] for r in vendors.calls("bfl")} == {BFL_KEY}
    assert {r.headers["authorization"] for r in vendors.calls("stability")} == {f"Bearer {STABILITY_KEY}"}
    assert {r.headers["authorization"] for r in vendors.calls("fal")} == {f"Key {FAL_KEY}"}
