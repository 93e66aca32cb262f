"""OpenTelemetry tracing: providers per process, instrumentation, and the trace
context carried through the outbox into the relay and the workers.

Exporters follow the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``,
``console``, ``none``; default ``otlp`` in production, ``none`` elsewhere),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ``OTEL_SDK_DISABLED``. Without an
exporter spans are still created, so log lines carry a trace id. Which traces are
recorded: ``webapp.observability.sampling`` (at most ``TRACES_PER_SECOND`` new ones a
second per process, each whole or not at all, unless ``OTEL_TRACES_SAMPLER`` is set).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from webapp.observability.sampling import (
    children_dropped,
    drops_lone_client_spans,
    sampler_from_environment,
)

log = logging.getLogger(__name__)

_state: dict[str, Any] = {"deferred": False, "instrumented": False, "pid": None}

#: the tracer of the relay's and workers' spans, got once: the SDK's ``get_tracer``
#: builds its scope and resets the process's warning filters on every call (19 µs, two
#: calls per outbox message). Got before this process's provider exists, it is
#: OpenTelemetry's proxy, which takes the provider's tracer on its first span.
OUTBOX_TRACER = trace.get_tracer("les.outbox")


def current_trace_context() -> str | None:
    """The active span's W3C headers as JSON, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def extract_trace_context(trace_context: str | dict[str, str] | None) -> otel_context.Context:
    """The context stored by :func:`current_trace_context` (empty context if none)."""
    if not trace_context:
        return otel_context.Context()
    try:
        carrier = json.loads(trace_context) if isinstance(trace_context, str) else trace_context
    except ValueError:
        log.warning("ignoring a malformed trace context")
        return otel_context.Context()
    return propagate.extract(carrier if isinstance(carrier, dict) else {})


