"""One trace from the registration request through the outbox, the relay and the
worker's handler to the mail, across the real relay and job code (spans recorded
in memory; the RQ job runs in-process with rq's SimpleWorker instead of a fork)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from tests.conftest import csrf_token_from, make_app
from webapp.extensions import get_db

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Recorder(SpanProcessor):
    """Hands finished spans to an in-memory exporter while a test records."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self.exporter.export([span])


_RECORDER = Recorder()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # nobody built one yet in this process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_les_recorder", False):
        provider.add_span_processor(_RECORDER)
        provider._les_recorder = True  # type: ignore[attr-defined]
    _RECORDER.exporter.clear()
    _RECORDER.active = True
    yield _RECORDER
    _RECORDER.active = False
    _RECORDER.exporter.clear()


@pytest.fixture
def traced_app(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_app(postgres_url, redis_url, MAILBOX_DIR=str(tmp_path / "mailbox"))
    yield app
    get_db(app).dispose()


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        found = by_id[parent.span_id]
        names.append(found.name)
        parent = found.parent
    return names


def _relay_pass(traced_app: Flask, connection: redis.Redis, postgres_url: str) -> None:
    """The real relay's pass: claims the outbox rows and enqueues their RQ jobs."""
    from workers.relay import Relay

    relay = Relay(get_db(traced_app), connection, postgres_url)
    assert relay.dispatch_once() >= 1
    relay.release_connection()


def _work_off(traced_app: Flask, connection: redis.Redis, outbox_worker: bool = True) -> None:
    """Run the queued jobs in-process with ``traced_app``: the production worker class
    (``OutboxWorker``, which suppresses RQ's own spans), or rq's ``SimpleWorker``."""
    from workers import OUTBOX_QUEUE, runtime
    from workers.worker import OutboxWorker

    queue = Queue(OUTBOX_QUEUE, connection=connection, serializer=JSONSerializer)
    # built before the app is handed over: its after-fork hook would drop (not close)
    # the app's pooled connections, as it must in a real forked worker
    worker_class = OutboxWorker if outbox_worker else SimpleWorker
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer)
    previous: dict[str, Any] = {"app": runtime._app, "deliverer": runtime._deliverer}
    runtime._app, runtime._deliverer = traced_app, None
    try:
        worker.work(burst=True)
    finally:
        runtime._app, runtime._deliverer = previous["app"], previous["deliverer"]


def _register_then_deliver(
    traced_app: Flask,
    event_id: int,
    redis_url: str,
    postgres_url: str,
    headers: dict[str, str] | None = None,
) -> Any:
    """Register through the app (its POST with ``headers``), then run the real relay
    pass and the worker's job for its messages; returns the POST's response."""
    # 1. the registration request (Flask + SQLAlchemy instrumentation)
    client = traced_app.test_client()
    html = client.get(f"/events/{event_id}").get_data(as_text=True)
    token = re.search(r'name="idempotency_token" type="hidden" value="([0-9a-f]+)"', html)
    assert token
    response = client.post(
        f"/events/{event_id}/register",
        headers=headers or {},
        data={
            "csrf_token": csrf_token_from(html),
            "idempotency_token": token.group(1),
            "name": "Tracy Trace",
            "email": "tracy@example.com",
        },
    )
    assert response.status_code == 303

    # 2. the relay claims the outbox rows and enqueues RQ jobs (span outbox.dispatch)
    connection = redis.Redis.from_url(redis_url)
    _relay_pass(traced_app, connection, postgres_url)

    # 3. the worker runs the real job function (span outbox.handle <Type>, then mail.send)
    _work_off(traced_app, connection, outbox_worker=False)
    return response


