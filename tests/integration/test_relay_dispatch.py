"""The relay in-process against real databases and Redis: claims, leases, JSON jobs,
concurrent relays, wake-ups on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import select, update

from tests.conftest import make_app
from tests.integration.outbox_support import free_port, wait_until
from webapp.adapters import outbox_relay
from webapp.adapters.tables import outbox_messages
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations as registration_service
from webapp.services.unit_of_work import utcnow
from workers import HANDLE_MESSAGES_JOB, OUTBOX_QUEUE
from workers.relay import Relay, start_in_thread

pytestmark = pytest.mark.redis


def _event(app: Flask) -> int:
    details = event_service.EventDetails(
        title="Relay Evening",
        description="d",
        venue="Hub",
        start_date=datetime.now(UTC) + timedelta(days=1),
    )
    return event_service.create_event(get_db(app).unit_of_work, details, 1000)


def _register(app: Flask, event_id: int, n: int, prefix: str = "r") -> None:
    for i in range(n):
        registration_service.register(
            get_db(app).unit_of_work, event_id, "R", f"{prefix}{i}@example.test"
        )


def _rows(app: Flask) -> list[dict[str, Any]]:
    with get_db(app).engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(outbox_messages))]


#: the relays of the running test: each keeps a connection between passes that find
#: messages, given back before the test's database is disposed
_made: list[Relay] = []


def _release_relays() -> None:
    while _made:
        _made.pop().release_connection()


def _relay(app: Flask, name: str, redis_url: str, **kw: Any) -> Relay:
    relay = Relay(
        get_db(app),
        redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1),
        app.config["DATABASE_URL"],
        name=name,
        **kw,
    )
    _made.append(relay)
    return relay


@pytest.fixture
def relay_app(db_url: str, redis_url: str) -> Iterator[Flask]:
    app = make_app(db_url, redis_url)
    yield app
    _release_relays()
    get_db(app).dispose()


def _jobs(relay: Relay) -> list[Job]:
    queue = Queue(OUTBOX_QUEUE, connection=relay.redis, serializer=JSONSerializer)
    return [j for j in Job.fetch_many(queue.job_ids, relay.redis, JSONSerializer) if j]


def test_a_few_messages_get_one_json_job_each(relay_app: Flask, redis_url: str) -> None:
    event_id = _event(relay_app)
    _register(relay_app, event_id, 3)
    relay = _relay(relay_app, "relay-t", redis_url, parallel_jobs=4)
    assert relay.dispatch_once() == 3
    rows = _rows(relay_app)
    jobs = _jobs(relay)
    assert sorted(j.id for j in jobs) == sorted(str(r["Id"]) for r in rows)
    job = Job.fetch(str(rows[0]["Id"]), connection=relay.redis, serializer=JSONSerializer)
    assert job.func_name == HANDLE_MESSAGES_JOB and job.args == [[str(rows[0]["Id"])]]
    assert job.meta["message_types"] == ["RegistrationCreated"]
    assert list(job.meta["trace_contexts"]) == [str(rows[0]["Id"])]
    for row in rows:
        assert row["DispatchedAt"] is not None and row["LockedBy"] == "relay-t"
        assert row["LockedUntil"] > row["DispatchedAt"]
    assert relay.dispatch_once() == 0  # leased: nobody claims them again


def test_a_pass_claims_the_oldest_and_marks_them_dispatched_in_one_transaction(
    relay_app: Flask, redis_url: str
) -> None:
    """At a light load every commit wakes the relay for its message alone, so a pass's
    work is the relay's cost per message: one transaction claims the oldest due
    messages, writes their lease and marks them dispatched (one statement on
    PostgreSQL; SQLite reads the due rows, then updates them), on one connection
    from the pool; then the jobs go to Redis, with no transaction open."""
    from sqlalchemy import event as sa_event

    event_id = _event(relay_app)
    _register(relay_app, event_id, 3)
    oldest = sorted(_rows(relay_app), key=lambda r: r["CreatedAt"])
    relay = _relay(relay_app, "relay-o", redis_url, batch_size=2)
    seen: list[str] = []
    checkouts: list[Any] = []
    commits: list[Any] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith(("BEGIN", "PRAGMA")):  # SQLite's transaction control
            seen.append(statement)

    def checkout(*args: Any) -> None:
        checkouts.append(args)

    def commit(*args: Any) -> None:
        commits.append(args)

    engine = get_db(relay_app).engine
    sa_event.listen(engine, "before_cursor_execute", count)
    sa_event.listen(engine.pool, "checkout", checkout)
    sa_event.listen(engine, "commit", commit)
    try:
        assert relay.dispatch_once() == 2
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
        sa_event.remove(engine.pool, "checkout", checkout)
        sa_event.remove(engine, "commit", commit)
    postgresql = engine.dialect.name == "postgresql"
    assert [s.split()[0] for s in seen] == (["UPDATE"] if postgresql else ["SELECT", "UPDATE"])
    assert len(commits) == 1
    assert len(checkouts) == 1
    for row in _rows(relay_app):
        dispatched = row["Id"] in {oldest[0]["Id"], oldest[1]["Id"]}
        assert (row["DispatchedAt"] is not None) == dispatched
    leased = {r["Id"] for r in _rows(relay_app) if r["LockedBy"] == "relay-o"}
    assert leased == {oldest[0]["Id"], oldest[1]["Id"]}
    assert {j.id for j in _jobs(relay)} == {str(oldest[0]["Id"]), str(oldest[1]["Id"])}
    assert relay.dispatch_once() == 1  # the youngest, in the next pass


def test_passes_that_find_messages_keep_one_connection_and_an_idle_one_gives_it_back(
    relay_app: Flask, redis_url: str
) -> None:
    """A light load wakes the relay for every commit: its passes keep one pooled
    connection between them instead of a checkout each. A pass that finds nothing,
    or fails, returns it, so an idle relay holds no connection."""
    from sqlalchemy import event as sa_event

    event_id = _event(relay_app)
    pool = get_db(relay_app).engine.pool
    relay = _relay(relay_app, "relay-k", redis_url)
    checkouts: list[Any] = []

    def checkout(*args: Any) -> None:
        checkouts.append(args)

    for n in range(3):
        _register(relay_app, event_id, 1, prefix=f"kept{n}-")
        sa_event.listen(pool, "checkout", checkout)  # the relay's own checkouts
        try:
            assert relay.dispatch_once() == 1
        finally:
            sa_event.remove(pool, "checkout", checkout)
        assert pool.checkedout() == 1  # kept for the next pass
    assert len(checkouts) == 1
    assert relay.dispatch_once() == 0
    assert pool.checkedout() == 0
    assert len(_jobs(relay)) == 3

    down = _relay(relay_app, "relay-d", f"redis://127.0.0.1:{free_port()}/0")
    _register(relay_app, event_id, 1, prefix="down-")
    with pytest.raises(redis.RedisError):
        down.dispatch_once()
    assert pool.checkedout() == 0
    assert relay.dispatch_once() == 1  # given back by the failed pass, sent now


@pytest.mark.postgres
def test_a_database_restart_between_passes_loses_nothing(postgres_url: str, redis_url: str) -> None:
    """The connection kept between passes dies (a database restart): the next pass
    fails and gives it up, the one after gets a fresh connection and sends the
    message committed meanwhile."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    app = make_app(postgres_url, redis_url)
    try:
        event_id = _event(app)
        relay = _relay(app, "relay-r", redis_url)
        _register(app, event_id, 1, prefix="before-")
        assert relay.dispatch_once() == 1
        pid = relay._conn.connection.dbapi_connection.info.backend_pid
        with get_db(app).engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        _register(app, event_id, 1, prefix="after-")
        with pytest.raises(SQLAlchemyError):
            relay.dispatch_once()
        assert relay._conn is None
        assert relay.dispatch_once() == 1
        assert len(_jobs(relay)) == 2
        assert all(r["DispatchedAt"] is not None for r in _rows(app))
    finally:
        _release_relays()
        get_db(app).dispose()