@contextlib.contextmanager
def continue_trace(
    name: str,
    trace_context: str | dict[str, str] | None,
    kind: trace.SpanKind = trace.SpanKind.CONSUMER,
    attributes: dict[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span whose parent is the stored ``trace_context`` (from the outbox row or the
    job), made current for the block: the relay's ``outbox.dispatch`` and the worker's
    ``outbox.handle <Type>`` join the trace of the request that wrote the message."""
    parent = extract_trace_context(trace_context)
    with (
        OUTBOX_TRACER.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes or {}
        ) as span,
        instrumented_as(span),
    ):
        yield span


@contextlib.contextmanager
def within_span(span_context: trace.SpanContext | None) -> Iterator[None]:
    """Make the span of ``span_context`` (which may have ended: a message's, whose
    last handlers run in its job's closing transaction) the parent of the spans
    started inside; nothing changes for None."""
    if span_context is None:
        yield
        return
    span = trace.NonRecordingSpan(span_context)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        with instrumented_as(span):
            yield
    finally:
        otel_context.detach(token)


def _sampler() -> Any:
    """This process's sampler; None with tracing off (no provider of the SDK)."""
    return getattr(trace.get_tracer_provider(), "sampler", None)


def lone_calls_unrecorded() -> bool:
    """True when a database or Redis call made outside any span is never recorded
    (this process's sampler is the budget of ``sampling``, not one named by
    ``OTEL_TRACES_SAMPLER``)."""
    sampler = _sampler()
    return sampler is not None and drops_lone_client_spans(sampler)


@contextlib.contextmanager
def lone_calls_skipped() -> Iterator[None]:
    """Work outside any request or message (a relay pass, a job's take-over and its
    last transaction) builds no database or Redis spans when none could be recorded
    (:func:`lone_calls_unrecorded`); :func:`continue_trace` turns them back on for
    a message whose trace is recorded."""
    if not lone_calls_unrecorded():
        yield
        return
    with instrumentation(enabled=False):
        yield


@contextlib.contextmanager
def instrumented_as(span: trace.Span) -> Iterator[None]:
    """Within the block the SQLAlchemy and Redis instrumentations are on exactly when
    a span started under ``span`` could be recorded: off for a message not sampled
    (:func:`children_unrecorded`), on for one that is, even inside a pass or job that
    skips its lone calls (:func:`lone_calls_skipped`)."""
    with instrumentation(enabled=not children_unrecorded(span)):
        yield


def children_unrecorded(span: trace.Span) -> bool:
    """True when no span started under ``span`` can be recorded: ``span`` was not
    sampled, and this process's sampler drops every child of an unsampled span. (No
    span at all, as outside a request, is not such a parent: what starts there is a
    root, which the sampler decides.)"""
    context = span.get_span_context()
    if not context.is_valid or context.trace_flags.sampled:
        return False
    sampler = _sampler()
    return sampler is not None and children_dropped(sampler)


def with_instrumentation(enabled: bool) -> otel_context.Context:
    """The current context with the SQLAlchemy and Redis instrumentations on or off:
    both keys OpenTelemetry's ``suppress_instrumentation`` sets (the instrumentations
    look at both, so clearing one alone leaves them off)."""
    context = otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, not enabled)
    return otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY_PLAIN, not enabled, context)


@contextlib.contextmanager
def instrumentation(enabled: bool) -> Iterator[None]:
    """The SQLAlchemy and Redis instrumentations on or off for the block
    (:func:`with_instrumentation`)."""
    token = otel_context.attach(with_instrumentation(enabled))
    try:
        yield
    finally:
        otel_context.detach(token)


def skip_unrecorded_children(span: trace.Span) -> Token[otel_context.Context] | None:
    """From here, the SQLAlchemy and Redis instrumentations build no spans when none
    under ``span`` could be recorded (:func:`children_unrecorded`): a request or job
    not sampled then skips their work (statement names, attributes, contexts, spans
    the sampler drops anyway). Its trace id is still ``span``'s, in the logs and in
    the contexts it passes on, and spans of ours still start (unrecorded), so the
    trace context stored in the outbox keeps the decision. Returns the token to give
    :func:`otel_context.detach`, or None when nothing is skipped."""
    if not children_unrecorded(span):
        return None
    return otel_context.attach(with_instrumentation(False))


def defer_provider() -> None:
    """Called by the gunicorn config in the master: providers are built after fork."""
    _state["deferred"] = True


def tracing_enabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def _exporter_names(environment: str) -> list[str]:
    default = "otlp" if environment == "production" else "none"
    value = os.environ.get("OTEL_TRACES_EXPORTER", default)
    return [n.strip().lower() for n in value.split(",") if n.strip()]


def build_exporters(environment: str) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(environment):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    return exporters


def configure_tracing(
    service_name: str,
    environment: str = "development",
    exporters: list[SpanExporter] | None = None,
    force: bool = False,
) -> TracerProvider | None:
    """Build this process's tracer provider (once; again after a fork).

    Returns the provider, or None when the SDK is disabled or the provider is
    deferred to after the fork (gunicorn master with ``preload_app``).
    """
    deferred = _state["deferred"] or os.environ.get("LES_DEFER_TRACER_PROVIDER") == "1"
    if not tracing_enabled():
        return None
    # built first: a bad TRACES_PER_SECOND stops the start, in gunicorn's master too
    sampler = sampler_from_environment(os.environ)
    if deferred and not force:
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current  # this process has one (tests install their own)
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes))
    for exporter in build_exporters(environment) if exporters is None else exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _state["pid"] = os.getpid()
    return provider


def instrument_libraries() -> None:
    """Patch SQLAlchemy's ``create_engine`` and redis-py, once per process. The tracers
    are proxies until a provider exists, so this may run in a gunicorn master."""
    if _state["instrumented"] or not tracing_enabled():
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(enable_commenter=False)
    RedisInstrumentor().instrument()
    _state["instrumented"] = True


def instrument_engine(engine: Any) -> None:
    """Trace an engine created before :func:`instrument_libraries` patched
    ``create_engine`` (an engine is instrumented at most once)."""
    if not tracing_enabled() or getattr(engine, "_les_traced", False):
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter("les.sqlalchemy").create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(trace.get_tracer("opentelemetry.instrumentation.sqlalchemy"), engine, usage)
    engine._les_traced = True


#: paths the Flask instrumentation makes no span for
EXCLUDED_URLS = "healthz,readyz,metrics,static"


def instrument_flask(app: Any) -> None:
    """OpenTelemetry's Flask instrumentation, for the requests whose trace could be
    recorded; the others get a non-recording span without its work
    (``webapp.observability.request_spans``)."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from webapp.observability import request_spans

    def instrument(app: Any) -> None:
        # no SQL commenter (SQLAlchemy's is off too): it would put a new context in
        # place on every request for tags nothing reads
        FlaskInstrumentor().instrument_app(app, excluded_urls=EXCLUDED_URLS, enable_commenter=False)

    request_spans.install(app, instrument, EXCLUDED_URLS)


def flush_spans(timeout_ms: int = 2000) -> None:
    """Export the spans still queued in this process now (a process about to end with
    ``os._exit``, such as an RQ work horse, runs no atexit handlers)."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(timeout_ms)
