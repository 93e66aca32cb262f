"""The async handlers run from the outbox (in-process Deliverer, both backends, a
real SMTP server on loopback): mails, counters, idempotency, retries, dead letters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event as sa_event
from sqlalchemy import select, update

from tests.conftest import make_app
from tests.integration.outbox_support import SmtpSink, body
from webapp.adapters.mail import make_mailer, message_id_for
from webapp.adapters.tables import event_stats, outbox_attempts, outbox_messages
from webapp.domain.messages import RegistrationCreated
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import messagebus
from webapp.services import registrations as registration_service
from webapp.services.delivery import BACKOFF_JITTER, Deliverer
from webapp.services.status_links import read_token

o = outbox_messages.c


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def mail_app(db_url: str, redis_url: str, smtp: SmtpSink) -> Iterator[Flask]:
    app = make_app(db_url, redis_url, OUTBOX_RETRY_DELAY_SECONDS=2.0, **smtp.config())
    yield app
    get_db(app).dispose()


def deliverer(app: Flask) -> Deliverer:
    return Deliverer(get_db(app), make_mailer(app.config), app.config, "test-worker")


def new_event(app: Flask, capacity: int, title: str = "Async Conf") -> int:
    details = event_service.EventDetails(
        title=title,
        description="d",
        venue="Hall 9",
        start_date=datetime.now(UTC) + timedelta(days=3),
    )
    return event_service.create_event(get_db(app).unit_of_work, details, capacity)


def register(app: Flask, event_id: int, who: str) -> registration_service.RegistrationOutcome:
    return registration_service.register(
        get_db(app).unit_of_work, event_id, who.title(), f"{who}@example.test"
    )


def outbox(app: Flask, type_name: str | None = None) -> list[dict[str, Any]]:
    stmt = select(outbox_messages).order_by(o.CreatedAt)
    if type_name:
        stmt = stmt.where(o.Type == type_name)
    with get_db(app).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def attempts(app: Flask, message_id: uuid.UUID) -> list[dict[str, Any]]:
    stmt = (
        select(outbox_attempts)
        .where(outbox_attempts.c.MessageId == message_id)
        .order_by(outbox_attempts.c.Id)
    )
    with get_db(app).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def stats(app: Flask, event_id: int) -> dict[str, Any] | None:
    with get_db(app).engine.connect() as conn:
        row = conn.execute(select(event_stats).where(event_stats.c.EventId == event_id)).first()
    return dict(row._mapping) if row else None


def test_confirmation_mail_with_status_link_and_counters(mail_app: Flask, smtp: SmtpSink) -> None:
    event_id = new_event(mail_app, capacity=1)
    seat = register(mail_app, event_id, "ada")
    waiting = register(mail_app, event_id, "bob")
    work = deliverer(mail_app)
    outcomes = [work.process(row["Id"]).status for row in outbox(mail_app)]
    assert outcomes == ["processed", "processed"]

    [confirmed] = smtp.to("ada@example.test")
    assert "You're registered: Async Conf" in confirmed["Subject"]
    text = body(confirmed, "plain")
    assert "is confirmed" in text and "Hall 9" in text
    link = text.split("See or cancel your registration: ")[1].split()[0]
    assert link.startswith("http://localhost/registrations/")
    token = link.rsplit("/", 1)[1]
    assert read_token("test-secret", token, 1) == seat.registration_id
    assert f'href="{link}"' in body(confirmed, "html")

    [waitlisted] = smtp.to("bob@example.test")
    assert "waitlist" in waitlisted["Subject"]
    assert "at position 1" in body(waitlisted, "plain")
    for part in ("plain", "html"):
        assert "within 10 places of a seat, when you" in " ".join(body(waitlisted, part).split())
    assert waiting.status == "Waitlisted"

    rows = outbox(mail_app)
    assert all(r["ProcessedAt"] is not None and r["LockedUntil"] is None for r in rows)
    assert confirmed["Message-ID"] == message_id_for(
        f"{rows[0]['Id']}/confirmation", mail_app.config["MAIL_FROM"]
    )
    assert [a["Succeeded"] for a in attempts(mail_app, rows[0]["Id"])] == [True]
    counters = stats(mail_app, event_id)
    assert counters is not None
    assert (counters["Registrations"], counters["Waitlisted"]) == (2, 1)


def test_mails_are_counted_by_kind_once_sent(mail_app: Flask, smtp: SmtpSink) -> None:
    """``les_mails_sent_total{template}`` (the Business dashboard's "Mails sent by
    kind"): a mail the server refused is not counted."""
    from prometheus_client import REGISTRY

    def sent(template: str) -> float:
        value = REGISTRY.get_sample_value("les_mails_sent_total", {"template": template})
        return value or 0.0

    before = {t: sent(t) for t in ("confirmation", "promotion", "waitlist_position")}
    event_id = new_event(mail_app, capacity=1)
    seat = register(mail_app, event_id, "cy")
    register(mail_app, event_id, "di")
    register(mail_app, event_id, "ed")
    work = deliverer(mail_app)
    smtp.reject = True
    assert {work.process(row["Id"]).status for row in outbox(mail_app)} == {"retry"}
    smtp.reject = False
    handle_pending(mail_app)
    registration_service.cancel(get_db(mail_app).unit_of_work, seat.registration_id)
    handle_pending(mail_app)
    after = {t: sent(t) - before[t] for t in before}
    assert after == {"confirmation": 3, "promotion": 1, "waitlist_position": 1}


def test_a_redelivered_message_sends_nothing_twice(mail_app: Flask, smtp: SmtpSink) -> None:
    event_id = new_event(mail_app, capacity=5)
    register(mail_app, event_id, "cleo")
    [row] = outbox(mail_app)
    work = deliverer(mail_app)
    assert work.process(row["Id"]).status == "processed"
    assert work.process(row["Id"]).status == "skipped"
    # even if the row were made pending again, the inbox remembers each handler
    with get_db(mail_app).engine.begin() as conn:
        conn.execute(update(outbox_messages).values(ProcessedAt=None))
    assert work.process(row["Id"]).status == "processed"
    assert len(smtp.to("cleo@example.test")) == 1
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 1


def test_one_job_of_several_messages_records_each_on_its_own(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    """The relay puts several fresh messages in one job under load: each is taken
    over, handled and recorded as if alone. A failing one is retried by itself; the
    others are processed, in one closing transaction; a handled one is skipped."""
    event_id = new_event(mail_app, capacity=10)
    for who in ("eve", "finn", "gus", "hal"):
        register(mail_app, event_id, who)
    rows = outbox(mail_app)
    work = deliverer(mail_app)
    assert work.process(rows[3]["Id"]).status == "processed"  # hal: handled already
    smtp.reject_to = {"finn@example.test"}
    gone = uuid.uuid4()

    outcomes = work.process_many([r["Id"] for r in rows] + [gone])

    assert [(x.status, x.message_type) for x in outcomes] == [
        ("processed", "RegistrationCreated"),
        ("retry", "RegistrationCreated"),
        ("processed", "RegistrationCreated"),
        ("skipped", "RegistrationCreated"),
        ("missing", None),
    ]
    assert "SMTPDataError" in (outcomes[1].error or "")
    after = {r["Id"]: r for r in outbox(mail_app)}
    # taken by a worker: dispatched, even if the relay never marked it (a redelivery)
    assert all(r["DispatchedAt"] is not None for r in after.values())
    for row in (rows[0], rows[2]):
        assert after[row["Id"]]["ProcessedAt"] is not None
        assert after[row["Id"]]["LockedBy"] is None
        assert [a["Succeeded"] for a in attempts(mail_app, row["Id"])] == [True]
    failed = after[rows[1]["Id"]]
    assert failed["ProcessedAt"] is None and failed["RetryCount"] == 1
    assert failed["NextRetryAt"] is not None and failed["LockedBy"] is None
    assert [a["ErrorType"] for a in attempts(mail_app, rows[1]["Id"])] == ["SMTPDataError"]
    assert [a["Succeeded"] for a in attempts(mail_app, rows[3]["Id"])] == [True]  # not rerun
    for who in ("eve", "gus", "hal"):
        assert len(smtp.to(f"{who}@example.test")) == 1
    assert smtp.to("finn@example.test") == []
    counters = stats(mail_app, event_id)
    # finn's popularity count ran (its own handler, its own transaction): on the
    # retry only the mail is sent again
    assert counters is not None and counters["Registrations"] == 4

    smtp.reject_to = set()
    assert work.process(rows[1]["Id"]).status == "processed"
    assert len(smtp.to("finn@example.test")) == 1
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 4


def test_a_failed_handler_leaves_no_claim_and_counts_once_on_the_retry(
    mail_app: Flask, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter claims its inbox row before it writes: when it fails (in the job's
    last transaction, then again on its own), the claim rolls back with its writes,
    so the retry counts the registration, once."""
    from webapp.services import async_handlers

    event_id = new_event(mail_app, capacity=5)
    register(mail_app, event_id, "ivy")
    [row] = outbox(mail_app)
    increment = async_handlers._increment_stats
    failures: list[int] = []

    def fail_twice(*args: Any) -> None:
        increment(*args)  # written, then undone by the failure
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("counter store unavailable")

    monkeypatch.setattr(async_handlers, "_increment_stats", fail_twice)
    work = deliverer(mail_app)
    assert work.process(row["Id"]).status == "retry"
    assert stats(mail_app, event_id) is None
    assert len(smtp.to("ivy@example.test")) == 1  # the mail's own transaction committed
    assert [a["ErrorType"] for a in attempts(mail_app, row["Id"])] == ["RuntimeError"]
    with get_db(mail_app).engine.begin() as conn:  # due again now
        conn.execute(update(outbox_messages).values(NextRetryAt=None))
    assert work.process(row["Id"]).status == "processed"
    assert work.process(row["Id"]).status == "skipped"
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 1
    assert len(smtp.to("ivy@example.test")) == 1


def test_the_counters_commit_with_the_jobs_mark_in_one_transaction(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    """A job's counters need no transaction each: three registrations' messages take
    five commits (taking them over, a mail each, then the counters, attempt rows and
    marks together), not eight, and each is counted once."""
    event_id = new_event(mail_app, capacity=5)
    for who in ("ada", "bea", "cyd"):
        register(mail_app, event_id, who)
    commits: list[int] = []
    outcomes = one_job_listening(mail_app, "commit", lambda _conn: commits.append(1))
    assert [o.status for o in outcomes] == ["processed"] * 3
    assert len(commits) == 1 + 3 + 1
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 3
    assert all(len(smtp.to(f"{w}@example.test")) == 1 for w in ("ada", "bea", "cyd"))


def test_a_counter_failing_in_the_jobs_last_transaction_runs_again_on_its_own(
    mail_app: Flask, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One counter that fails in the job's last transaction rolls back the others and
    the marks with it; each then runs on its own, and the job's messages are processed
    and counted once, with one mail each."""
    from webapp.services import async_handlers

    event_id = new_event(mail_app, capacity=5)
    for who in ("dee", "eli", "fay"):
        register(mail_app, event_id, who)
    increment = async_handlers._increment_stats
    failures: list[int] = []

    def fail_once(*args: Any) -> None:
        increment(*args)
        if not failures:
            failures.append(1)
            raise RuntimeError("counter store unavailable")

    monkeypatch.setattr(async_handlers, "_increment_stats", fail_once)
    outcomes = deliverer(mail_app).process_many([r["Id"] for r in outbox(mail_app)])
    assert [o.status for o in outcomes] == ["processed"] * 3
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 3
    assert all(len(smtp.to(f"{w}@example.test")) == 1 for w in ("dee", "eli", "fay"))
    for row in outbox(mail_app):
        assert [a["Succeeded"] for a in attempts(mail_app, row["Id"])] == [True]


def test_a_database_only_handler_cannot_send_mail() -> None:
    """It runs in the transaction that marks its message processed: a mail sent there
    would be sent again if that transaction failed."""
    from webapp.services.delivery import _NoMail

    with pytest.raises(RuntimeError, match="sends nothing"):
        _NoMail().send("a@example.test", "confirmation", {}, "key")
    with pytest.raises(ValueError, match="commits with its message"):
        messagebus.handles(
            RegistrationCreated, asynchronous=True, checkpoints=True, database_only=True
        )


@pytest.mark.postgres
def test_a_message_another_worker_marks_first_is_not_counted_twice(
    postgres_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    """Two workers on one message (a lease expired meanwhile): the second marks it
    processed, with its count, while the first is about to; the first's mark waits on
    the row, finds it processed, and runs no counter."""
    app = make_app(postgres_url, redis_url, **smtp.config())
    try:
        event_id = new_event(app, capacity=5)
        register(app, event_id, "gil")
        [row] = outbox(app)
        raced: list[str] = []

        def other_worker_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if not raced and statement.startswith('UPDATE "OutboxMessages" SET "ProcessedAt"'):
                raced.append("racing")  # the other worker's own mark passes by
                raced[0] = deliverer(app).process(row["Id"]).status

        [outcome] = one_job_listening(app, "before_cursor_execute", other_worker_first)
        assert raced == ["processed"]
        assert outcome.status == "skipped"
        counters = stats(app, event_id)
        assert counters is not None and counters["Registrations"] == 1
        assert len(smtp.to("gil@example.test")) == 1
    finally:
        get_db(app).dispose()


@pytest.mark.postgres
def test_two_jobs_take_their_counters_rows_in_the_same_order(
    postgres_url: str, redis_url: str, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """Two jobs hold messages of the same two events in opposite orders. Each takes
    its counters' rows in the order of the events, so the second waits for the first
    instead of deadlocking with it: the first job, holding its first counter's row,
    goes on only once the second job is writing its own first counter."""
    import threading

    app = make_app(postgres_url, redis_url, **smtp.config())
    try:
        events = [new_event(app, capacity=5, title=f"Order {n}") for n in (1, 2)]
        for n, event_id in enumerate(events * 2):
            register(app, event_id, f"ord{n}")
        ids: dict[int, list[uuid.UUID]] = {e: [] for e in events}
        for row in outbox(app):
            ids[json.loads(row["Data"])["event_id"]].append(row["Id"])
        jobs = {
            "first": [ids[events[1]][0], ids[events[0]][0]],
            "second": [ids[events[0]][1], ids[events[1]][1]],
        }
        outcomes: dict[str, list[str]] = {}

        def run(name: str) -> None:
            outcomes[name] = [o.status for o in deliverer(app).process_many(jobs[name])]

        second = threading.Thread(target=run, args=("second",), name="second")
        second_writes = threading.Event()
        counter = 'INSERT INTO "EventStats"'

        def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith(counter) and threading.current_thread() is second:
                second_writes.set()

        def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith(counter) and not second.is_alive() and not outcomes:
                second.start()  # the first job holds its first counter's row
                assert second_writes.wait(timeout=20)
                time.sleep(0.3)  # its statement reaches the server, and waits or not

        engine = get_db(app).engine
        sa_event.listen(engine, "before_cursor_execute", before)
        sa_event.listen(engine, "after_cursor_execute", after)
        try:
            with caplog.at_level("WARNING", logger="webapp.services.delivery"):
                run("first")
                second.join(timeout=30)
        finally:
            sa_event.remove(engine, "before_cursor_execute", before)
            sa_event.remove(engine, "after_cursor_execute", after)
        assert outcomes == {"first": ["processed"] * 2, "second": ["processed"] * 2}
        assert "last transaction" not in caplog.text  # no deadlock, no one-by-one rerun
        for event_id in events:
            counters = stats(app, event_id)
            assert counters is not None and counters["Registrations"] == 2
    finally:
        get_db(app).dispose()


def test_a_handler_that_claimed_its_inbox_row_cannot_commit_halfway() -> None:
    """Its inbox row is written first: a checkpoint would mark it done before its end.
    Only a handler registered with ``checkpoints=True`` may."""
    from webapp.services.delivery import HandlerRun

    run = HandlerRun(None, None, uuid.uuid4(), "http://x", "s")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="commits once"):
        run.checkpoint()


@pytest.mark.postgres
def test_a_second_claim_of_a_handler_waits_then_finds_it_done(
    postgres_url: str, redis_url: str
) -> None:
    """Two workers on one message (a lease expired meanwhile): the second claim of the
    counter waits for the first transaction on the inbox's key, and after its commit
    finds the handler done; after a rollback it may run."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from webapp.adapters import outbox_relay
    from webapp.services.unit_of_work import utcnow

    app = make_app(postgres_url, redis_url)
    try:
        engine = get_db(app).engine
        message, handler = uuid.uuid4(), "webapp.services.async_handlers:count_popularity"
        with Session(engine) as first, Session(engine) as second:
            assert outbox_relay.claim_inbox_row(first, message, handler, utcnow())
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                outbox_relay.claim_inbox_row(second, message, handler, utcnow())
            second.rollback()
            first.rollback()  # the first worker failed: the claim is gone
            assert outbox_relay.claim_inbox_row(second, message, handler, utcnow())
            second.commit()
            assert not outbox_relay.claim_inbox_row(first, message, handler, utcnow())
    finally:
        get_db(app).dispose()


def one_job_listening(app: Flask, event_name: str, listener: Callable[..., None]) -> list[Any]:
    """Every pending message handled in one job, with ``listener`` on the engine's
    ``event_name`` meanwhile."""
    from sqlalchemy import event as sa_event

    engine = get_db(app).engine
    ids = [r["Id"] for r in outbox(app)]
    sa_event.listen(engine, event_name, listener)
    try:
        return deliverer(app).process_many(ids)
    finally:
        sa_event.remove(engine, event_name, listener)


def test_a_message_takes_three_statements_in_a_job_of_twenty(mail_app: Flask) -> None:
    """Bookkeeping per message: the handlers' own SQL and one statement claiming the
    mail's inbox row; taking the job's messages over, marking them processed and
    claiming their counters' inbox rows are one statement each per job (on
    PostgreSQL; SQLite claims the counters' rows one by one)."""
    event_id = new_event(mail_app, capacity=50)
    for i in range(20):
        register(mail_app, event_id, f"guest{i}")
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith(("BEGIN", "PRAGMA")):  # SQLite's transaction control
            seen.append(statement)

    outcomes = one_job_listening(mail_app, "before_cursor_execute", count)
    assert {x.status for x in outcomes} == {"processed"}
    # per message: the mail's inbox claim, its registration's status, the counter's
    # upsert; per job: take over, attempt rows, mark processed, the counters' claims
    if get_db(mail_app).engine.dialect.name == "postgresql":
        assert len(seen) == 3 * 20 + 4, seen[:12]
    else:
        assert len(seen) == 4 * 20 + 3, seen[:12]


def cancelled_with_waitlist(app: Flask, waiting: list[str]) -> dict[str, Any]:
    """A full event's only seat cancelled, ``waiting`` on its waitlist, every earlier
    message handled: returns the fan-out's message (the waitlist moved up)."""
    event_id = new_event(app, capacity=1)
    seat = register(app, event_id, "seated")
    for who in waiting:
        register(app, event_id, who)
    work = deliverer(app)
    for row in outbox(app):
        work.process(row["Id"])
    registration_service.cancel(get_db(app).unit_of_work, seat.registration_id)
    [moved] = outbox(app, "WaitlistPositionChanged")
    return moved


def handle_pending(app: Flask) -> None:
    work = deliverer(app)
    for row in outbox(app):
        if row["ProcessedAt"] is None:
            assert work.process(row["Id"]).status == "processed"


def statements_of(app: Flask, message_id: uuid.UUID) -> list[str]:
    """The SQL statements a worker's job of one message runs."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith(("BEGIN", "PRAGMA")):  # SQLite's transaction control
            seen.append(statement)

    sa_event.listen(get_db(app).engine, "before_cursor_execute", count)
    try:
        [outcome] = deliverer(app).process_many([message_id])
    finally:
        sa_event.remove(get_db(app).engine, "before_cursor_execute", count)
    assert outcome.status == "processed"
    return seen


def test_a_fan_out_takes_two_statements_per_notice_and_none_for_the_others(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    """Each notice is claimed in the inbox (the claim after a commit also takes the
    message's row lock again, in the same statement), recorded as told, and committed
    on its own; the people the move brings past no milestone cost nothing."""
    event_id = new_event(mail_app, capacity=1)
    seat = register(mail_app, event_id, "zed")
    ann = register(mail_app, event_id, "ann")
    for who in ("bob", "cat", "dan", "eve"):
        register(mail_app, event_id, who)
    handle_pending(mail_app)
    registration_service.cancel(get_db(mail_app).unit_of_work, seat.registration_id)
    [first] = outbox(mail_app, "WaitlistPositionChanged")
    seen = statements_of(mail_app, first["Id"])
    # ann was promoted; bob, cat, dan and eve moved up, none told anything yet: take
    # over, row lock with the inbox check, the people behind, two per notice, the
    # handler's own inbox row, attempt rows, mark processed
    assert [len(smtp.to(f"{w}@example.test")) for w in ("bob", "cat", "dan", "eve")] == [2] * 4
    assert len(seen) == 3 + 2 * 4 + 3, seen

    handle_pending(mail_app)
    registration_service.cancel(get_db(mail_app).unit_of_work, ann.registration_id)
    [second] = [m for m in outbox(mail_app, "WaitlistPositionChanged") if m["Id"] != first["Id"]]
    seen = statements_of(mail_app, second["Id"])
    # bob was promoted; only cat reaches the head of the queue (dan and eve were told
    # they are within ten places already)
    assert [len(smtp.to(f"{w}@example.test")) for w in ("cat", "dan", "eve")] == [3, 2, 2]
    assert len(seen) == 3 + 2 + 3, seen


def test_climbing_the_waitlist_to_the_front_takes_two_notices(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    """A notice when a move brings someone within WAITLIST_NOTICE_MAX_POSITION places
    of a seat, and one when they are next in line; the moves in between mail nobody."""
    mail_app.config["WAITLIST_NOTICE_MAX_POSITION"] = 3
    event_id = new_event(mail_app, capacity=1)
    seated = register(mail_app, event_id, "s0").registration_id
    waiting = [register(mail_app, event_id, f"w{n}").registration_id for n in range(1, 7)]
    handle_pending(mail_app)
    for promoted in [seated, *waiting[:5]]:  # each cancellation promotes the next
        registration_service.cancel(get_db(mail_app).unit_of_work, promoted)
        handle_pending(mail_app)

    def told(who: str) -> list[int]:
        mails = [m for m in smtp.to(f"{who}@example.test") if "moved up" in m["Subject"]]
        return [int(body(m, "plain").split("now at position ")[1][0]) for m in mails]

    # w6 joined 6th: within three places at 3, next in line at 1
    assert told("w6") == [3, 1]
    assert "next seat that frees up is yours" in body(
        [m for m in smtp.to("w6@example.test") if "moved up" in m["Subject"]][1], "plain"
    )
    assert told("w5") == [3, 1]
    # w3 and w2 joined within three places: told at their first move, then at 1
    assert told("w3") == [2, 1]
    assert told("w2") == [1]
    assert told("w1") == []  # promoted at the first cancellation
    assert all("A seat freed up" in smtp.to(f"w{n}@example.test")[-1]["Subject"] for n in (1, 6))


def test_a_milestone_is_announced_once_when_two_moves_race(
    postgres_url: str, redis_url: str
) -> None:
    """Two fan-outs of the same queue, on two workers, reach the same person: the
    second claim of the notice waits for the first transaction, then finds the
    milestone told and sends nothing; a nearer milestone is claimed again."""
    import threading

    from webapp.adapters.waitlist_notices import claim_notice

    app = make_app(postgres_url, redis_url)
    try:
        event_id = new_event(app, capacity=1)
        register(app, event_id, "pia")
        rid = register(app, event_id, "quinn").registration_id
        now = datetime.now(UTC)
        db = get_db(app)
        first = db.write_sessions()
        assert claim_notice(first, rid, 1, 1, now)  # uncommitted
        results: list[bool] = []

        def second_worker() -> None:
            with db.write_sessions() as session:
                results.append(claim_notice(session, rid, 1, 1, now))
                session.commit()

        racer = threading.Thread(target=second_worker)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting on the first claim's row
        first.commit()
        first.close()
        racer.join(5)
        assert results == [False]
        with db.write_sessions() as session:
            assert not claim_notice(session, rid, 2, 10, now)  # told 1: nearer than 10
    finally:
        get_db(app).dispose()


def test_a_notice_another_fan_out_sent_meanwhile_leaves_no_trace(
    mail_app: Flask, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Losing the race for a person's notice: no mail, and no inbox key saying one went
    out (the benchmark compares those keys with the mails)."""
    from webapp.adapters import waitlist_notices
    from webapp.adapters.tables import processed_messages

    event_id = new_event(mail_app, capacity=1)
    seat = register(mail_app, event_id, "zed")
    register(mail_app, event_id, "ann")
    bob = register(mail_app, event_id, "bob").registration_id
    register(mail_app, event_id, "cat")
    handle_pending(mail_app)
    registration_service.cancel(get_db(mail_app).unit_of_work, seat.registration_id)
    [moved] = outbox(mail_app, "WaitlistPositionChanged")
    claim = waitlist_notices.claim_notice

    def told_meanwhile(session: Any, registration_id: Any, *args: Any) -> bool:
        if str(registration_id) == str(bob):
            return False
        return claim(session, registration_id, *args)

    monkeypatch.setattr(waitlist_notices, "claim_notice", told_meanwhile)
    assert deliverer(mail_app).process(moved["Id"]).status == "processed"
    assert [m["Subject"] for m in smtp.to("bob@example.test")] == [
        smtp.to("bob@example.test")[0]["Subject"]
    ]
    assert any("moved up" in m["Subject"] for m in smtp.to("cat@example.test"))
    with get_db(mail_app).engine.connect() as conn:
        keys = conn.execute(
            select(processed_messages.c.Handler).where(
                processed_messages.c.MessageId == moved["Id"],
                processed_messages.c.Handler.like("waitlist-notice/%"),
            )
        ).scalars()
        assert len(list(keys)) == 1  # cat's


def test_a_fan_out_holds_the_message_row_lock_at_every_mail(
    postgres_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    """A checkpoint's commit releases the row lock; the next recipient's claim takes it
    again before the mail goes out, so an operator's replay or a dead-lettering by
    another worker never runs between two notices."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    app = make_app(postgres_url, redis_url, **smtp.config())
    try:
        moved = cancelled_with_waitlist(app, ["fay", "gil", "hue", "ike"])
        work = deliverer(app)
        original = work.mailer.send
        locked: list[bool] = []

        def send_while_probing(*args: Any, **kwargs: Any) -> None:
            with get_db(app).engine.connect() as probe:
                try:
                    probe.execute(
                        text('SELECT 1 FROM "OutboxMessages" WHERE "Id" = :id FOR UPDATE NOWAIT'),
                        {"id": moved["Id"]},
                    )
                    locked.append(False)
                except OperationalError as error:
                    assert "could not obtain lock" in str(error)
                    locked.append(True)
            original(*args, **kwargs)

        work.mailer.send = send_while_probing  # type: ignore[method-assign]
        assert work.process(moved["Id"]).status == "processed"
        assert locked == [True, True, True]  # gil, hue and ike, after fay's promotion
    finally:
        get_db(app).dispose()


def test_a_job_takes_one_connection_from_the_pool_for_all_its_transactions(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    event_id = new_event(mail_app, capacity=50)
    for i in range(5):
        register(mail_app, event_id, f"pooled{i}")
    checkouts: list[int] = []

    def on_checkout(*_args: Any) -> None:
        checkouts.append(1)

    outcomes = one_job_listening(mail_app, "checkout", on_checkout)
    # take over, 5 x 2 handler transactions, bookkeeping: 12 transactions, 1 checkout
    assert [x.status for x in outcomes] == ["processed"] * 5
    assert len(checkouts) == 1
    assert all(len(smtp.to(f"pooled{i}@example.test")) == 1 for i in range(5))


@pytest.mark.postgres
def test_a_connection_broken_in_the_middle_of_a_job_is_replaced(
    postgres_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    """A database restart kills the job's connection between two messages: the
    message being handled fails (and is retried later); the next ones run on a new
    connection, nothing is lost."""
    from sqlalchemy import text

    app = make_app(postgres_url, redis_url, OUTBOX_RETRY_DELAY_SECONDS=0.1, **smtp.config())
    try:
        event_id = new_event(app, capacity=50)
        for i in range(3):
            register(app, event_id, f"broken{i}")
        ids = [r["Id"] for r in outbox(app)]
        worker = deliverer(app)
        original = worker._run_handler
        killed: list[int] = []

        def kill_once_then_run(mid: uuid.UUID, handler: Any, message: Any) -> None:
            if mid == ids[1] and not killed:
                pid = worker._job.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                with get_db(app).engine.connect() as other:
                    other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                killed.append(pid)
            original(mid, handler, message)

        worker._run_handler = kill_once_then_run  # type: ignore[method-assign]
        outcomes = worker.process_many(ids)
        assert killed
        assert [x.status for x in outcomes] == ["processed", "retry", "processed"]
        with get_db(app).engine.begin() as conn:  # due again now
            conn.execute(update(outbox_messages).values(NextRetryAt=None))
        assert deliverer(app).process_many([ids[1]])[0].status == "processed"
        assert all(len(smtp.to(f"broken{i}@example.test")) == 1 for i in range(3))
    finally:
        get_db(app).dispose()


def test_a_worker_keeps_its_connection_from_one_job_to_the_next(
    db_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    """A worker's one-message jobs at a light load share one pooled connection, not
    a checkout each; the web's inline handlers (no keep) give theirs back after each
    job, and so does a worker when it stops."""
    app = make_app(db_url, redis_url, **smtp.config())
    try:
        event_id = new_event(app, capacity=50)
        for i in range(3):
            register(app, event_id, f"kept{i}")
        ids = [r["Id"] for r in outbox(app)]
        pool = get_db(app).engine.pool
        checkouts: list[Any] = []

        def checkout(*args: Any) -> None:
            checkouts.append(args)

        worker = Deliverer(
            get_db(app), make_mailer(app.config), app.config, "keeper", keep_connection=True
        )
        sa_event.listen(pool, "checkout", checkout)
        try:
            for mid in ids:
                assert worker.process(mid).status == "processed"
                assert pool.checkedout() == 1
        finally:
            sa_event.remove(pool, "checkout", checkout)
        assert len(checkouts) == 1
        worker.release_connection()
        assert pool.checkedout() == 0

        register(app, event_id, "inline")
        [fresh] = [r["Id"] for r in outbox(app) if r["Id"] not in ids]
        assert deliverer(app).process(fresh).status == "processed"
        assert pool.checkedout() == 0
    finally:
        get_db(app).dispose()


@pytest.mark.postgres
def test_a_database_restart_while_a_worker_waits_costs_no_job(
    postgres_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    """The connection a worker kept dies while it waits for its next job (a database
    restart): after the idle spell the job gives it back to the pool, whose ping on
    checkout finds it dead and opens a new one. The job succeeds; nothing waits for
    a lease to run out."""
    from sqlalchemy import text

    app = make_app(postgres_url, redis_url, DB_POOL_PING_IDLE_SECONDS=0.2, **smtp.config())
    try:
        event_id = new_event(app, capacity=50)
        for who in ("early", "late"):
            register(app, event_id, who)
        first, second = (r["Id"] for r in outbox(app))
        worker = Deliverer(
            get_db(app), make_mailer(app.config), app.config, "waiter", keep_connection=True
        )
        assert worker.process(first).status == "processed"
        pid = worker._job.conn.connection.dbapi_connection.info.backend_pid
        with get_db(app).engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.3)
        assert worker.process(second).status == "processed"
        assert len(attempts(app, second)) == 1  # no failed attempt before it
        assert len(smtp.to("late@example.test")) == 1
        worker.release_connection()
    finally:
        get_db(app).dispose()


def test_failing_mail_is_retried_with_backoff_then_dead_lettered(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    event_id = new_event(mail_app, capacity=5)
    register(mail_app, event_id, "dan")
    [row] = outbox(mail_app)
    assert row["MaxRetryCount"] == 3
    smtp.reject = True
    work = deliverer(mail_app)
    delays = []
    for failures in (1, 2):
        assert work.process(row["Id"]).status == "retry"
        [current] = outbox(mail_app)
        assert current["RetryCount"] == failures
        assert current["ErrorType"] == "smtplib.SMTPDataError"
        assert current["Error"].startswith("SMTPDataError: (550, ")
        assert "mailbox unavailable" in current["Error"]
        assert "Traceback" in current["Error"]
        # the class and the message's first line: what the dashboard lists and searches
        assert current["ErrorSummary"].startswith("smtplib.SMTPDataError: (550, ")
        assert "mailbox unavailable" in current["ErrorSummary"]
        assert "\n" not in current["ErrorSummary"]
        assert current["DeadLetteredAt"] is None
        last = attempts(mail_app, row["Id"])[-1]
        finished = last["AttemptedAt"] + timedelta(milliseconds=last["DurationMs"])
        delays.append((current["NextRetryAt"] - finished).total_seconds())
    # base 2 s, doubling, stretched by at most 25 %
    for delay, expected in zip(delays, (2.0, 4.0), strict=True):
        assert expected - 0.05 <= delay <= expected * (1 + BACKOFF_JITTER) + 0.05

    assert work.process(row["Id"]).status == "dead"
    [dead] = outbox(mail_app)
    assert dead["RetryCount"] == 3 and dead["DeadLetteredAt"] is not None
    assert dead["NextRetryAt"] is None and dead["ProcessedAt"] is None
    assert dead["Fingerprint"] and len(dead["Fingerprint"]) == 32
    assert dead["ErrorSummary"].startswith("smtplib.SMTPDataError: (550, ")
    history = attempts(mail_app, row["Id"])
    assert [a["Succeeded"] for a in history] == [False, False, False]
    assert {a["Worker"] for a in history} == {"test-worker"}
    assert all("SMTPDataError" in a["Error"] for a in history)
    # the counter handler succeeded on the first attempt and was never repeated
    counters = stats(mail_app, event_id)
    assert counters is not None and counters["Registrations"] == 1
    assert smtp.count() == 0


def test_replayed_dead_letter_is_processed_after_the_fix(mail_app: Flask, smtp: SmtpSink) -> None:
    from webapp.services.replay import replay_messages

    event_id = new_event(mail_app, capacity=5)
    register(mail_app, event_id, "eve")
    [row] = outbox(mail_app)
    smtp.reject = True
    work = deliverer(mail_app)
    while work.process(row["Id"]).status != "dead":
        pass
    smtp.reject = False  # the fix
    replay_messages(get_db(mail_app).unit_of_work, [row["Id"]], actor="ops@example.test")
    assert work.process(row["Id"]).status == "processed"
    [done] = outbox(mail_app)
    assert done["ProcessedAt"] is not None and done["ReplayCount"] == 1
    assert len(smtp.to("eve@example.test")) == 1
    assert [a["Succeeded"] for a in attempts(mail_app, row["Id"])] == [False] * 3 + [True]


def test_cancellation_promotes_and_notifies_the_waitlist_once(
    mail_app: Flask, smtp: SmtpSink
) -> None:
    moved = cancelled_with_waitlist(mail_app, ["gus", "hal", "ivy"])
    work = deliverer(mail_app)
    smtp.reject = True  # the fan-out fails on its first recipient
    assert work.process(moved["Id"]).status == "retry"
    smtp.reject = False
    for row in outbox(mail_app):
        if row["ProcessedAt"] is None:
            assert work.process(row["Id"]).status == "processed"

    [promoted] = smtp.to("gus@example.test")[1:]
    assert "A seat freed up for you" in promoted["Subject"]
    notices = {
        who: [m for m in smtp.to(f"{who}@example.test") if "moved up" in m["Subject"]]
        for who in ("hal", "ivy")
    }
    assert [len(v) for v in notices.values()] == [1, 1]
    assert "position 1" in body(notices["hal"][0], "plain")
    assert "position 2" in body(notices["ivy"][0], "plain")


def test_fan_out_retry_skips_the_recipients_already_mailed(mail_app: Flask, smtp: SmtpSink) -> None:
    moved = cancelled_with_waitlist(mail_app, ["kim", "lou", "max"])
    work = deliverer(mail_app)
    sent_before = smtp.count()
    original = work.mailer.send
    calls = {"n": 0}

    def flaky_send(to: str, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("SMTP connection reset")
        original(to, *args, **kwargs)

    work.mailer.send = flaky_send  # type: ignore[method-assign]
    assert work.process(moved["Id"]).status == "retry"
    assert smtp.count() == sent_before + 1  # lou got hers, max's failed
    assert work.process(moved["Id"]).status == "processed"
    assert len([m for m in smtp.to("lou@example.test") if "moved up" in m["Subject"]]) == 1
    assert len([m for m in smtp.to("max@example.test") if "moved up" in m["Subject"]]) == 1


def test_without_smtp_host_mails_land_in_the_mailbox_folder(
    db_url: str, redis_url: str, tmp_path: Any
) -> None:
    mailbox = tmp_path / "mailbox"
    app = make_app(db_url, redis_url, SMTP_HOST="", MAILBOX_DIR=str(mailbox))
    try:
        event_id = new_event(app, capacity=2)
        register(app, event_id, "nia")
        work = deliverer(app)
        [row] = outbox(app)
        assert work.process(row["Id"]).status == "processed"
        files = list(mailbox.glob("*.eml"))
        assert len(files) == 1
        content = files[0].read_text()
        assert "To: nia@example.test" in content and "You're registered" in content
    finally:
        get_db(app).dispose()


def test_inline_mode_runs_the_handlers_right_after_commit(
    db_url: str, redis_url: str, smtp: SmtpSink
) -> None:
    app = make_app(db_url, redis_url, OUTBOX_SYNC_HANDLERS=True, **smtp.config())
    try:
        event_id = new_event(app, capacity=2)
        register(app, event_id, "oto")
        assert len(smtp.to("oto@example.test")) == 1  # no relay, no worker
        [row] = outbox(app)
        assert row["ProcessedAt"] is not None
    finally:
        get_db(app).dispose()


def test_waitlist_notices_go_only_to_people_near_a_seat(mail_app: Flask, smtp: SmtpSink) -> None:
    """A long waitlist is not mailed at every move: only the people the move brings
    within WAITLIST_NOTICE_MAX_POSITION places of a seat."""
    mail_app.config["WAITLIST_NOTICE_MAX_POSITION"] = 2
    waiting = ["bea", "cal", "dan", "eve"]
    cancelled_with_waitlist(mail_app, waiting)
    work = deliverer(mail_app)
    for row in outbox(mail_app):
        if row["ProcessedAt"] is None:
            assert work.process(row["Id"]).status == "processed"

    moved = {
        who: [m for m in smtp.to(f"{who}@example.test") if "moved up" in m["Subject"]]
        for who in waiting[1:]
    }
    assert {who: len(mails) for who, mails in moved.items()} == {"cal": 1, "dan": 1, "eve": 0}
    assert "position 2" in body(moved["dan"][0], "plain")
