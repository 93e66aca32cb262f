"""Use cases against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from webapp.adapters import queries
from webapp.adapters.tables import event_stats, events, outbox_messages, registrations, users
from webapp.domain import errors
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations as registration_service
from webapp.services.unit_of_work import UnitOfWork


def count(app: Flask, table: object) -> int:
    with get_db(app).engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def outbox_types(app: Flask) -> list[str]:
    with get_db(app).engine.connect() as conn:
        rows = conn.execute(
            select(outbox_messages.c.Type).order_by(outbox_messages.c.CreatedAt)
        ).all()
    return [r.Type for r in rows]


def register(app: Flask, event_id: int, n: int, **kw: object):  # type: ignore[no-untyped-def]
    return registration_service.register(
        get_db(app).unit_of_work, event_id, f"Person {n}", f"p{n}@example.test", **kw
    )


def test_registration_writes_business_rows_and_outbox_rows_together(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    first = register(app, event_id, 1)
    second = register(app, event_id, 2)
    assert (first.status, second.status) == ("Confirmed", "Waitlisted")
    assert count(app, registrations) == 2
    assert outbox_types(app) == ["RegistrationCreated", "RegistrationCreated"]
    with get_db(app).engine.connect() as conn:
        data = [json.loads(d) for d in conn.execute(select(outbox_messages.c.Data)).scalars()]
        view = queries.registration_status(conn, second.registration_id)
    assert {d["registration_id"] for d in data} == {
        str(first.registration_id),
        str(second.registration_id),
    }
    assert view is not None and view["position"] == 1


def test_rolled_back_registration_leaves_no_outbox_row(
    app: Flask, create_event: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    event_id = create_event(capacity=5)
    original = UnitOfWork.publish

    def publish_then_fail(self: UnitOfWork):  # type: ignore[no-untyped-def]
        original(self)  # business rows and outbox rows are flushed...
        raise RuntimeError("crash before commit")  # ...and the transaction dies

    monkeypatch.setattr(UnitOfWork, "publish", publish_then_fail)
    with pytest.raises(RuntimeError):
        register(app, event_id, 1)
    assert count(app, outbox_messages) == 0
    assert count(app, registrations) == 0
    assert count(app, users) == 0
    with get_db(app).engine.connect() as conn:
        assert conn.execute(select(events.c.ConfirmedCount)).scalar_one() == 0


def test_cancel_promotes_head_of_waitlist_in_the_same_transaction(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    seat, w1, w2 = (register(app, event_id, n) for n in range(3))
    registration_service.cancel(get_db(app).unit_of_work, seat.registration_id)
    with get_db(app).engine.connect() as conn:
        status = {
            r.Id: r.Status.value
            for r in conn.execute(select(registrations.c.Id, registrations.c.Status))
        }
        ev = conn.execute(select(events)).one()
        w2_view = queries.registration_status(conn, w2.registration_id)
    assert status[seat.registration_id] == "Cancelled"
    assert status[w1.registration_id] == "Confirmed"
    assert status[w2.registration_id] == "Waitlisted"
    assert (ev.ConfirmedCount, ev.WaitlistCount) == (1, 1)
    assert w2_view is not None and w2_view["position"] == 1
    assert outbox_types(app)[-3:] == [
        "RegistrationCancelled",
        "RegistrationPromoted",
        "WaitlistPositionChanged",
    ]


def test_promotion_writes_rows_only_for_people_promoted(
    app: Flask, create_event: Callable[..., int]
) -> None:
    """O(1): the people still waiting keep their rows untouched (no renumbering)."""
    event_id = create_event(capacity=1)
    outcomes = [register(app, event_id, n) for n in range(30)]
    with get_db(app).engine.connect() as conn:
        before = {
            r.Id: r.UpdatedAt
            for r in conn.execute(select(registrations.c.Id, registrations.c.UpdatedAt))
        }
    registration_service.cancel(get_db(app).unit_of_work, outcomes[0].registration_id)
    with get_db(app).engine.connect() as conn:
        after = {
            r.Id: r.UpdatedAt
            for r in conn.execute(select(registrations.c.Id, registrations.c.UpdatedAt))
        }
    changed = {rid for rid in before if before[rid] != after[rid]}
    assert changed == {outcomes[0].registration_id, outcomes[1].registration_id}


def test_cancel_with_promotion_writes_the_event_row_once(
    app: Flask, create_event: Callable[..., int]
) -> None:
    """The freed seat and the promotion change the event's counters in one UPDATE."""
    from sqlalchemy import event as sa_event

    event_id = create_event(capacity=1)
    first, _second = register(app, event_id, 1), register(app, event_id, 2)
    seen: list[str] = []
    this_thread = threading.get_ident()

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if threading.get_ident() != this_thread:  # e.g. the cache's refresh-ahead
            return
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            seen.append(" ".join(statement.split())[:40])

    engine = get_db(app).engine
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        registration_service.cancel(get_db(app).unit_of_work, first.registration_id)
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)

    assert sum(s.startswith('UPDATE "Events"') for s in seen) == 1, seen
    assert len(seen) <= 8, seen
    with get_db(app).engine.connect() as conn:
        row = conn.execute(
            select(events.c.ConfirmedCount, events.c.WaitlistCount).where(events.c.Id == event_id)
        ).one()
    assert (row.ConfirmedCount, row.WaitlistCount) == (1, 0)


