"""Which traces are recorded: at most ``TRACES_PER_SECOND`` new ones a second per
process, each recorded whole or not at all.

A span whose parent was recorded is recorded, and one whose parent was not is not
(OpenTelemetry's parent-based sampler), so the relay's dispatch, the worker's handler
and the mail follow the decision the request made: the trace context stored with an
outbox message carries it. Only a span with no parent (a request without a
``traceparent`` header, a job's message without a stored context) draws from the
process's budget, a token bucket refilled at ``TRACES_PER_SECOND``: at a light load
every request is traced, under load the cost of recording and exporting spans stays
bounded (a span not recorded costs little; measured in ``bench/ANALYSIS.md``).

A lone client span, a database or Redis call (or a pool's ``connect``) made outside
any request, job or span of ours (the web's cache warmer, the relay's claim query,
a metrics scrape's gauges), is not recorded and spends nothing: each would be a
trace of one span, and in a web process they came to about nine a second, more than
the budget. Their timings are in the query statistics and the metrics.

``OTEL_TRACES_SAMPLER``, when set, replaces this with one of OpenTelemetry's own
samplers (``parentbased_always_on`` records everything), with
``OTEL_TRACES_SAMPLER_ARG``. A trace not recorded still has its trace id: log lines
and ``X-Request-ID`` carry it either way.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

#: new traces a second per process when ``TRACES_PER_SECOND`` is not set
DEFAULT_TRACES_PER_SECOND = 5.0


class RateLimitingSampler(Sampler):
    """Samples at most ``per_second`` spans a second, with bursts of up to
    ``max(per_second, 1)``: a token bucket, safe across a process's threads. Meant as
    the root of a :class:`ParentBased` sampler (:func:`rate_limited`), where it
    decides for spans with no parent only."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not per_second > 0:
            raise ValueError(f"traces per second must be above 0, got {per_second!r}")
        self.per_second = float(per_second)
        self._capacity = max(self.per_second, 1.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self._capacity
        self._refilled_at = clock()
        # a child forked while another thread held the lock (an RQ work horse) would
        # wait on it forever: the child gets a lock of its own
        after_fork = weakref.WeakMethod(self._after_fork)

        def in_child() -> None:
            method = after_fork()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=in_child)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        with self._lock:
            self._refill()
            sampled = self._tokens >= 1.0
            if sampled:
                self._tokens -= 1.0
        decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        parent = get_current_span(parent_context).get_span_context()
        trace_state = parent.trace_state if parent is not None and parent.is_valid else None
        return SamplingResult(decision, attributes if sampled else None, trace_state)

    def exhausted(self) -> bool:
        """Whether a span asking now would be refused (no token left), spending nothing."""
        with self._lock:
            self._refill()
            return self._tokens < 1.0

    def _refill(self) -> None:
        """Add the tokens earned since the last refill (the caller holds the lock)."""
        now = self._clock()
        elapsed = max(now - self._refilled_at, 0.0)
        self._tokens = min(self._capacity, self._tokens + elapsed * self.per_second)
        self._refilled_at = now

    def get_description(self) -> str:
        return f"RateLimitingSampler{{{self.per_second:g}/s}}"


class NoLoneClientSpans(Sampler):
    """For spans with no parent: a client span (a call to a database or Redis made
    outside any traced operation) is dropped without asking ``root``; any other span
    (a request, a job, a span of ours) is decided by ``root``."""

    def __init__(self, root: Sampler) -> None:
        self.root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP, None, None)
        return self.root.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoLoneClientSpans{{{self.root.get_description()}}}"


class BudgetSampler(ParentBased):
    """Parent-based: a span follows its parent's decision; a root span other than a
    lone client call is sampled while the process's budget lasts
    (:func:`rate_limited`)."""

    #: a client span with no parent is never recorded (:func:`drops_lone_client_spans`)
    drops_lone_client_spans = True

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = RateLimitingSampler(per_second, clock)
        super().__init__(NoLoneClientSpans(self.budget))