def test_one_trace_from_registration_to_mail(
    traced_app: Flask, recorder: Recorder, redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    from webapp.services.events import EventDetails, create_event

    event_id = create_event(
        get_db(traced_app).unit_of_work,
        EventDetails("Traced talk", "d", "Room 9", datetime.now(UTC) + timedelta(days=3), True),
        5,
    )
    recorder.exporter.clear()

    response = _register_then_deliver(traced_app, event_id, redis_url, postgres_url)
    assert list((tmp_path / "mailbox").glob("*.eml")), "the confirmation mail was written"

    spans = recorder.exporter.get_finished_spans()
    request_span = next(
        s
        for s in spans
        if s.kind == trace.SpanKind.SERVER and s.attributes.get("http.method") == "POST"
    )
    trace_id = request_span.context.trace_id
    # the request id the response (and every log line) carries is the trace id
    assert response.headers["X-Request-ID"] == format(trace_id, "032x")
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in in_trace}
    names = [s.name for s in in_trace]

    # the outbox row was written by a traced INSERT inside the request
    statements = [str(s.attributes.get("db.statement", "")) for s in in_trace]
    assert any('INSERT INTO "OutboxMessages"' in st for st in statements), statements
    dispatch = [s for s in in_trace if s.name == "outbox.dispatch"]
    handle = [s for s in in_trace if s.name == "outbox.handle RegistrationCreated"]
    mail = [s for s in in_trace if s.name == "mail.send"]
    assert dispatch and handle and mail, names

    # registration -> relay -> handler -> mail, as parent links
    assert _ancestors(dispatch[0], by_id)[-1] == request_span.name
    assert "outbox.dispatch" in _ancestors(handle[0], by_id)
    mail_chain = _ancestors(mail[0], by_id)
    assert mail_chain[0].startswith("outbox.handle") and mail_chain[-1] == request_span.name
    assert "outbox.dispatch" in mail_chain
    assert mail[0].attributes["les.mail.template"] == "confirmation"
    # the counter ran in the job's last transaction, still in the message's trace
    [counted] = [
        s for s in in_trace if 'INSERT INTO "EventStats"' in str(s.attributes.get("db.statement"))
    ]
    assert _ancestors(counted, by_id)[0] == handle[0].name
    # no personal data in span attributes
    for span in in_trace:
        assert "tracy@example.com" not in str(dict(span.attributes or {}))


