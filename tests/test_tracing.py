"""OpenTelemetry traces through the real app: exported by the real OTLP/HTTP exporter to a receiver on
loopback that decodes the official protobuf (``ExportTraceServiceRequest``), against the fake
upstream with two targets (tests/router_harness.py).

Facts relied on:
- OTLP/HTTP: the exporter POSTs a binary protobuf ``ExportTraceServiceRequest`` (Content-Type
  ``application/x-protobuf``) to the traces URL and takes a 200 with an ``ExportTraceServiceResponse``
  as success (https://opentelemetry.io/docs/specs/otlp/#otlphttp).
- W3C Trace Context: ``traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``,
  lower-case, flag 01 sampled; ``tracestate`` is passed on (https://www.w3.org/TR/trace-context/).
- GenAI semantic conventions: span name ``{gen_ai.operation.name} {gen_ai.request.model}``; client
  spans for calls to a model; ``gen_ai.operation.name`` takes a well-known value that applies
  (``generate_content``: multimodal content generation), ``gen_ai.provider.name`` ``openai`` for
  OpenAI, ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type``, ``server.address``
  (https://github.com/open-telemetry/semantic-conventions-genai/blob/main/docs/gen-ai/gen-ai-spans.md,
  https://github.com/open-telemetry/semantic-conventions-genai/blob/main/docs/registry/attributes/gen-ai.md).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.app import MIDDLEWARES, create_app
from gateway.middleware.tracing import tracing_middleware
from gateway.appkeys import RESOURCES, TRACING
from gateway.config import ConfigError
from gateway.config_load import parse_config
from gateway.runtime import restart_required
from gateway.upstream_http import TracedUpstreamHTTP, UpstreamHTTP
from tests.conftest import AUTH, GATEWAY_KEY, UPSTREAM_KEY, eventually
from tests.fake_upstream import FakeUpstream, error, streamed
from tests.router_harness import PROMPT, TWO_REGIONS, config_yaml

USER_ID = "user-7c1d-tracing-marker"
SESSION_ID = "session-3e9a-tracing-marker"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
ROUTE = "/v1/images/generations"


class Receiver:
    """An OTLP/HTTP traces endpoint: every export request, decoded, and its raw bytes."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        self.content_types: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            data = gzip.decompress(data)
        elif encoding == "deflate":
            data = zlib.decompress(data)
        self.raw.append(data)
        self.content_types.append(request.content_type)
        self.requests.append(ExportTraceServiceRequest.FromString(data))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self) -> list[Span]:
        return [span for req in self.requests for rs in req.resource_spans for ss in rs.scope_spans
                for span in ss.spans]

    def trace(self, trace_id: bytes) -> list[Span]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def resources(self) -> list[dict[str, Any]]:
        return [attrs(rs.resource.attributes) for req in self.requests for rs in req.resource_spans]


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def tracing_yaml(endpoint: str, extra: str = "") -> str:
    # A short batch schedule: the spans arrive within ~50 ms of the observers' turn, no sleeps.
    return f"tracing: {{enabled: true, endpoint: '{endpoint}', service_name: og-test, batch_delay_s: 0.05{extra}}}\n"


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> Any:
    fake = Receiver()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/v1/traces"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def traced(aiohttp_client: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> Callable[..., Any]:
    """The real app (real clock) with two targets of openai/gpt-image-1, tracing to ``receiver``."""
    async def make(tracing_extra: str = "", tracing: bool = True) -> TestClient:
        section = tracing_yaml(receiver.url, tracing_extra) if tracing else ""  # type: ignore[attr-defined]
        text = config_yaml(upstream.url, TWO_REGIONS, "  max_attempts_per_target: 1\n") + section  # type: ignore[attr-defined]
        return await aiohttp_client(create_app(parse_config(text, env={})))
    return make


def by_kind(spans: list[Span], kind: int) -> list[Span]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time_unix_nano)


async def spans_of(receiver: Receiver, trace_id: bytes, count: int) -> list[Span]:
    assert await eventually(lambda: len(receiver.trace(trace_id)) >= count, 10.0), receiver.spans()
    return receiver.trace(trace_id)


