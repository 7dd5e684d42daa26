"""OpenTelemetry traces of the API requests, exported by OTLP/HTTP (``tracing:``; the ``otel`` extra).

Imported only when ``tracing.enabled``: the gateway runs without the OpenTelemetry packages.

A request's spans are built once it has been answered, from what its record already holds
(gateway/record.py: the status, the models, the usage, every attempt with its outcome), in the
observers' batch (gateway/observers.py), and handed to the SDK's batch processor, whose thread
sends them. While the request runs, the path only draws ids (gateway/tracing_context.py): the
server span's when it arrives, one per upstream attempt when the router starts it, and that
attempt's ``traceparent`` goes upstream. The SDK then builds the spans with exactly those ids
(``_ChosenIds``), so the upstream's own spans hang under the attempt that called it.

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
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
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
#: The google plugin reaches two APIs, each with its own well-known value (by host suffix).
GOOGLE_HOSTS = (("aiplatform.googleapis.com", "gcp.vertex_ai"), ("generativelanguage.googleapis.com", "gcp.gemini"))


class _ChosenIds(IdGenerator):
    """Hands the SDK the ids the request path drew (the one sent upstream is the span's own)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class Tracing:
    """The process's span pipeline: sampler, SDK tracer, batch processor, OTLP/HTTP exporter."""

    def __init__(self, config: TracingConfig) -> None:
        self._ids = _ChosenIds()
        self._exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers),
                                          timeout=config.export_timeout_s)
        self._processor = BatchSpanProcessor(self._exporter, schedule_delay_millis=config.batch_delay_s * 1000,
                                             export_timeout_millis=config.export_timeout_s * 1000)
        # The head decision is taken when the request arrives (its flags go upstream); the spans
        # built afterwards are those of sampled requests only, so the SDK keeps every one.
        self._provider = TracerProvider(resource=Resource.create({"service.name": config.service_name,
                                                                  "service.version": __version__}),
                                        sampler=ALWAYS_ON, id_generator=self._ids)
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("opengateway", __version__)
        # A client's sampled flag is followed; new traces are kept at sample_ratio.
        self._sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self._propagator = TraceContextTextMapPropagator()

    def begin(self, headers: Mapping[str, str]) -> RequestTrace:
        """The client's trace when its ``traceparent`` is valid (the propagator parses it, and its
        ``tracestate``, as the W3C Trace Context says), a new one otherwise."""
        context = self._propagator.extract(headers)
        parent = otel.get_current_span(context).get_span_context()
        if not parent.is_valid:
            trace_id = new_trace_id()
            sampled = self._sampler.should_sample(None, trace_id, "request").decision.is_sampled()
            return RequestTrace(trace_id, sampled)
        sampled = self._sampler.should_sample(context, parent.trace_id, "request").decision.is_sampled()
        return RequestTrace(parent.trace_id, sampled, context, parent.trace_state.to_header() or None)

    def observe(self, record: RequestRecord, request: web.Request, runtime: Runtime) -> None:
        trace = request.pop(TRACE, None)
        if trace is None or not trace.sampled:
            return
        try:
            self._spans(trace, record, request.get(PLAN), runtime.config.tracing)
        except Exception:  # a bug here must not cost the request's other observers
            log.exception("could not trace request %s", record.request_id)

    async def close(self) -> None:
        """Send what is queued (bounded by the export timeout) and stop the exporter's thread."""
        await asyncio.to_thread(self._provider.shutdown)

    def _spans(self, trace: RequestTrace, record: RequestRecord, plan: Plan | None, config: TracingConfig) -> None:
        start_ns = int(record.started_at * 1e9)
        end_ns = start_ns + int(record.duration_s * 1e9)
        # The host the answering attempt called (the last one, when the request was answered).
        served_host = trace.attempts[-1].server_address if trace.attempts and record.provider else None
        attributes = _server_attributes(record, plan, config, served_host)
        if record.route in IMAGE_ROUTES and record.model_asked:
            name = f"{OPERATION} {record.model_asked}"
        else:  # the HTTP conventions' server span name
            name = f"{record.method} {record.route}"
        ids = self._ids
        ids.trace_id, ids.span_id = trace.trace_id, trace.span_id
        server = self._tracer.start_span(name, context=trace.parent if isinstance(trace.parent, Context) else None,
                                         kind=otel.SpanKind.SERVER, attributes=attributes, start_time=start_ns)
        if record.status >= 500:  # a server span's 4xx is the client's error, not the span's
            server.set_status(otel.Status(otel.StatusCode.ERROR, record.error_code))
        under_server = otel.set_span_in_context(server)
        last = len(trace.attempts) - 1
        for i, span in enumerate(trace.attempts):
            if span.index >= len(record.attempts):
                continue  # a plugin's crash: no attempt was recorded
            attempt = record.attempts[span.index]
            # A streamed answer's attempt lasts as long as the stream, which ends with the request.
            ends_ns = end_ns if (record.stream and i == last) else span.start_ns + int(attempt.latency_ms * 1e6)
            answered = attempt.status == "succeeded"
            ids.span_id = span.span_id
            client = self._tracer.start_span(
                f"{OPERATION} {attempt.model}", context=under_server,
                # A call to a model in this process (the local provider) is INTERNAL, per the conventions.
                kind=otel.SpanKind.CLIENT if span.server_address else otel.SpanKind.INTERNAL,
                attributes=_attempt_attributes(attempt, span, record.usage if answered else None),
                start_time=span.start_ns)
            if not answered:
                client.set_status(otel.Status(otel.StatusCode.ERROR, attempt.error_code))
            client.end(end_time=max(ends_ns, span.start_ns))
        server.end(end_time=end_ns)


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
                           # The README's "Retries and billing": it failed after the upstream had it all.
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
