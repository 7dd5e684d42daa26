"""OpenTelemetry traces of the API requests, exported by OTLP/HTTP (``tracing:``; the ``otel`` extra).

Imported only when ``tracing.enabled``: the gateway runs without the OpenTelemetry packages.

A request's spans are built once it has been answered, from what its record already holds
(gateway/record.py: the status, the models, the usage, every attempt with its outcome), in the
observers' batch (gateway/observers.py), and handed to the SDK's batch processor, whose thread
encodes and sends them. While the request runs, the path only draws ids (gateway/tracing_context.py):
the server span's when it arrives, one per upstream attempt when the router starts it, and that
attempt's ``traceparent`` goes upstream.

The spans are made whole, as the SDK's ``ReadableSpan`` (what its processors and exporters take),
not through its ``Tracer``: a Tracer would draw ids, sample and record a live span, all of which
was done already, and it costs ~4 times as much on the event loop (measured: 53 µs against 14 µs
a request of two spans). Encoding and sending stay the SDK's, in its batch processor's thread:
~70 µs a span there, which is most of what tracing costs (docs/observability/tracing.md).

Names follow the GenAI semantic conventions
(https://github.com/open-telemetry/semantic-conventions-genai/blob/main/docs/gen-ai/gen-ai-spans.md
and docs/registry/attributes/gen-ai.md there): a server span per request and a client span per
upstream attempt, each named ``{gen_ai.operation.name} {gen_ai.request.model}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

import msgspec
from aiohttp import web
from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.api import Attempt, Usage
from gateway.appkeys import PLAN, TRACE
from gateway.config import TracingConfig
from gateway.plan import Plan
from gateway.record import RequestRecord
from gateway.runtime import Runtime
from gateway.tracing_context import AttemptSpan, RequestTrace, new_trace_id

log = logging.getLogger("opengateway.tracing")

#: ``gen_ai.operation.name``. The conventions' well-known values have none for image generation
#: or edits; the one that applies is ``generate_content`` ("multimodal content generation"), and a
#: well-known value that applies MUST be used. ``gen_ai.output.type: image`` says what it made.
OPERATION = "generate_content"
#: The routes whose requests are GenAI operations (the other /v1 routes get HTTP spans).
IMAGE_ROUTES = frozenset({"/v1/images/generations", "/v1/images/edits"})
#: ``gen_ai.provider.name`` per provider plugin: the conventions' well-known value where one fits,
#: the plugin's name (a custom value) otherwise.
PROVIDER_NAMES = {"openai": "openai", "azure_openai": "azure.ai.openai", "google": "gcp.gen_ai"}
#: Spans per export (see ``Tracing.__init__``).
EXPORT_BATCH_SPANS = 64
#: The google plugin reaches two APIs, each with its own well-known value (by host suffix).
GOOGLE_HOSTS = (("aiplatform.googleapis.com", "gcp.vertex_ai"), ("generativelanguage.googleapis.com", "gcp.gemini"))


class Tracing:
    """The process's span pipeline: sampling, the SDK's batch processor and OTLP/HTTP exporter."""

    def __init__(self, config: TracingConfig) -> None:
        exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers),
                                    timeout=config.export_timeout_s)
        # Batches of 64 spans, not the SDK's 512: encoding one holds the GIL and the event loop
        # waits meanwhile (~35 ms for 512 spans, which doubled S1's p99; ~4.5 ms for 64, within the
        # 10 ms overhead SLO, at the same throughput).
        self._processor = BatchSpanProcessor(exporter, schedule_delay_millis=config.batch_delay_s * 1000,
                                             max_export_batch_size=EXPORT_BATCH_SPANS,
                                             export_timeout_millis=config.export_timeout_s * 1000)
        self._resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self._scope = InstrumentationScope("opengateway", __version__)
        # New traces are kept at sample_ratio, by trace id; a client's own decision (its sampled
        # flag) is followed, as the SDK's ParentBased sampler does by default.
        self._root_sampler = TraceIdRatioBased(config.sample_ratio)
        self._propagator = TraceContextTextMapPropagator()

    def begin(self, headers: Mapping[str, str]) -> RequestTrace:
        """The client's trace when its ``traceparent`` is valid (the SDK's propagator parses it, and
        its ``tracestate``, as the W3C Trace Context says), a new one otherwise."""
        if "traceparent" in headers:
            parent = otel.get_current_span(self._propagator.extract(headers)).get_span_context()
            if parent.is_valid:
                return RequestTrace(parent.trace_id, parent.trace_flags.sampled, parent,
                                    parent.trace_state.to_header() or None)
        trace_id = new_trace_id()
        return RequestTrace(trace_id, self._root_sampler.should_sample(None, trace_id, "").decision.is_sampled())

    def observe(self, record: RequestRecord, request: web.Request, runtime: Runtime) -> None:
        trace = request.pop(TRACE, None)
        if trace is None or not trace.sampled:
            return
        try:
            for span in self._spans(trace, record, request.get(PLAN), runtime.config.tracing):
                self._processor.on_end(span)
        except Exception:  # a bug here must not cost the request's other observers
            log.exception("could not trace request %s", record.request_id)

    async def close(self) -> None:
        """Send what is queued (bounded by the export timeout) and stop the exporter's thread."""
        await asyncio.to_thread(self._processor.shutdown)

    def _span(self, name: str, trace: RequestTrace, span_id: int, parent: otel.SpanContext | None,
              kind: otel.SpanKind, attributes: dict[str, Any], start_ns: int, end_ns: int,
              failed: bool, reason: str | None) -> ReadableSpan:
        state = parent.trace_state if parent is not None else otel.TraceState()
        context = otel.SpanContext(trace.trace_id, span_id, is_remote=False, trace_flags=_SAMPLED,
                                   trace_state=state)
        status = otel.Status(otel.StatusCode.ERROR, reason) if failed else _UNSET
        return ReadableSpan(name, context, parent, self._resource, attributes, kind=kind, status=status,
                            start_time=start_ns, end_time=max(end_ns, start_ns), instrumentation_scope=self._scope)

    def _spans(self, trace: RequestTrace, record: RequestRecord, plan: Plan | None,
               config: TracingConfig) -> list[ReadableSpan]:
        start_ns = int(record.started_at * 1e9)
        end_ns = start_ns + int(record.duration_s * 1e9)
        # The host the answering attempt called (the last one, when the request was answered).
        served_host = trace.attempts[-1].server_address if trace.attempts and record.provider else None
        attributes = _server_attributes(record, plan, config, served_host)
        if record.route in IMAGE_ROUTES and record.model_asked:
            name = f"{OPERATION} {record.model_asked}"
        else:  # the HTTP conventions' server span name
            name = f"{record.method} {record.route}"
        client_parent = trace.parent if isinstance(trace.parent, otel.SpanContext) else None
        # A server span's 4xx is the client's error, not the span's (the HTTP conventions).
        server = self._span(name, trace, trace.span_id, client_parent, otel.SpanKind.SERVER, attributes,
                            start_ns, end_ns, record.status >= 500, record.error_code)
        spans = [server]
        last = len(trace.attempts) - 1
        for i, span in enumerate(trace.attempts):
            if span.index >= len(record.attempts):
                continue  # a plugin's crash: no attempt was recorded
            attempt = record.attempts[span.index]
            # A streamed answer's attempt lasts as long as the stream, which ends with the request.
            ends_ns = end_ns if (record.stream and i == last) else span.start_ns + int(attempt.latency_ms * 1e6)
            answered = attempt.status == "succeeded"
            spans.append(self._span(
                f"{OPERATION} {attempt.model}", trace, span.span_id, server.context,
                # A call to a model in this process (the local provider) is INTERNAL, per the conventions.
                otel.SpanKind.CLIENT if span.server_address else otel.SpanKind.INTERNAL,
                _attempt_attributes(attempt, span, record.usage if answered else None),
                span.start_ns, ends_ns, not answered, attempt.error_code))
        return spans