def test_the_queue_length_is_read_only_to_spread_several_messages(
    relay_app: Flask, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message is one job however long the queue is: its pass skips the queue's
    length (a Redis round trip); a pass of several reads it to spread them."""
    reads: list[str] = []
    length = Queue.count

    def counted(queue: Queue) -> int:
        reads.append(queue.name)
        return int(length.fget(queue))  # type: ignore[attr-defined]

    monkeypatch.setattr(Queue, "count", property(counted))
    event_id = _event(relay_app)
    relay = _relay(relay_app, "relay-q", redis_url, parallel_jobs=4)
    _register(relay_app, event_id, 1)
    assert relay.dispatch_once() == 1
    assert reads == []
    _register(relay_app, event_id, 3, prefix="s")
    assert relay.dispatch_once() == 3
    assert reads == [OUTBOX_QUEUE]
    assert len(_jobs(relay)) == 2  # the first job still waited: the three share one


def test_a_burst_is_shared_out_in_jobs_of_several_messages(
    relay_app: Flask, redis_url: str
) -> None:
    """45 fresh messages, 4 worker processes, at most 10 per job: 5 jobs, each
    message in exactly one job, its job id its first message."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 45)
    relay = _relay(relay_app, "relay-t", redis_url, parallel_jobs=4, messages_per_job=10)
    assert relay.dispatch_once() == 45
    jobs = _jobs(relay)
    assert sorted(len(j.args[0]) for j in jobs) == [5, 10, 10, 10, 10]
    members = [m for j in jobs for m in j.args[0]]
    assert sorted(members) == sorted(str(r["Id"]) for r in _rows(relay_app))
    for job in jobs:
        assert job.id == job.args[0][0]
        assert job.func_name == HANDLE_MESSAGES_JOB
        assert set(job.meta["trace_contexts"]) == set(job.args[0])
        assert job.timeout == 60 * len(job.args[0])  # each message keeps its own minute
    # jobs are waiting, so every worker is busy: twelve more go out in full jobs
    _register(relay_app, event_id, 12, prefix="s")
    before = {j.id for j in jobs}
    assert relay.dispatch_once() == 12
    assert sorted(len(j.args[0]) for j in _jobs(relay) if j.id not in before) == [2, 10]


def test_with_an_empty_queue_a_few_messages_go_to_every_worker(
    relay_app: Flask, redis_url: str
) -> None:
    """Twelve messages and an empty queue (some worker may be idle): four jobs of
    three, rather than one of ten and one of two."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 12)
    relay = _relay(relay_app, "relay-t", redis_url, parallel_jobs=4, messages_per_job=10)
    assert relay.dispatch_once() == 12
    assert sorted(len(j.args[0]) for j in _jobs(relay)) == [3, 3, 3, 3]


def test_expired_lease_of_a_still_queued_job_is_not_enqueued_twice(
    relay_app: Flask, redis_url: str
) -> None:
    event_id = _event(relay_app)
    _register(relay_app, event_id, 1)
    relay = _relay(relay_app, "relay-t", redis_url, lease_seconds=0.2)
    assert relay.dispatch_once() == 1
    [first] = _rows(relay_app)
    time.sleep(0.3)
    assert relay.dispatch_once() == 1  # the lease ran out: claimed again ...
    queue = Queue(OUTBOX_QUEUE, connection=relay.redis, serializer=JSONSerializer)
    assert queue.count == 1  # ... but its job still waits for a worker: not sent twice
    [row] = _rows(relay_app)
    # the lease was renewed from the second claim (checked against the first lease,
    # not the clock: a slow moment after the claim must not fail the test)
    assert row["LockedUntil"] >= first["LockedUntil"] + timedelta(seconds=0.3)


def test_a_queued_job_of_several_messages_is_not_enqueued_again(
    relay_app: Flask, redis_url: str
) -> None:
    event_id = _event(relay_app)
    _register(relay_app, event_id, 8)
    relay = _relay(relay_app, "relay-t", redis_url, lease_seconds=0.2, parallel_jobs=2)
    assert relay.dispatch_once() == 8
    assert [len(j.args[0]) for j in _jobs(relay)] == [4, 4]
    time.sleep(0.3)
    assert relay.dispatch_once() == 8  # every lease ran out; both jobs still wait
    assert [len(j.args[0]) for j in _jobs(relay)] == [4, 4]
    assert all(r["LockedUntil"] > datetime.now(UTC) for r in _rows(relay_app))


def test_redeliveries_get_a_job_each(relay_app: Flask, redis_url: str) -> None:
    """A job that is gone (its worker died with it) leaves messages that come back
    when their lease runs out: each in a job of its own, so one that kills its
    worker does not take the others down with it again."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 6)
    relay = _relay(relay_app, "relay-t", redis_url, lease_seconds=0.2, parallel_jobs=2)
    assert relay.dispatch_once() == 6
    queue = Queue(OUTBOX_QUEUE, connection=relay.redis, serializer=JSONSerializer)
    [first, _second] = _jobs(relay)
    queue.remove(first.id)
    first.delete()  # lost with its worker
    time.sleep(0.3)
    assert relay.dispatch_once() == 6
    sizes = sorted(len(j.args[0]) for j in _jobs(relay))
    assert sizes == [1, 1, 1, 3]  # the lost job's three, one each; the other still waits


def test_a_failed_message_is_a_job_of_its_own_even_if_never_marked_dispatched(
    relay_app: Flask, redis_url: str
) -> None:
    """A message's failure count alone keeps it out of shared jobs, whatever its
    ``DispatchedAt`` says (a message that kills its worker must not take others
    along). A dead letter an operator replayed (failures reset) goes out alone too."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 6)
    ids = [r["Id"] for r in _rows(relay_app)]
    failed, replayed = ids[:2], ids[2]
    with get_db(relay_app).engine.begin() as conn:
        conn.execute(
            update(outbox_messages)
            .where(outbox_messages.c.Id.in_(failed))
            .values(RetryCount=1, NextRetryAt=datetime.now(UTC) - timedelta(seconds=1))
        )
        conn.execute(
            update(outbox_messages).where(outbox_messages.c.Id == replayed).values(ReplayCount=1)
        )
    relay = _relay(relay_app, "relay-t", redis_url, parallel_jobs=1)
    assert relay.dispatch_once() == 6
    jobs = _jobs(relay)
    assert sorted(len(j.args[0]) for j in jobs) == [1, 1, 1, 3]
    alone = sorted(j.args[0] for j in jobs if len(j.args[0]) == 1)
    assert alone == sorted([str(m)] for m in [*failed, replayed])


def test_redis_down_leaves_the_messages_pending(relay_app: Flask) -> None:
    event_id = _event(relay_app)
    _register(relay_app, event_id, 2)
    relay = _relay(relay_app, "relay-t", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        relay.dispatch_once()
    rows = _rows(relay_app)
    assert [(r["LockedBy"], r["DispatchedAt"], r["ProcessedAt"]) for r in rows] == [
        (None, None, None)
    ] * 2


def test_redis_down_gives_first_dispatches_and_redeliveries_back_as_they_were(
    relay_app: Flask,
) -> None:
    """The claim marks the batch dispatched; the release after a failed enqueue takes
    the mark back from a first dispatch (it may share a job when Redis is back), while
    a redelivery stays one (a job of its own)."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 2)
    fresh, redelivered = (r["Id"] for r in _rows(relay_app))
    with get_db(relay_app).engine.begin() as conn:
        conn.execute(
            update(outbox_messages)
            .where(outbox_messages.c.Id == redelivered)
            .values(DispatchedAt=datetime.now(UTC) - timedelta(minutes=5))
        )
    relay = _relay(relay_app, "relay-t", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        relay.dispatch_once()
    rows = {r["Id"]: r for r in _rows(relay_app)}
    assert rows[fresh]["DispatchedAt"] is None
    assert rows[redelivered]["DispatchedAt"] is not None
    assert {r["LockedBy"] for r in rows.values()} == {None}


def test_a_batch_whose_relay_died_after_the_claim_goes_out_when_the_lease_ends(
    relay_app: Flask, redis_url: str
) -> None:
    """The claim marks its batch dispatched before the jobs go to Redis: a relay that
    dies in between leaves messages marked but not enqueued. Their lease runs out, and
    the next pass sends them as redeliveries, each in a job of its own."""
    event_id = _event(relay_app)
    _register(relay_app, event_id, 3)
    db = get_db(relay_app)
    with db.write_sessions() as session, session.begin():  # the relay that dies
        claimed = outbox_relay.claim(session, utcnow(), "relay-dead", 100, 0.2)
    assert len(claimed) == 3
    relay = _relay(relay_app, "relay-t", redis_url, parallel_jobs=1)
    assert relay.dispatch_once() == 0  # leased to the dead relay
    time.sleep(0.3)
    assert relay.dispatch_once() == 3
    assert sorted(j.args[0] for j in _jobs(relay)) == sorted([str(c.id)] for c in claimed)
    assert {r["LockedBy"] for r in _rows(relay_app)} == {"relay-t"}


@pytest.mark.postgres
def test_two_relays_racing_never_dispatch_a_message_twice(
    postgres_url: str, redis_url: str
) -> None:
    app = make_app(postgres_url, redis_url)
    try:
        event_id = _event(app)
        _register(app, event_id, 150)
        relays = [_relay(app, f"relay-{k}", redis_url, batch_size=10) for k in range(3)]
        claimed: dict[str, int] = {}

        def drain(relay: Relay) -> None:
            total = 0
            while (n := relay.dispatch_once()) > 0:
                total += n
            claimed[relay.name] = total

        threads = [threading.Thread(target=drain, args=(r,)) for r in relays]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sum(claimed.values()) == 150
        members = [m for job in _jobs(relays[0]) for m in job.args[0]]
        assert len(members) == 150 and len(set(members)) == 150
    finally:
        get_db(app).dispose()


def test_in_process_relay_on_sqlite_is_woken_by_the_commit(sqlite_url: str, redis_url: str) -> None:
    app = make_app(sqlite_url, redis_url)
    relay = start_in_thread(app, name="embedded", poll_interval=1.0)
    try:
        event_id = _event(app)
        time.sleep(0.2)
        _register(app, event_id, 1)
        queue = Queue(OUTBOX_QUEUE, connection=relay.redis, serializer=JSONSerializer)
        # the job, not DispatchedAt: the claim commits that before the job goes to
        # Redis. Within half a second: without the wake-up the relay would wait for its
        # next poll, a second after its last pass (before the sleep above).
        wait_until(lambda: queue.job_ids, 0.5, interval=0.01)
        [row] = _rows(app)
        assert row["DispatchedAt"] is not None
        assert queue.job_ids == [str(row["Id"])]  # one message: a job of its own
    finally:
        relay.stop()
        time.sleep(0.1)
        get_db(app).dispose()


@pytest.mark.postgres
def test_relay_on_postgresql_is_woken_by_the_commits_notify(
    postgres_url: str, redis_url: str
) -> None:
    """A committed message wakes the waiting relay at once (LISTEN/NOTIFY), instead of
    leaving it until its next poll (every second)."""
    app = make_app(postgres_url, redis_url)
    relay = _relay(app, "listener", redis_url, poll_interval=1.0)
    try:
        event_id = _event(app)
        relay._listen()  # the relay is waiting from here on
        relay._wait()  # anything sent before the wait began is consumed (or 1 s passes)

        _register(app, event_id, 1)
        started = time.monotonic()
        relay._wait()
        waited = time.monotonic() - started
        assert waited < 0.5, f"the relay waited {waited:.3f} s: it was not woken"
    finally:
        relay.close()
        get_db(app).dispose()


def test_a_one_message_job_of_an_earlier_release_is_still_handled(
    relay_app: Flask, redis_url: str, tmp_path: Any
) -> None:
    """Jobs queued before an upgrade name ``workers.jobs.handle_message`` with one id:
    a worker of this release runs them."""
    from rq import SimpleWorker

    from workers import HANDLE_MESSAGE_JOB, runtime

    relay_app.config["MAILBOX_DIR"] = str(tmp_path / "mailbox")
    event_id = _event(relay_app)
    _register(relay_app, event_id, 1)
    [row] = _rows(relay_app)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(OUTBOX_QUEUE, connection=connection, serializer=JSONSerializer)
    queue.enqueue(HANDLE_MESSAGE_JOB, str(row["Id"]), job_id=str(row["Id"]))
    previous = (runtime._app, runtime._deliverer)
    runtime._app, runtime._deliverer = relay_app, None
    try:
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
    finally:
        runtime._app, runtime._deliverer = previous
    [done] = _rows(relay_app)
    assert done["ProcessedAt"] is not None
    assert len(list((tmp_path / "mailbox").glob("*.eml"))) == 1
