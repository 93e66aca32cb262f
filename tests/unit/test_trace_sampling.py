"""Which traces are recorded: at most N new traces a second per process, each one
whole or not at all (webapp.observability.sampling), on tracer providers of the
tests' own with a clock the test moves."""

from __future__ import annotations

import os
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from tests.unit.fake_clock import Clock
from webapp.observability.sampling import (
    RateLimitingSampler,
    drops_children_of_unsampled,
    drops_lone_client_spans,
    parse_traces_per_second,
    rate_limited,
    sampler_from_environment,
)


def tracer_at(per_second: float, clock: Clock) -> trace.Tracer:
    return TracerProvider(sampler=rate_limited(per_second, clock)).get_tracer("test")


def recorded(tracer: trace.Tracer, n: int) -> list[bool]:
    return [tracer.start_span(f"request {i}").is_recording() for i in range(n)]


def test_at_most_the_budget_of_new_traces_then_one_per_refill() -> None:
    clock = Clock()
    tracer = tracer_at(3, clock)
    assert recorded(tracer, 5) == [True, True, True, False, False]
    clock.now += 0.2  # 0.6 of a trace: not yet
    assert recorded(tracer, 1) == [False]
    clock.now += 0.2  # 1.2 traces' worth
    assert recorded(tracer, 2) == [True, False]


def test_a_quiet_spell_allows_one_seconds_burst_not_more() -> None:
    clock = Clock()
    tracer = tracer_at(4, clock)
    recorded(tracer, 4)
    clock.now += 3600
    assert recorded(tracer, 6) == [True] * 4 + [False] * 2


def test_a_budget_under_one_a_second_still_records_one_trace() -> None:
    clock = Clock()
    tracer = tracer_at(0.5, clock)
    assert recorded(tracer, 2) == [True, False]
    clock.now += 1.9
    assert recorded(tracer, 1) == [False]
    clock.now += 0.1
    assert recorded(tracer, 1) == [True]


def test_a_recorded_trace_stays_whole_when_the_budget_runs_out() -> None:
    clock = Clock()
    tracer = tracer_at(1, clock)
    root = tracer.start_span("POST /events/1/register")
    assert root.is_recording()
    assert not tracer.start_span("GET /").is_recording()  # the budget is spent
    with trace.use_span(root):
        child = tracer.start_span("INSERT OutboxMessages")
    assert child.is_recording()
    assert child.get_span_context().trace_id == root.get_span_context().trace_id


def test_a_trace_not_recorded_records_no_part_even_when_the_budget_refills() -> None:
    clock = Clock()
    tracer = tracer_at(1, clock)
    tracer.start_span("first")
    dropped = tracer.start_span("second")
    assert not dropped.is_recording()
    assert dropped.get_span_context().is_valid  # log lines still carry its trace id
    clock.now += 10
    with trace.use_span(dropped):
        assert not tracer.start_span("its handler").is_recording()
    assert tracer.start_span("a new request").is_recording()


@pytest.mark.parametrize("flags", [TraceFlags.SAMPLED, TraceFlags.DEFAULT])
def test_a_stored_or_incoming_context_decides_for_its_spans(flags: TraceFlags) -> None:
    """The relay and the worker continue the request's trace from the context stored
    with the outbox message: they follow its decision, whatever their own budget."""
    clock = Clock()
    tracer = tracer_at(1, clock)
    tracer.start_span("spends the budget")
    state = TraceState([("vendor", "value")])
    remote = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
    )
    context = trace.set_span_in_context(NonRecordingSpan(remote))
    span = tracer.start_span("outbox.handle RegistrationCreated", context=context)
    assert span.is_recording() is (flags == TraceFlags.SAMPLED)
    assert span.get_span_context().trace_id == 0xABC
    assert span.get_span_context().trace_state == state


def test_threads_share_one_budget() -> None:
    clock = Clock()
    sampler = RateLimitingSampler(100, clock)
    counts: list[int] = []

    def draw() -> None:
        counts.append(
            sum(sampler.should_sample(None, i, "span").decision.is_sampled() for i in range(1000))
        )

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 100


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_child_forked_while_the_lock_is_held_can_still_sample() -> None:
    """An RQ work horse is forked from a worker whose other threads trace too."""
    sampler = RateLimitingSampler(10)
    read_end, write_end = os.pipe()
    with sampler._lock:  # another thread is deciding at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: answers whether it could decide
            os.close(read_end)
            decision = sampler.should_sample(None, 1, "job").decision.is_sampled()
            os.write(write_end, b"1" if decision else b"0")
            os._exit(0)
    os.close(write_end)
    ready = threading.Event()
    answer: list[bytes] = []

    def read() -> None:
        answer.append(os.read(read_end, 1))
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    finished = ready.wait(10)
    if not finished:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(read_end)
    assert finished, "the forked child waited forever on the sampler's lock"
    assert answer == [b"1"]


