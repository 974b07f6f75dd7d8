"""OpenTelemetry tracing: the SDK, an OTLP/HTTP (protobuf) exporter, and the daemon's spans.

Imported only when tracing is on (`angosd.observability.tracing_settings.tracing_enabled`).
`Tracing` owns its own `TracerProvider` (the SDK's global provider is never set) with a
parent-based ratio sampler and a batch processor, whose exporting thread sends the spans.

Spans (names and attributes; never a header, credential or query string):

- ``<METHOD> <action>`` (server): one per request, parented by the caller's W3C
  ``traceparent`` when it sent one; ``angosd.action``, ``angosd.repository`` (the
  namespace), ``http.request.method``, ``url.path``, ``http.response.status_code``,
  ``angosd.identity.kind`` (``basic``, ``oidc``, ``certificate``, ``anonymous`` or ``none``);
- ``authenticate`` and ``authorize`` (policy evaluation, authorization webhooks included);
- ``storage.<operation>`` (``storage.read``, ``storage.open_append``...) with ``angosd.storage.key``;
- ``<purpose> <METHOD>`` (client) for outgoing requests: ``upstream``, ``s3``, ``webhook``,
  ``oidc``; each carries a ``traceparent`` header naming it, so the receiver continues the trace.

Child spans are made only under a recording span: work outside requests (garbage collection,
prefetch) and unsampled requests cost a context lookup and nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from angosd.config import TracingConfig
from angosd.observability.tracing_settings import sampling_ratio, traces_url

__all__ = ["OutboundSpans", "RequestTrace", "Tracing"]

_PROPAGATOR = TraceContextTextMapPropagator()


class RequestTrace:
    """The span of one request. `activate` makes it the parent of the spans started after it
    in the calling coroutine (Twisted runs each coroutine in its own context)."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        context = span.get_span_context()
        self.trace_id = format(context.trace_id, "032x")
        self.sampled = context.trace_flags.sampled

    def activate(self) -> None:
        otel_context.attach(self.context)

    def end(self, attributes: Mapping[str, Any], error: bool) -> None:
        """Set the final attributes and end the span (once)."""
        if self.span.is_recording():
            self.span.set_attributes(dict(attributes))
            if error:
                self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


def _current_recording() -> bool:
    return trace.get_current_span().is_recording()


class Tracing:
    """The daemon's tracer. ``exporter`` defaults to OTLP/HTTP at the configured endpoint (or
    where the ``OTEL_EXPORTER_OTLP_*`` variables say)."""

    def __init__(self, config: TracingConfig, environ: Mapping[str, str] | None = None,
                 exporter: SpanExporter | None = None) -> None:
        environ = os.environ if environ is None else environ
        attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": config.service_name}
        self.ratio = sampling_ratio(config, environ)
        self.provider = TracerProvider(resource=Resource.create(attributes),
                                       sampler=ParentBased(TraceIdRatioBased(self.ratio)))
        self.exporter = exporter if exporter is not None else OTLPSpanExporter(endpoint=traces_url(config))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("angosd")

    def start_request(self, header: Callable[[str], str | None], name: str,
                      attributes: Mapping[str, Any]) -> RequestTrace:
        """The server span of a request whose headers ``header`` reads (``traceparent``,
        ``tracestate``)."""
        carrier = {key: value for key in ("traceparent", "tracestate") if (value := header(key)) is not None}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))
        return RequestTrace(span)

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[None]:
        """A child of the current span around the block, current inside it (nothing when no
        span is recording)."""
        if not _current_recording():
            yield
            return
        span = self.tracer.start_span(name, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def around(self, name: str, call: Callable[[], Any], attributes: Mapping[str, Any],
               parent: bool = False) -> Any:
        """``call()`` inside a child span that ends when its result (a Deferred or not) is ready;
        with ``parent`` the span is current while ``call`` starts (the parent of the S3
        requests it makes)."""
        if not _current_recording():
            return call()
        span = self.tracer.start_span(name, attributes=attributes)
        try:
            if parent:
                token = otel_context.attach(trace.set_span_in_context(span))
                try:
                    result = call()
                finally:
                    otel_context.detach(token)
            else:
                result = call()
        except BaseException as exc:
            _fail(span, exc)
            span.end()
            raise
        if isinstance(result, Deferred):
            return result.addBoth(_ended, span)
        span.end()
        return result

    def outbound(self, purpose: str) -> OutboundSpans:
        """The hook of an outgoing HTTP client (`angosd.outbound.client.make_client`)."""
        return OutboundSpans(self, purpose)

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the spans ended so far (blocks: call it from a thread or at exit)."""
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Export what is left and stop the exporting thread (blocks)."""
        self.provider.shutdown()


def _fail(span: trace.Span, error: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def _ended(result: Any, span: trace.Span) -> Any:
    from twisted.python.failure import Failure

    if isinstance(result, Failure):
        _fail(span, result.value)
    span.end()
    return result


class OutboundSpans:
    """A client span around each outgoing request, whose ``traceparent`` it sends."""

    def __init__(self, tracing: Tracing, purpose: str) -> None:
        self._tracing = tracing
        self.purpose = purpose

    def request(self, agent: Any, method: bytes, uri: bytes, headers: Headers | None,
                body: Any) -> Deferred[Any]:
        if not _current_recording():
            return agent.request(method, uri, headers, body)
        parts = urlsplit(uri.decode("ascii", "replace"))
        verb = method.decode("ascii", "replace")
        span = self._tracing.tracer.start_span(
            f"{self.purpose} {verb}", kind=SpanKind.CLIENT,
            attributes={"http.request.method": verb, "server.address": parts.hostname or "",
                        "url.path": parts.path, "angosd.outbound": self.purpose})
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        headers = headers.copy() if headers is not None else Headers()
        for name, value in carrier.items():
            headers.setRawHeaders(name, [value])
        try:
            sent = agent.request(method, uri, headers, body)
        except BaseException as exc:
            _fail(span, exc)
            span.end()
            raise

        def answered(response: Any) -> Any:
            code = getattr(response, "code", None)
            if code is not None:
                span.set_attribute("http.response.status_code", int(code))
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            return response

        def failed(failure: Any) -> Any:
            _fail(span, failure.value)
            span.end()
            return failure

        return sent.addCallbacks(answered, failed)
