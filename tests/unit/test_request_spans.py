"""A request whose trace will not be recorded skips OpenTelemetry's Flask
instrumentation but keeps a trace id (webapp.observability.request_spans): on a
small Flask app instrumented as the service's is, with a tracer provider of the
test's own, the budget's sampler and a clock the test holds still."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, request
from opentelemetry import baggage, trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

from tests.unit.fake_clock import Clock
from webapp.observability import request_spans
from webapp.observability.sampling import rate_limited

EXCLUDED = "healthz,static"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


class Traced:
    """An app, its provider and what the provider's spans recorded."""

    def __init__(self, sampler: Sampler) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.app = Flask("request-spans-test")

        @self.app.get("/events/<int:event_id>")
        def event(event_id: int) -> Any:
            context = trace.get_current_span().get_span_context()
            return jsonify(
                trace_id=format(context.trace_id, "032x"),
                valid=context.is_valid,
                sampled=context.trace_flags.sampled,
                instrumented="opentelemetry-flask.span_key" in request.environ,
                baggage=dict(baggage.get_all()),
            )

        self.app.add_url_rule("/healthz", "healthz", event, defaults={"event_id": 0})

        def instrument(app: Flask) -> None:
            FlaskInstrumentor().instrument_app(
                app, tracer_provider=self.provider, excluded_urls=EXCLUDED
            )

        request_spans.install(self.app, instrument, EXCLUDED, provider=lambda: self.provider)

    def get(self, path: str = "/events/7", **headers: str) -> dict[str, Any]:
        response = self.app.test_client().get(path, headers=headers)
        assert response.status_code == 200
        return response.get_json()  # type: ignore[no-any-return]

    def server_spans(self) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]


@pytest.fixture
def budget_of_two() -> Traced:
    return Traced(rate_limited(2, Clock()))  # a clock held still: no token comes back


def test_the_budget_is_spent_once_per_recorded_request_then_requests_skip_the_instrumentation(
    budget_of_two: Traced,
) -> None:
    seen = [budget_of_two.get() for _ in range(4)]

    assert [s["sampled"] for s in seen] == [True, True, False, False]
    assert [s["instrumented"] for s in seen] == [True, True, False, False]
    spans = budget_of_two.server_spans()
    assert [s.attributes["http.route"] for s in spans] == ["/events/<int:event_id>"] * 2
    # a request not recorded still has a trace id of its own (X-Request-ID, logs, outbox)
    ids = [s["trace_id"] for s in seen]
    assert all(s["valid"] for s in seen) and len(set(ids)) == 4
    assert ids[:2] == [format(s.context.trace_id, "032x") for s in spans]


def test_a_caller_that_sampled_its_trace_is_recorded_when_the_budget_is_spent(
    budget_of_two: Traced,
) -> None:
    budget_of_two.get(), budget_of_two.get()  # the budget is spent

    seen = budget_of_two.get(traceparent=f"00-{PARENT_TRACE}-{PARENT_SPAN}-01")

    assert seen["sampled"] and seen["instrumented"] and seen["trace_id"] == PARENT_TRACE
    [span] = [s for s in budget_of_two.server_spans() if s.parent is not None]
    assert format(span.parent.span_id, "016x") == PARENT_SPAN
    assert format(span.context.trace_id, "032x") == PARENT_TRACE


def test_a_caller_that_did_not_sample_keeps_its_trace_id_and_baggage_without_the_instrumentation(
    budget_of_two: Traced,
) -> None:
    seen = budget_of_two.get(
        traceparent=f"00-{PARENT_TRACE}-{PARENT_SPAN}-00", baggage="tenant=acme"
    )

    assert seen["trace_id"] == PARENT_TRACE and not seen["sampled"]
    assert not seen["instrumented"]
    assert seen["baggage"] == {"tenant": "acme"}
    assert budget_of_two.server_spans() == []
    # the budget is untouched: the next two new traces are recorded
    assert [budget_of_two.get()["sampled"] for _ in range(3)] == [True, True, False]


def test_an_excluded_path_has_no_span_with_or_without_budget(budget_of_two: Traced) -> None:
    budget_of_two.get(), budget_of_two.get()  # the budget is spent

    seen = budget_of_two.get("/healthz")

    assert not seen["valid"] and not seen["instrumented"]


@pytest.mark.parametrize(
    ("sampler", "recorded", "instrumented"),
    [
        (ParentBased(ALWAYS_OFF), False, False),
        (ParentBased(ALWAYS_ON), True, True),
        (ALWAYS_OFF, False, True),
    ],
)
def test_samplers_named_in_the_environment_decide_as_before(
    sampler: Sampler, recorded: bool, instrumented: bool
) -> None:
    """``parentbased_always_off`` is known to record nothing new: its requests skip the
    instrumentation. ``always_off`` is not parent-based, so its requests are left to
    it (unrecorded, through the instrumentation)."""
    seen = Traced(sampler).get()

    assert seen["valid"] and seen["sampled"] is recorded
    assert seen["instrumented"] is instrumented