def test_a_request_not_sampled_leaves_no_span_in_the_relay_or_the_worker(
    traced_app: Flask, recorder: Recorder, redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """A trace is recorded whole or not at all: the decision travels with the trace
    context stored in the outbox, so the relay and the worker record nothing for a
    request that was not sampled (here: a caller's ``traceparent`` saying so), and
    the mail still goes out with the request's id."""
    from webapp.services.events import EventDetails, create_event

    event_id = create_event(
        get_db(traced_app).unit_of_work,
        EventDetails("Quiet talk", "d", "Room 4", datetime.now(UTC) + timedelta(days=3), True),
        5,
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    recorder.exporter.clear()

    response = _register_then_deliver(
        traced_app,
        event_id,
        redis_url,
        postgres_url,
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"},
    )

    assert list((tmp_path / "mailbox").glob("*.eml")), "the confirmation mail was written"
    assert response.headers["X-Request-ID"] == trace_id  # logs can still be joined
    spans = recorder.exporter.get_finished_spans()
    assert any(s.name == "GET /events/<int:event_id>" for s in spans), "the GET was sampled"
    in_trace = sorted(s.name for s in spans if format(s.context.trace_id, "032x") == trace_id)
    assert in_trace == [], in_trace
    assert not any(s.name.startswith(("outbox.", "mail.")) for s in spans), [s.name for s in spans]


def test_beyond_the_budget_a_request_keeps_its_trace_id_through_the_outbox_unrecorded(
    traced_app: Flask,
    recorder: Recorder,
    redis_url: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the process's budget of new traces is spent, a request without a caller's
    context is not recorded and skips the Flask instrumentation, but keeps a trace id
    of its own: in ``X-Request-ID`` and in the trace context stored with its outbox
    messages, marked not sampled, so the relay and the worker record nothing for it
    either, and the mail still goes out."""
    from sqlalchemy import select

    from webapp.adapters.tables import outbox_messages
    from webapp.observability.sampling import rate_limited
    from webapp.services.events import EventDetails, create_event

    event_id = create_event(
        get_db(traced_app).unit_of_work,
        EventDetails("Busy talk", "d", "Room 7", datetime.now(UTC) + timedelta(days=3), True),
        5,
    )
    spent = rate_limited(1, clock=lambda: 0.0)  # a clock held still: no token comes back
    assert spent.budget.should_sample(None, 1, "the one new trace").decision.is_sampled()
    monkeypatch.setattr(trace.get_tracer_provider(), "sampler", spent)
    recorder.exporter.clear()

    response = _register_then_deliver(traced_app, event_id, redis_url, postgres_url)

    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and int(request_id, 16)
    stored = select(outbox_messages.c.TraceContext).where(outbox_messages.c.EventId == event_id)
    with get_db(traced_app).engine.connect() as conn:
        contexts = [json.loads(c)["traceparent"] for c in conn.execute(stored).scalars()]
    assert contexts, "the registration's messages carry its trace context"
    for traceparent in contexts:
        _, trace_id, _, flags = traceparent.split("-")
        assert trace_id == request_id and not int(flags, 16) & 1, traceparent  # not sampled
    assert list(Path(traced_app.config["MAILBOX_DIR"]).glob("*.eml")), "the mail went out"
    spans = recorder.exporter.get_finished_spans()
    assert [s.name for s in spans if format(s.context.trace_id, "032x") == request_id] == []
    assert not any(s.name.startswith(("outbox.", "mail.")) for s in spans), [s.name for s in spans]


def test_a_request_not_sampled_builds_no_database_or_redis_span_anywhere(
    traced_app: Flask,
    recorder: Recorder,
    redis_url: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sampler would drop them (their parent was not sampled), so the request, the
    relay and the worker skip building them: no statement named, no attributes
    collected, no span started under the trace by the SQLAlchemy or Redis
    instrumentation. Spans of ours still start (unrecorded), so the decision still
    travels with the message to the worker."""
    from opentelemetry.sdk.trace import Tracer

    from webapp.services.events import EventDetails, create_event

    event_id = create_event(
        get_db(traced_app).unit_of_work,
        EventDetails("Lean talk", "d", "Room 5", datetime.now(UTC) + timedelta(days=3), True),
        5,
    )
    trace_id = int("5bf92f3577b34da6a3ce929d0e0e4737", 16)
    started: list[tuple[str, trace.SpanKind]] = []
    start_span = Tracer.start_span

    def counting(self: Tracer, name: str, context: Any = None, *args: Any, **kw: Any) -> Any:
        parent = trace.get_current_span(context).get_span_context()
        if parent.trace_id == trace_id:
            kind = kw.get("kind", args[0] if args else trace.SpanKind.INTERNAL)
            started.append((name, kind))
        return start_span(self, name, context, *args, **kw)

    monkeypatch.setattr(Tracer, "start_span", counting)
    _register_then_deliver(
        traced_app,
        event_id,
        redis_url,
        postgres_url,
        headers={"traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-00"},
    )

    assert list((Path(traced_app.config["MAILBOX_DIR"])).glob("*.eml")), "the mail went out"
    names = [name for name, _ in started]
    assert "outbox.dispatch" in names and "outbox.handle RegistrationCreated" in names, names
    assert "mail.send" in names, names
    clients = [name for name, kind in started if kind == trace.SpanKind.CLIENT]
    assert clients == [], clients
    assert not [s for s in recorder.exporter.get_finished_spans() if s.context.trace_id == trace_id]


def test_under_the_budget_a_relay_pass_and_a_jobs_bookkeeping_build_no_lone_spans(
    traced_app: Flask,
    recorder: Recorder,
    redis_url: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The budget's sampler never records a database or Redis call made outside any
    span: the relay's claim and enqueue, a job's take-over and last transaction skip
    building them. A message whose trace is recorded still gets its handlers'
    spans (the provider's tracers keep the tests' sampler, which records the job's
    root span; the skipping follows the provider's sampler, here the budget's)."""
    from opentelemetry.sdk.trace import Tracer

    from webapp.observability.sampling import rate_limited
    from webapp.services import registrations
    from webapp.services.events import EventDetails, create_event

    uow = get_db(traced_app).unit_of_work
    event_id = create_event(
        uow, EventDetails("Lone calls", "d", "Room 6", datetime.now(UTC) + timedelta(days=3)), 5
    )
    registrations.register(uow, event_id, "Lou Lone", "lou@example.com")
    monkeypatch.setattr(trace.get_tracer_provider(), "sampler", rate_limited(1000))
    lone: list[str] = []
    start_span = Tracer.start_span

    def counting(self: Tracer, name: str, context: Any = None, *args: Any, **kw: Any) -> Any:
        kind = kw.get("kind", args[0] if args else trace.SpanKind.INTERNAL)
        parent = trace.get_current_span(context).get_span_context()
        if kind == trace.SpanKind.CLIENT and not parent.is_valid:
            lone.append(name)
        return start_span(self, name, context, *args, **kw)

    monkeypatch.setattr(Tracer, "start_span", counting)
    recorder.exporter.clear()
    connection = redis.Redis.from_url(redis_url)
    _relay_pass(traced_app, connection, postgres_url)
    _work_off(traced_app, connection)

    assert lone == [], lone
    spans = recorder.exporter.get_finished_spans()
    [handle] = [s for s in spans if s.name == "outbox.handle RegistrationCreated"]
    in_job = [s for s in spans if s.context.trace_id == handle.context.trace_id]
    assert any((s.attributes or {}).get("db.system") == "postgresql" for s in in_job), [
        s.name for s in in_job
    ]


def test_a_request_outside_tracing_leaves_its_calls_to_the_sampler(
    traced_app: Flask, recorder: Recorder
) -> None:
    """``/readyz`` makes no span of its own (an excluded URL): there is no unsampled
    parent to follow, so its database and Redis calls are roots the sampler decides
    (here: every one recorded), not skipped."""
    response = traced_app.test_client().get("/readyz")
    assert response.json["checks"]["database"]["ok"]  # no relay or worker runs here: 503
    systems = {
        (s.attributes or {}).get("db.system") for s in recorder.exporter.get_finished_spans()
    }
    assert {"postgresql", "redis"} <= systems, systems


def test_the_worker_traces_its_jobs_but_not_rqs_own_redis_traffic(
    traced_app: Flask, recorder: Recorder, redis_url: str, postgres_url: str
) -> None:
    """RQ's dequeues, job hashes and heartbeats would each be a trace of their own;
    the worker suppresses them, and every Redis span left belongs to a job's trace."""
    from webapp.services import registrations
    from webapp.services.events import EventDetails, create_event

    uow = get_db(traced_app).unit_of_work
    event_id = create_event(
        uow, EventDetails("Quiet queue", "d", "Room 2", datetime.now(UTC) + timedelta(days=3)), 5
    )
    registrations.register(uow, event_id, "Rae Queue", "rae@example.com")
    connection = redis.Redis.from_url(redis_url)
    _relay_pass(traced_app, connection, postgres_url)
    recorder.exporter.clear()

    _work_off(traced_app, connection)

    spans = recorder.exporter.get_finished_spans()
    jobs = {s.context.trace_id for s in spans if s.name.startswith("outbox.handle")}
    assert jobs, [s.name for s in spans]
    redis_spans = [s for s in spans if (s.attributes or {}).get("db.system") == "redis"]
    outside = sorted(s.name for s in redis_spans if s.context.trace_id not in jobs)
    assert outside == [], outside
    # and the job's own work is traced: its statements, in the message's trace
    statements = [
        str((s.attributes or {}).get("db.statement", ""))
        for s in spans
        if s.context.trace_id in jobs and (s.attributes or {}).get("db.system") == "postgresql"
    ]
    assert any('INSERT INTO "ProcessedMessages"' in st for st in statements), statements


def test_flushing_query_timings_makes_no_spans(
    traced_app: Flask, recorder: Recorder, redis_url: str
) -> None:
    """The query-timings pipeline (every second, from any thread or request) is
    telemetry about the app, not work of the app: it is not traced."""
    from sqlalchemy import text

    from webapp.adapters.query_stats import flush_query_stats, query_report

    with get_db(traced_app).engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    recorder.exporter.clear()
    flush_query_stats()
    redis_spans = [
        s.name
        for s in recorder.exporter.get_finished_spans()
        if (s.attributes or {}).get("db.system") == "redis"
    ]
    assert redis_spans == []
    # and the timings did reach Redis
    assert any(s.sql == "SELECT ?" for s in query_report(redis.Redis.from_url(redis_url)))