async def test_a_failed_and_a_succeeded_attempt_give_three_linked_spans(
        traced: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> None:
    client = await traced()
    upstream.script("gpt-image-1", error(500, code="server_error", message="The upstream broke."))
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    reported = body["extra"]["routing"]["attempts"]
    assert [a["status"] for a in reported] == ["failed", "succeeded"]

    # The upstream saw one traceparent per attempt, in the one trace.
    sent = [r.headers["traceparent"] for r in upstream.received]
    assert len(sent) == 2
    versions, trace_ids, parent_ids, flags = zip(*(header.split("-") for header in sent))
    assert versions == ("00", "00") and flags == ("01", "01")
    assert trace_ids[0] == trace_ids[1] and len(trace_ids[0]) == 32 and parent_ids[0] != parent_ids[1]
    trace_id = bytes.fromhex(trace_ids[0])

    spans = await spans_of(receiver, trace_id, 3)
    assert len(spans) == 3
    [server] = by_kind(spans, Span.SPAN_KIND_SERVER)
    first, second = by_kind(spans, Span.SPAN_KIND_CLIENT)
    assert server.parent_span_id == b""  # a new trace: the gateway's span is its root
    # Each attempt's span is a child of the request's, and is the parent the upstream was told.
    assert first.parent_span_id == server.span_id and second.parent_span_id == server.span_id
    assert [first.span_id.hex(), second.span_id.hex()] == list(parent_ids)
    assert server.start_time_unix_nano <= first.start_time_unix_nano <= first.end_time_unix_nano
    assert first.end_time_unix_nano <= second.start_time_unix_nano <= second.end_time_unix_nano
    assert second.end_time_unix_nano <= server.end_time_unix_nano

    assert server.name == "generate_content openai/gpt-image-1"
    s = attrs(server.attributes)
    assert s["gen_ai.operation.name"] == "generate_content" and s["gen_ai.output.type"] == "image"
    assert s["gen_ai.request.model"] == "openai/gpt-image-1"
    assert s["gen_ai.response.model"] == "openai/gpt-image-1"
    assert s["gen_ai.provider.name"] == "openai"
    assert (s["gen_ai.usage.input_tokens"], s["gen_ai.usage.output_tokens"]) == (20, 1056)  # the fake's usage
    assert s["http.response.status_code"] == 200 and s["http.route"] == ROUTE and s["http.request.method"] == "POST"
    assert s["opengateway.attempts"] == 2 and s["opengateway.request_id"] == resp.headers["x-request-id"]
    assert "error.type" not in s and server.status.code == Status.STATUS_CODE_UNSET

    port = int(upstream.url.split(":")[2].split("/")[0])  # type: ignore[attr-defined]
    assert first.name == second.name == "generate_content openai/gpt-image-1"
    f, g = attrs(first.attributes), attrs(second.attributes)
    assert f["gen_ai.operation.name"] == "generate_content" and f["gen_ai.provider.name"] == "openai"
    assert f["gen_ai.request.model"] == "openai/gpt-image-1"
    assert (f["server.address"], f["server.port"]) == ("127.0.0.1", port)
    assert f["http.response.status_code"] == 500
    assert f["opengateway.attempt.status"] == "failed"
    assert f["opengateway.attempt.error_code"] == reported[0]["error_code"]
    assert f["error.type"] == (reported[0]["error_code"] or "500")
    assert f["opengateway.attempt.possibly_billed"] is False
    assert f["opengateway.target"] == reported[0]["target"] and f["opengateway.region"] == "global"
    assert first.status.code == Status.STATUS_CODE_ERROR
    assert "gen_ai.usage.output_tokens" not in f
    assert g["opengateway.attempt.status"] == "succeeded" and g["http.response.status_code"] == 200
    assert g["opengateway.region"] == "eu-west" and g["gen_ai.response.model"] == "openai/gpt-image-1"
    assert (g["gen_ai.usage.input_tokens"], g["gen_ai.usage.output_tokens"]) == (20, 1056)
    assert "error.type" not in g and second.status.code == Status.STATUS_CODE_UNSET

    assert receiver.content_types[0] == "application/x-protobuf"
    assert {"service.name": "og-test"}.items() <= receiver.resources()[0].items()


async def test_a_clients_traceparent_is_continued_and_passed_upstream(
        traced: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> None:
    client = await traced()
    headers = {**AUTH, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01", "tracestate": "vendor=abc,other=1"}
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT}, headers=headers)
    assert resp.status == 200
    [sent] = upstream.received
    version, trace_id, parent_id, flags = sent.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE_ID, "01")
    assert sent.headers["tracestate"] == "vendor=abc,other=1"

    spans = await spans_of(receiver, bytes.fromhex(CLIENT_TRACE_ID), 2)
    [server] = by_kind(spans, Span.SPAN_KIND_SERVER)
    [attempt] = by_kind(spans, Span.SPAN_KIND_CLIENT)
    assert server.parent_span_id.hex() == CLIENT_SPAN_ID  # the client's span is the gateway's parent
    assert attempt.parent_span_id == server.span_id and attempt.span_id.hex() == parent_id
    assert server.trace_state == "vendor=abc,other=1"