def test_capacity_increase_promotes_up_to_that_many_in_order(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=2)
    outcomes = [register(app, event_id, n) for n in range(7)]  # 2 seats, 5 waiting
    uow = get_db(app).unit_of_work
    assert event_service.preview_capacity(uow, event_id, 5).promotes == 3
    assert event_service.change_capacity(uow, event_id, 5) == 3
    with get_db(app).engine.connect() as conn:
        statuses = [
            queries.registration_status(conn, o.registration_id)["status"]  # type: ignore[index]
            for o in outcomes
        ]
    assert statuses == ["Confirmed"] * 5 + ["Waitlisted"] * 2
    assert outbox_types(app).count("RegistrationPromoted") == 3
    assert outbox_types(app).count("WaitlistPositionChanged") == 1


def test_capacity_decrease_below_confirmed_is_refused_and_writes_nothing(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=3)
    for n in range(3):
        register(app, event_id, n)
    before = outbox_types(app)
    with pytest.raises(errors.CapacityBelowConfirmed, match="3 confirmed"):
        event_service.change_capacity(get_db(app).unit_of_work, event_id, 2)
    with get_db(app).engine.connect() as conn:
        assert conn.execute(select(events.c.Capacity)).scalar_one() == 3
    assert outbox_types(app) == before


def test_same_email_twice_keeps_one_active_registration(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=5)
    first = register(app, event_id, 1)
    with pytest.raises(errors.AlreadyRegistered) as info:
        registration_service.register(
            get_db(app).unit_of_work, event_id, "Other Name", "P1@Example.TEST"
        )
    assert info.value.registration_id == first.registration_id
    assert count(app, registrations) == 1
    assert count(app, users) == 1


def test_register_again_after_cancelling(app: Flask, create_event: Callable[..., int]) -> None:
    event_id = create_event(capacity=5)
    first = register(app, event_id, 1)
    registration_service.cancel(get_db(app).unit_of_work, first.registration_id)
    again = register(app, event_id, 1)
    assert again.registration_id != first.registration_id
    assert again.status == "Confirmed"


def test_double_submit_with_the_same_form_token_returns_the_same_registration(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=5)
    first = register(app, event_id, 1, idempotency_key="form-token-1")
    second = register(app, event_id, 1, idempotency_key="form-token-1")
    assert second.registration_id == first.registration_id
    assert second.repeated
    assert count(app, registrations) == 1
    assert outbox_types(app) == ["RegistrationCreated"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"registration_open": False}, errors.RegistrationClosed),
        ({"days": -1}, errors.EventAlreadyStarted),
    ],
)
def test_closed_or_past_event_refuses_and_writes_nothing(
    app: Flask, create_event: Callable[..., int], kwargs: dict, error: type
) -> None:
    event_id = create_event(capacity=5, **kwargs)
    with pytest.raises(error):
        register(app, event_id, 1)
    assert count(app, registrations) == count(app, users) == count(app, outbox_messages) == 0


def test_unknown_event_and_registration(app: Flask) -> None:
    import uuid

    with pytest.raises(errors.EventNotFound):
        register(app, 999, 1)
    with pytest.raises(errors.RegistrationNotFound):
        registration_service.cancel(get_db(app).unit_of_work, uuid.uuid4())
    assert count(app, users) == 0


def test_popularity_counters_are_not_written_in_the_request(
    app: Flask, create_event: Callable[..., int]
) -> None:
    """Popularity counters are an async handler's job: the request only writes the outbox."""
    event_id = create_event(capacity=5)
    register(app, event_id, 1)
    assert count(app, event_stats) == 0
    assert outbox_types(app) == ["RegistrationCreated"]
