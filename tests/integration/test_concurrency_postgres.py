"""Concurrency on PostgreSQL: many connections at once never overbook, never skip
anyone on the waitlist, never promote anyone twice."""

from __future__ import annotations

import json
import random
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from tests.conftest import make_app
from webapp.adapters.cache import get_cache
from webapp.adapters.tables import events, outbox_messages, registrations
from webapp.domain import errors
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import read_model
from webapp.services import registrations as registration_service

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
THREADS = 24


@pytest.fixture
def pg_app(postgres_url: str, redis_url: str) -> Iterator[Flask]:
    app = make_app(postgres_url, redis_url, DB_POOL_SIZE=THREADS + 2, DB_POOL_TIMEOUT=30)
    # Threads share one GIL: a thread holding the event row lock would otherwise wait
    # up to 5 ms for the GIL after each round trip (a convoy that separate server
    # processes never see). A short switch interval keeps the test about the database.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    yield app
    sys.setswitchinterval(interval)
    get_db(app).dispose()


def new_event(app: Flask, capacity: int) -> int:
    details = event_service.EventDetails(
        "Concurrent", "", "Hall", datetime.now(UTC) + timedelta(days=3)
    )
    return event_service.create_event(get_db(app).unit_of_work, details, capacity)


def run_concurrently(tasks: list[Callable[[], object]]) -> list[object]:
    """Run the tasks on ``THREADS`` threads, each with its own connection: the first
    task of every thread waits until all threads have one, then they start together;
    the later tasks start as threads free up. (A barrier that every task passed
    waited its timeout for the last, incomplete group of each round.)"""
    first_wave = min(THREADS, len(tasks))
    arrived = iter(range(1, first_wave + 1))
    lock, go = threading.Lock(), threading.Event()

    def start(task: Callable[[], object]) -> object:
        with lock:
            if next(arrived, 0) == first_wave:
                go.set()
        go.wait(timeout=10)
        try:
            return task()
        except errors.DomainError as error:
            return error

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(start, tasks))


def event_rows(app: Flask, event_id: int) -> tuple[object, list[object]]:
    with get_db(app).engine.connect() as conn:
        event = conn.execute(select(events).where(events.c.Id == event_id)).one()
        regs = conn.execute(select(registrations).where(registrations.c.EventId == event_id)).all()
    return event, regs


def test_200_concurrent_registrations_for_50_seats_never_overbook(pg_app: Flask) -> None:
    uow = get_db(pg_app).unit_of_work
    for round_ in range(10):
        event_id = new_event(pg_app, capacity=50)
        tasks = [
            (
                lambda n=n, e=event_id, r=round_: registration_service.register(
                    uow, e, f"P{n}", f"r{r}-{n}@example.test"
                )
            )
            for n in range(200)
        ]
        outcomes = run_concurrently(tasks)
        assert Counter(o.status for o in outcomes) == {"Confirmed": 50, "Waitlisted": 150}
        event, regs = event_rows(pg_app, event_id)
        statuses = Counter(r.Status.value for r in regs)
        assert statuses == {"Confirmed": 50, "Waitlisted": 150}
        assert (event.ConfirmedCount, event.WaitlistCount) == (50, 150)
        keys = sorted(r.PositionInQueue for r in regs if r.Status.value == "Waitlisted")
        assert keys == list(range(1, 151)), "queue keys are distinct and dense, in lock order"


def test_concurrent_cancellations_and_registrations_on_a_full_event(pg_app: Flask) -> None:
    uow = get_db(pg_app).unit_of_work
    event_id = new_event(pg_app, capacity=20)
    initial = [
        registration_service.register(uow, event_id, f"P{n}", f"c{n}@example.test")
        for n in range(50)
    ]  # 20 confirmed, 30 waiting
    rng = random.Random(7)
    confirmed = [o for o in initial if o.status == "Confirmed"]
    waiting = [o for o in initial if o.status == "Waitlisted"]
    to_cancel = rng.sample(confirmed, 12) + rng.sample(waiting, 5)
    tasks: list[Callable[[], object]] = [
        (lambda o=o: registration_service.cancel(uow, o.registration_id)) for o in to_cancel
    ]
    tasks += [
        (lambda n=n: registration_service.register(uow, event_id, f"N{n}", f"n{n}@example.test"))
        for n in range(30)
    ]
    rng.shuffle(tasks)
    results = run_concurrently(tasks)
    assert not [r for r in results if isinstance(r, Exception)]

    event, regs = event_rows(pg_app, event_id)
    by_status = Counter(r.Status.value for r in regs)
    assert by_status["Confirmed"] == event.ConfirmedCount == event.Capacity == 20
    assert by_status["Waitlisted"] == event.WaitlistCount
    # ever promoted: joined the waitlist, later got a seat (some cancelled afterwards)
    promoted = {
        str(r.Id): r.PositionInQueue
        for r in regs
        if r.ConfirmedAt is not None and r.PositionInQueue is not None
    }
    promoted_keys = list(promoted.values())
    waiting_keys = [r.PositionInQueue for r in regs if r.Status.value == "Waitlisted"]
    assert max(promoted_keys) < min(waiting_keys), "nobody on the waitlist was skipped"
    with get_db(pg_app).engine.connect() as conn:
        promotions = [
            json.loads(d)["registration_id"]
            for d in conn.execute(
                select(outbox_messages.c.Data).where(
                    outbox_messages.c.Type == "RegistrationPromoted"
                )
            ).scalars()
        ]
    assert len(promotions) == len(set(promotions)), "nobody promoted twice"
    assert set(promotions) == set(promoted)
    # each commit stored its own counts with its invalidation: whatever order those
    # after-commit hooks ran in, what the pages read is what was committed last
    with pg_app.app_context():
        assert get_cache().enabled
        cached = read_model.event_counts([event_id])[event_id]
    assert cached == {
        "capacity": event.Capacity,
        "confirmed_count": event.ConfirmedCount,
        "waitlist_count": event.WaitlistCount,
    }


def test_same_email_registering_concurrently_gets_one_active_registration(
    pg_app: Flask,
) -> None:
    uow = get_db(pg_app).unit_of_work
    event_id = new_event(pg_app, capacity=10)
    tasks = [
        (lambda: registration_service.register(uow, event_id, "Twin", "Twin@Example.test"))
        for _ in range(12)
    ]
    results = run_concurrently(tasks)
    successes = [r for r in results if isinstance(r, registration_service.RegistrationOutcome)]
    duplicates = [r for r in results if isinstance(r, errors.AlreadyRegistered)]
    assert len(successes) == 1
    assert len(duplicates) == 11
    assert {d.registration_id for d in duplicates} == {successes[0].registration_id}
    _, regs = event_rows(pg_app, event_id)
    assert len(regs) == 1


def test_double_submitted_form_concurrently_yields_one_row(pg_app: Flask) -> None:
    uow = get_db(pg_app).unit_of_work
    event_id = new_event(pg_app, capacity=10)
    token = uuid.uuid4().hex
    tasks = [
        (
            lambda: registration_service.register(
                uow, event_id, "Clicker", "click@example.test", idempotency_key=token
            )
        )
        for _ in range(8)
    ]
    results = run_concurrently(tasks)
    ids = {
        r.registration_id  # an outcome, or AlreadyRegistered pointing at the row
        for r in results
    }
    assert len(ids) == 1
    _, regs = event_rows(pg_app, event_id)
    assert len(regs) == 1