def test_a_lone_database_or_redis_call_is_not_recorded_and_spends_nothing() -> None:
    """The cache warmer's queries, the relay's claim, a scrape's gauges: one-span
    traces that would take the budget from the requests."""
    clock = Clock()
    tracer = tracer_at(1, clock)
    lone = [tracer.start_span(n, kind=trace.SpanKind.CLIENT) for n in ("SELECT", "GET", "connect")]
    assert not any(span.is_recording() for span in lone)
    request = tracer.start_span("GET /", kind=trace.SpanKind.SERVER)
    assert request.is_recording()
    with trace.use_span(request):  # the same call inside a recorded request is recorded
        assert tracer.start_span("SELECT", kind=trace.SpanKind.CLIENT).is_recording()
    assert not tracer.start_span("GET /events/1", kind=trace.SpanKind.SERVER).is_recording()


def test_description_names_the_budget() -> None:
    assert (
        rate_limited(5)
        .get_description()
        .startswith("ParentBased{root:NoLoneClientSpans{RateLimitingSampler{5/s}}")
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 5.0), ("", 5.0), ("12.5", 12.5), (" 2 ", 2.0), ("0.1", 0.1)]
)
def test_traces_per_second_setting(value: str | None, expected: float) -> None:
    assert parse_traces_per_second(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "5/s"])
def test_a_bad_traces_per_second_is_refused_with_its_value(value: str) -> None:
    with pytest.raises(ValueError, match=r"TRACES_PER_SECOND must be a number above 0.*" + value):
        parse_traces_per_second(value)


def test_an_opentelemetry_sampler_named_in_the_environment_replaces_the_budget() -> None:
    assert sampler_from_environment({"OTEL_TRACES_SAMPLER": "always_off"}) is None
    built = sampler_from_environment({"TRACES_PER_SECOND": "20"})
    assert built is not None and "RateLimitingSampler{20/s}" in built.get_description()
    assert "RateLimitingSampler{5/s}" in sampler_from_environment({}).get_description()


@pytest.mark.parametrize(
    ("sampler", "dropped"),
    [
        (rate_limited(5), True),
        (ParentBased(ALWAYS_ON), True),  # OTEL_TRACES_SAMPLER=parentbased_always_on
        (ParentBased(TraceIdRatioBased(0.5)), True),
        (ParentBased(ALWAYS_OFF), True),
        (ALWAYS_ON, False),  # decides every span by itself: it records such children
        (TraceIdRatioBased(1.0), False),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON), False),
        (ParentBased(ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON), False),
    ],
)
def test_which_samplers_drop_every_child_of_an_unsampled_span(
    sampler: Sampler, dropped: bool
) -> None:
    """The instrumentations skip building a span only where the sampler would drop
    it: a sampler that would record a child of an unsampled span keeps them all."""
    assert drops_children_of_unsampled(sampler) is dropped
    # as the tracer decides: some child of an unsampled span recorded, or none
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    recorded = []
    for remote in (False, True):
        parent = SpanContext(7, 9, is_remote=remote, trace_flags=TraceFlags(0))
        child = tracer.start_span("child", trace.set_span_in_context(NonRecordingSpan(parent)))
        recorded.append(child.is_recording())
    assert any(recorded) is not dropped


def test_only_the_budget_says_it_drops_every_lone_client_span() -> None:
    """What it says of itself is what it does (asking a sampler would spend its
    budget); OpenTelemetry's samplers record lone calls, so they keep their spans."""
    sampler = rate_limited(1)  # a budget of one trace
    assert drops_lone_client_spans(sampler)
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    spans = [tracer.start_span("SELECT", kind=trace.SpanKind.CLIENT) for _ in range(50)]
    assert not any(s.is_recording() for s in spans)
    assert tracer.start_span("GET /").is_recording()  # and spent nothing on them
    for other in (ParentBased(ALWAYS_ON), ParentBased(TraceIdRatioBased(0.5)), ALWAYS_ON):
        assert not drops_lone_client_spans(other)