_SAMPLED = otel.TraceFlags(otel.TraceFlags.SAMPLED)
_UNSET = otel.Status(otel.StatusCode.UNSET)


def provider_name(plugin: str | None, host: str | None) -> str | None:
    """``gen_ai.provider.name`` of a provider plugin (and the host it called)."""
    if plugin == "google" and host:
        for suffix, name in GOOGLE_HOSTS:
            if host.endswith(suffix):
                return name
    return PROVIDER_NAMES.get(plugin, plugin) if plugin else None


def _usage(usage: Usage | None, out: dict[str, Any]) -> None:
    if usage is not None:
        out["gen_ai.usage.input_tokens"] = usage.input_tokens
        out["gen_ai.usage.output_tokens"] = usage.output_tokens


def _error_type(status: int | None, code: str | None) -> str:
    """``error.type``: the gateway's error code (low cardinality: ``timeout``, ``rate_limit_exceeded``),
    else the HTTP status as a string, as the HTTP conventions say."""
    return code or (str(status) if status else "_OTHER")


def _server_attributes(record: RequestRecord, plan: Plan | None, config: TracingConfig,
                       served_host: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"http.request.method": record.method, "http.route": record.route,
                           "http.response.status_code": record.status,
                           "opengateway.request_id": record.request_id}
    if record.route in IMAGE_ROUTES:
        out["gen_ai.operation.name"] = OPERATION
        out["gen_ai.output.type"] = "image"
        out["opengateway.attempts"] = len(record.attempts)
        out["opengateway.possibly_billed"] = record.possibly_billed
    if record.model_asked:
        out["gen_ai.request.model"] = record.model_asked
    if record.model:
        out["opengateway.model"] = record.model
    if record.model_served:
        out["gen_ai.response.model"] = record.model_served
    provider = provider_name(record.provider, served_host)
    if provider:
        out["gen_ai.provider.name"] = provider
    if record.region:
        out["opengateway.region"] = record.region
    if plan is not None:
        request = plan.request
        out["gen_ai.request.stream"] = bool(request.stream)
        if request.image_count != 1:  # conditionally required when not 1
            out["gen_ai.request.choice.count"] = request.image_count
        if config.include_prompt:
            # The conventions' opt-in input attribute, as a JSON string (allowed on spans).
            out["gen_ai.input.messages"] = msgspec.json.encode(
                [{"role": "user", "parts": [{"type": "text", "content": request.prompt}]}]).decode()
    if record.first_event_s is not None:
        out["gen_ai.response.time_to_first_chunk"] = record.first_event_s
    _usage(record.usage, out)
    if record.images:
        out["opengateway.images"] = record.images
    if record.possibly_billed_usd is not None:
        out["opengateway.possibly_billed_usd"] = record.possibly_billed_usd
    if record.idempotency is not None:
        out["opengateway.idempotency"] = record.idempotency
    if record.status >= 400:
        out["error.type"] = _error_type(record.status, record.error_code)
    if config.include_user_id:
        if record.identity.user_id:
            out["opengateway.user_id"] = record.identity.user_id
        if record.identity.session_id:
            out["opengateway.session_id"] = record.identity.session_id
    return out


def _attempt_attributes(attempt: Attempt, span: AttemptSpan, usage: Usage | None) -> dict[str, Any]:
    out: dict[str, Any] = {"gen_ai.operation.name": OPERATION, "gen_ai.output.type": "image",
                           "gen_ai.request.model": attempt.model,
                           "opengateway.target": attempt.target, "opengateway.region": attempt.region,
                           "opengateway.attempt.status": attempt.status,
                           # docs/retries-and-billing.md: it failed after the upstream had it all.
                           "opengateway.attempt.possibly_billed": attempt.possibly_billed}
    provider = provider_name(attempt.provider, span.server_address)
    if provider:
        out["gen_ai.provider.name"] = provider
    if span.server_address:
        out["server.address"] = span.server_address
        if span.server_port:
            out["server.port"] = span.server_port
    if attempt.http_status is not None:
        out["http.response.status_code"] = attempt.http_status
    if attempt.error_code:
        out["opengateway.attempt.error_code"] = attempt.error_code
    if attempt.status == "succeeded":
        out["gen_ai.response.model"] = attempt.model
        _usage(usage, out)
    else:
        out["error.type"] = _error_type(attempt.http_status, attempt.error_code)
    return out