def rate_limited(per_second: float, clock: Callable[[], float] = time.monotonic) -> Sampler:
    """Parent-based: a span follows its parent's decision; a root span other than a
    lone client call is sampled while the process's budget of ``per_second`` new
    traces a second lasts."""
    return BudgetSampler(per_second, clock)


def drops_lone_client_spans(sampler: Sampler) -> bool:
    """Whether ``sampler`` never records a database or Redis call made outside any
    span (:class:`BudgetSampler`): then a relay pass or a job's bookkeeping outside a
    message's trace need not build their spans. (Asking a sampler would spend its
    budget, so this is what it says of itself.)"""
    return bool(getattr(sampler, "drops_lone_client_spans", False))


def drops_children_of_unsampled(sampler: Sampler) -> bool:
    """Whether ``sampler`` drops every span whose parent, local or remote, was not
    sampled: then nothing started under such a parent can be recorded, and the
    instrumentations need not build its spans (``tracing.instrumented_as``).
    True for OpenTelemetry's parent-based samplers as configured by
    ``OTEL_TRACES_SAMPLER`` and for :func:`rate_limited`; False for a sampler that
    decides a child by itself (``always_on``, ``traceidratio``), or a parent-based one
    told to record such children."""
    if not isinstance(sampler, ParentBased):
        return False
    for remote in (False, True):
        parent = SpanContext(1, 1, is_remote=remote, trace_flags=TraceFlags(0))
        probe = set_span_in_context(NonRecordingSpan(parent))
        if sampler.should_sample(probe, 1, "probe").decision != Decision.DROP:
            return False
    return True


def surely_unrecorded(sampler: Sampler, parent: SpanContext) -> bool:
    """Whether a request's span started now under ``parent`` (an invalid context: a new
    trace) would surely not be recorded, told without spending the budget. False when
    unsure: the span is then started and the sampler decides.

    - Under a parent: the parent was not sampled, and ``sampler`` drops every child of
      an unsampled span (:func:`drops_children_of_unsampled`).
    - A new trace: :class:`BudgetSampler` has no token left, or the sampler is
      ``parentbased_always_off``. (A token may come back between this answer and the
      request's end: that request is simply not recorded.)"""
    if parent.is_valid:
        return not parent.trace_flags.sampled and children_dropped(sampler)
    if isinstance(sampler, BudgetSampler):
        return sampler.budget.exhausted()
    # OpenTelemetry's ParentBased keeps its root sampler in ``_root``; if that changes,
    # every new trace just takes the instrumented path
    return isinstance(sampler, ParentBased) and getattr(sampler, "_root", None) is ALWAYS_OFF


#: the last sampler asked about, and whether it drops every child of an unsampled span
_children_dropped: dict[str, object] = {"sampler": None, "dropped": False}


def children_dropped(sampler: Sampler) -> bool:
    """:func:`drops_children_of_unsampled`, remembered for the last sampler asked (its
    probes cost two decisions)."""
    if sampler is not _children_dropped["sampler"]:
        _children_dropped["dropped"] = drops_children_of_unsampled(sampler)
        _children_dropped["sampler"] = sampler
    return bool(_children_dropped["dropped"])


def parse_traces_per_second(value: str | None) -> float:
    """``TRACES_PER_SECOND``: a number above 0 (default 5). Anything else is a
    configuration error, reported at start-up with the value."""
    if value is None or not value.strip():
        return DEFAULT_TRACES_PER_SECOND
    try:
        per_second = float(value)
    except ValueError:
        per_second = float("nan")
    if not per_second > 0 or per_second == float("inf"):
        raise ValueError(
            f"TRACES_PER_SECOND must be a number above 0 (new traces a second per "
            f"process), got {value!r}"
        )
    return per_second


def sampler_from_environment(environ: Mapping[str, str]) -> Sampler | None:
    """The sampler this process's tracer provider gets: None when
    ``OTEL_TRACES_SAMPLER`` is set (the SDK then builds the one it names), else
    :func:`rate_limited` at ``TRACES_PER_SECOND``."""
    if environ.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    return rate_limited(parse_traces_per_second(environ.get("TRACES_PER_SECOND")))
