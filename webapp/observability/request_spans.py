"""A request whose trace will not be recorded skips OpenTelemetry's Flask
instrumentation and gets only what it needs of a span: its trace id.

The Flask instrumentation does its work before it learns the sampler's decision: it
collects the request's attributes twice (the WSGI environ read and formatted), asks
for the full URL three times to match it against the excluded URLs, starts the span
with those attributes, and wraps ``start_response``. For a request that is not
recorded (under load, nearly all of them: the budget is ``TRACES_PER_SECOND`` new
traces a second per process), all of it is thrown away. It was about a fifth of the
instructions of a cached page and a twelfth of a registration flow.

So the app's WSGI entry first asks whether the request's span could be recorded at
all, without spending the budget (:func:`sampling.surely_unrecorded`):

- with a ``traceparent`` header, the remote parent decides (parent-based samplers);
- without one, the budget has no token left (or the sampler is
  ``parentbased_always_off``).

When it surely could not, the request runs without the instrumentation, under a
non-recording span made as the SDK makes one: a new span id, the parent's trace id
or a new one, not sampled. So its trace id is still in ``X-Request-ID`` and the log
lines, and the trace context stored in the outbox still carries the decision to the
relay and the worker. Every other request (recorded, unsure, a path the
instrumentation excludes, a span already current) takes the instrumented path,
unchanged. (The instrumentation's HTTP metrics are not recorded for the plain path:
no meter provider is configured, so they go nowhere on either.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.wsgi import wsgi_getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.util.http import parse_excluded_urls

from webapp.observability.sampling import surely_unrecorded

#: set in the environ of a request that runs without the Flask instrumentation
UNRECORDED_KEY = "les.unrecorded"
#: headers a trace context or baggage arrives in (``traceparent``, ``tracestate``, ``baggage``)
_PROPAGATION_HEADERS = ("HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE")
_RANDOM_TRACE_ID = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def install(
    app: Flask,
    instrument: Callable[[Flask], None],
    excluded_urls: str,
    provider: Callable[[], object] = trace.get_tracer_provider,
) -> None:
    """Run ``instrument(app)`` (the Flask instrumentation, told to exclude
    ``excluded_urls``) for the requests whose trace could be recorded only:
    ``app.wsgi_app`` chooses, per request, the instrumented entry or the plain one, and
    the instrumentation's request hooks step aside for a request on the plain one.
    ``provider`` returns the tracer provider whose sampler and id generator decide
    (the process's, looked up per request: a gunicorn worker builds its own after
    the fork)."""
    plain = app.wsgi_app
    before = list(app.before_request_funcs.get(None, ()))
    teardown = list(app.teardown_request_funcs.get(None, ()))
    instrument(app)
    instrumented = app.wsgi_app
    if instrumented is plain:  # nothing instrumented (tracing off)
        return
    for hooks, earlier in (
        (app.before_request_funcs.setdefault(None, []), before),
        (app.teardown_request_funcs.setdefault(None, []), teardown),
    ):
        hooks[:] = [hook if hook in earlier else _on_recorded_only(hook) for hook in hooks]
    dispatch = _Dispatch(plain, instrumented, excluded_urls, provider)
    app.wsgi_app = dispatch  # type: ignore[method-assign]


def _on_recorded_only(hook: Callable[..., Any]) -> Callable[..., Any]:
    def hook_unless_unrecorded(*args: Any) -> Any:
        if request.environ.get(UNRECORDED_KEY):
            return None
        return hook(*args)

    hook_unless_unrecorded.__wrapped__ = hook  # type: ignore[attr-defined]
    return hook_unless_unrecorded


class _Dispatch:
    """The app's WSGI entry: the plain one under a non-recording span when the request
    surely is not recorded, else the instrumented one."""

    def __init__(
        self,
        plain: WsgiApp,
        instrumented: WsgiApp,
        excluded_urls: str,
        provider: Callable[[], object],
    ) -> None:
        self.plain = plain
        self.instrumented = instrumented
        self.provider = provider
        #: matched against the path (the instrumentation matches the whole URL): such a
        #: request goes to the instrumentation, which leaves it without a span
        self.excluded = parse_excluded_urls(excluded_urls)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        token = self._unrecorded(environ)
        if token is None:
            return self.instrumented(environ, start_response)
        environ[UNRECORDED_KEY] = True
        try:
            return self.plain(environ, start_response)
        finally:
            otel_context.detach(token)

    def _unrecorded(self, environ: dict[str, Any]) -> object | None:
        """Attach a non-recording span for this request and return the token, or None
        when the request takes the instrumented path."""
        if trace.get_current_span() is not trace.INVALID_SPAN:
            return None  # inside a span already: the instrumentation makes a child
        if self.excluded.url_disabled(environ.get("PATH_INFO", "")):
            return None
        provider = self.provider()
        sampler = getattr(provider, "sampler", None)
        ids = getattr(provider, "id_generator", None)
        if sampler is None or ids is None:
            return None
        if any(header in environ for header in _PROPAGATION_HEADERS):
            context = propagate.extract(environ, getter=wsgi_getter)
        else:
            context = Context()
        parent = trace.get_current_span(context).get_span_context()
        if not surely_unrecorded(sampler, parent):
            return None
        if parent.is_valid:  # as the SDK's tracer makes a span it does not record
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
            trace_state = parent.trace_state
        else:
            trace_id, trace_state = ids.generate_trace_id(), None
            random_id = ids.is_trace_id_random()
        flags = TraceFlags(_RANDOM_TRACE_ID if random_id else TraceFlags.DEFAULT)
        span = NonRecordingSpan(
            SpanContext(
                trace_id,
                ids.generate_span_id(),
                is_remote=False,
                trace_flags=flags,
                trace_state=trace_state,
            )
        )
        return otel_context.attach(trace.set_span_in_context(span, context))