async def test_an_invalid_traceparent_starts_a_new_trace(traced: Callable[..., Any], upstream: FakeUpstream,
                                                         receiver: Receiver) -> None:
    client = await traced()
    bad = f"00-{'0' * 32}-{CLIENT_SPAN_ID}-01"  # an all-zero trace id is invalid
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT},
                             headers={**AUTH, "traceparent": bad, "tracestate": "vendor=abc"})
    assert resp.status == 200
    [sent] = upstream.received
    trace_id = sent.headers["traceparent"].split("-")[1]
    assert trace_id != "0" * 32 and "tracestate" not in sent.headers
    [server] = by_kind(await spans_of(receiver, bytes.fromhex(trace_id), 2), Span.SPAN_KIND_SERVER)
    assert server.parent_span_id == b""


async def test_an_unsampled_client_trace_is_passed_on_and_not_exported(
        traced: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> None:
    client = await traced(", sample_ratio: 0")
    body = {"model": "openai/gpt-image-1", "prompt": PROMPT}
    unsampled = "11111111111111111111111111111111"
    resp = await client.post(ROUTE, json=body, headers={**AUTH, "traceparent": f"00-{unsampled}-{CLIENT_SPAN_ID}-00"})
    assert resp.status == 200
    assert await client.post(ROUTE, json=body, headers=AUTH)  # a new trace, at sample_ratio 0
    # A sampled client trace is followed whatever the ratio; the batch processor sends in order,
    # so once its spans are in, the two requests before it would have been too.
    resp = await client.post(ROUTE, json=body, headers={**AUTH, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"})
    assert resp.status == 200
    await spans_of(receiver, bytes.fromhex(CLIENT_TRACE_ID), 2)
    assert {s.trace_id.hex() for s in receiver.spans()} == {CLIENT_TRACE_ID}
    first, second, third = (r.headers["traceparent"] for r in upstream.received)
    assert first.startswith(f"00-{unsampled}-") and first.endswith("-00")  # still propagated upstream
    assert second.endswith("-00") and third.endswith("-01")


async def test_nothing_sensitive_is_in_a_span_unless_opted_in(
        traced: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> None:
    headers = {**AUTH, "x-opengateway-user-id": USER_ID, "x-opengateway-session-id": SESSION_ID}
    body = {"model": "openai/gpt-image-1", "prompt": PROMPT, "user": USER_ID}
    upstream.script("gpt-image-1", error(500, message=f"bad key {UPSTREAM_KEY}"))
    client = await traced()
    resp = await client.post(ROUTE, json=body, headers=headers)
    assert resp.status == 200
    trace_id = bytes.fromhex(upstream.received[0].headers["traceparent"].split("-")[1])
    await spans_of(receiver, trace_id, 3)
    exported = b"".join(receiver.raw)
    for secret in (GATEWAY_KEY, UPSTREAM_KEY, PROMPT, USER_ID, SESSION_ID):
        assert secret.encode() not in exported, secret
    await client.close()

    # Opted in: the prompt (as the conventions' input messages) and the ids; never a key.
    receiver.raw.clear()
    receiver.requests.clear()
    upstream.received.clear()
    client = await traced(", include_prompt: true, include_user_id: true")
    resp = await client.post(ROUTE, json=body, headers=headers)
    assert resp.status == 200
    trace_id = bytes.fromhex(upstream.received[0].headers["traceparent"].split("-")[1])
    [server] = by_kind(await spans_of(receiver, trace_id, 2), Span.SPAN_KIND_SERVER)
    s = attrs(server.attributes)
    assert msgspec.json.decode(s["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    assert (s["opengateway.user_id"], s["opengateway.session_id"]) == (USER_ID, SESSION_ID)
    exported = b"".join(receiver.raw)
    assert GATEWAY_KEY.encode() not in exported and UPSTREAM_KEY.encode() not in exported


async def test_a_stream_is_traced_until_it_ends(traced: Callable[..., Any], upstream: FakeUpstream,
                                                receiver: Receiver) -> None:
    client = await traced()
    upstream.script("gpt-image-1", streamed(pause_s=0.2))
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT, "stream": True,
                                          "partial_images": 2}, headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    assert "image_generation.completed" in text
    [sent] = upstream.received
    assert sent.body["stream"] is True
    trace_id = bytes.fromhex(sent.headers["traceparent"].split("-")[1])
    spans = await spans_of(receiver, trace_id, 2)
    [server] = by_kind(spans, Span.SPAN_KIND_SERVER)
    [attempt] = by_kind(spans, Span.SPAN_KIND_CLIENT)
    assert attempt.span_id.hex() == sent.headers["traceparent"].split("-")[2]
    s = attrs(server.attributes)
    assert s["gen_ai.request.stream"] is True
    assert 0 < s["gen_ai.response.time_to_first_chunk"]
    # The events came 0.2 s apart: the attempt's span lasts the whole stream, not to its first event.
    duration_s = (attempt.end_time_unix_nano - attempt.start_time_unix_nano) / 1e9
    assert duration_s >= 0.4 and attempt.end_time_unix_nano <= server.end_time_unix_nano
    assert s["gen_ai.response.time_to_first_chunk"] < duration_s
    assert attrs(attempt.attributes)["gen_ai.usage.output_tokens"] == 1056


async def test_an_edit_is_traced(traced: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver) -> None:
    from tests.test_edits import png

    client = await traced()
    form = {"model": "openai/gpt-image-1", "prompt": PROMPT, "image": io.BytesIO(png())}
    resp = await client.post("/v1/images/edits", data=form, headers=AUTH)
    assert resp.status == 200, await resp.text()
    [sent] = upstream.received
    assert sent.path == "/v1/images/edits" and sent.files
    trace_id = bytes.fromhex(sent.headers["traceparent"].split("-")[1])
    spans = await spans_of(receiver, trace_id, 2)
    [server] = by_kind(spans, Span.SPAN_KIND_SERVER)
    assert server.name == "generate_content openai/gpt-image-1"
    assert attrs(server.attributes)["http.route"] == "/v1/images/edits"
    [attempt] = by_kind(spans, Span.SPAN_KIND_CLIENT)
    assert attempt.span_id.hex() == sent.headers["traceparent"].split("-")[2]


async def test_the_other_api_routes_get_http_spans(traced: Callable[..., Any], receiver: Receiver) -> None:
    client = await traced()
    resp = await client.get("/v1/models", headers={**AUTH, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"})
    assert resp.status == 200
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1"}, headers=AUTH)  # no prompt: 400
    assert resp.status == 400
    [models] = await spans_of(receiver, bytes.fromhex(CLIENT_TRACE_ID), 1)
    assert models.name == "GET /v1/models" and models.kind == Span.SPAN_KIND_SERVER
    assert "gen_ai.operation.name" not in attrs(models.attributes)
    assert await eventually(lambda: len(receiver.spans()) == 2)
    [invalid] = [s for s in receiver.spans() if s.trace_id.hex() != CLIENT_TRACE_ID]
    a = attrs(invalid.attributes)
    assert a["http.response.status_code"] == 400 and a["error.type"]  # the client's error: the span is not one
    assert invalid.status.code == Status.STATUS_CODE_UNSET
    assert await client.get("/healthz")  # not an API route: no span
    await client.close()  # the exporter is flushed at exit
    assert len(receiver.spans()) == 2


async def test_what_is_queued_at_exit_is_sent(traced: Callable[..., Any], upstream: FakeUpstream,
                                              receiver: Receiver) -> None:
    client = await traced(", batch_delay_s: 3600")
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT}, headers=AUTH)
    assert resp.status == 200
    await asyncio.sleep(0.1)  # (the observers' turn has run: the spans wait in the queue)
    assert receiver.spans() == []
    await client.close()
    trace_id = bytes.fromhex(upstream.received[0].headers["traceparent"].split("-")[1])
    assert len(receiver.trace(trace_id)) == 2


async def test_a_collector_that_is_down_costs_the_requests_nothing(
        aiohttp_client: Callable[..., Any], upstream: FakeUpstream) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1/traces"
    text = config_yaml(upstream.url, TWO_REGIONS) + tracing_yaml(closed, ", export_timeout_s: 1")  # type: ignore[attr-defined]
    client = await aiohttp_client(create_app(parse_config(text, env={})))
    loop = asyncio.get_running_loop()
    for _ in range(5):
        started = loop.time()
        resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT}, headers=AUTH)
        assert resp.status == 200 and loop.time() - started < 0.5
    await asyncio.sleep(0.2)  # an export or two has failed by now, in the exporter's thread
    started = loop.time()
    await client.close()
    assert loop.time() - started < 5  # the last export is bounded by export_timeout_s


async def test_tracing_off_adds_nothing_and_sends_nothing(traced: Callable[..., Any], upstream: FakeUpstream,
                                                           receiver: Receiver) -> None:
    client = await traced(tracing=False)
    app = client.server.app
    assert tuple(app.middlewares) == tuple(m for m in MIDDLEWARES if m is not tracing_middleware)
    assert type(app[RESOURCES].http) is UpstreamHTTP and TRACING not in app
    headers = {**AUTH, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
    resp = await client.post(ROUTE, json={"model": "openai/gpt-image-1", "prompt": PROMPT}, headers=headers)
    assert resp.status == 200
    [sent] = upstream.received
    assert "traceparent" not in sent.headers and "tracestate" not in sent.headers
    await client.close()
    assert receiver.requests == []


async def test_tracing_on_is_one_more_link_and_the_traced_interface(traced: Callable[..., Any]) -> None:
    client = await traced()
    app = client.server.app
    assert tuple(app.middlewares) == MIDDLEWARES and tracing_middleware in app.middlewares
    assert isinstance(app[RESOURCES].http, TracedUpstreamHTTP)


def test_tracing_settings_wait_for_a_restart_except_the_opt_ins(upstream: FakeUpstream) -> None:
    base = config_yaml(upstream.url, TWO_REGIONS)  # type: ignore[attr-defined]
    old = parse_config(base + "tracing: {enabled: true}\n", env={})
    for change, restart in ((", sample_ratio: 0.5", ["tracing.sample_ratio"]),
                            (", endpoint: 'http://collector:4318/v1/traces'", ["tracing.endpoint"]),
                            (", headers: {authorization: 'Bearer x'}", ["tracing.headers"]),
                            (", include_prompt: true, include_user_id: true", [])):
        new = parse_config(base + f"tracing: {{enabled: true{change}}}\n", env={})
        assert restart_required(old, new) == restart
    assert restart_required(parse_config(base, env={}), old) == ["tracing.enabled"]


def test_the_export_headers_take_environment_references(upstream: FakeUpstream) -> None:
    text = config_yaml(upstream.url, TWO_REGIONS) + "tracing: {enabled: true, headers: {authorization: 'Bearer ${OTEL_TOKEN}'}}\n"  # type: ignore[attr-defined]
    assert parse_config(text, env={"OTEL_TOKEN": "t0k"}).tracing.headers == {"authorization": "Bearer t0k"}
    with pytest.raises(ConfigError, match="OTEL_TOKEN is not set"):
        parse_config(text, env={})


def test_a_bad_endpoint_is_a_config_problem(upstream: FakeUpstream) -> None:
    text = config_yaml(upstream.url, TWO_REGIONS) + "tracing: {enabled: true, endpoint: 'collector:4318'}\n"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"\$\.tracing\.endpoint: 'collector:4318' is not an http\(s\) URL"):
        parse_config(text, env={})


def test_without_the_extra_check_config_says_how_to_install_it(tmp_path: Path, upstream: FakeUpstream) -> None:
    import subprocess

    path = tmp_path / "gateway.yaml"
    path.write_text(config_yaml(upstream.url, TWO_REGIONS) + "tracing: {enabled: true}\n")  # type: ignore[attr-defined]
    # The packages made unimportable, as in an install without the extra.
    code = ("import sys; sys.modules['opentelemetry.sdk'] = None; "
            "from gateway.cli import main; sys.exit(main(['check-config', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "$.tracing.enabled: tracing needs the OpenTelemetry packages" in result.stderr
    assert "pip install 'opengateway[otel]'" in result.stderr
    assert "Traceback" not in result.stderr


async def test_without_the_extra_start_up_is_a_config_error(upstream: FakeUpstream,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import Config, TracingConfig
    from gateway.config_load import OTEL_MODULES

    config = parse_config(config_yaml(upstream.url, TWO_REGIONS), env={})  # type: ignore[attr-defined]
    config = msgspec.structs.replace(config, tracing=TracingConfig(enabled=True))  # built in code: no check ran
    assert isinstance(config, Config)
    for name in OTEL_MODULES:  # as if never installed (earlier tests imported them)
        monkeypatch.setitem(sys.modules, name, None)
    runner = web.AppRunner(create_app(config))
    with pytest.raises(ConfigError, match=r"pip install 'opengateway\[otel\]'"):
        await runner.setup()  # the process's resources are made at start-up: the first is refused
