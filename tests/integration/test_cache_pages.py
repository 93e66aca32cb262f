"""The cache seen from the pages, on SQLite and PostgreSQL with a real Redis:
SQL statements per hot page with the cache cold and warm, no stale count or
position after one's own write, and output caching of the event list."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from tests.conftest import csrf_token_from, make_app
from webapp.adapters import queries
from webapp.adapters.cache import USER_INFORMATION, Slot, dumps, get_cache
from webapp.adapters.cache_pages import page_key
from webapp.config import next_redis_db
from webapp.extensions import get_db
from webapp.services import events as event_service
from webapp.services import registrations
from webapp.services.read_model import registration_key
from webapp.services.status_links import make_token

pytestmark = pytest.mark.redis


@contextmanager
def sql_statements(app: Flask) -> Iterator[list[str]]:
    """The data statements (SELECT/INSERT/UPDATE/DELETE) the app runs meanwhile."""
    engine = get_db(app).engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def statements_for(app: Flask, client: FlaskClient, path: str, **headers: str) -> int:
    with sql_statements(app) as seen:
        response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return len(seen)


def register(app: Flask, event_id: int, name: str) -> tuple[str, str]:
    outcome = registrations.register(
        get_db(app).unit_of_work, event_id, name, f"{name.lower()}@example.com"
    )
    # refresh-ahead runs on a background thread, off the writing request
    assert app.extensions["les.cache_refresher"].wait_idle(10)
    return f"/registrations/{make_token(app.secret_key, outcome.registration_id)}", str(
        outcome.registration_id
    )


def text_of(client: FlaskClient, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def status_of(client: FlaskClient, path: str) -> tuple[str, str | None]:
    html = client.get(path).get_data(as_text=True)
    status = re.search(r'id="registration-status-value">\s*<span class="status status-(\w+)"', html)
    position = re.search(r'class="waitlist-position">#(\d+)<', html)
    assert status, html
    return status.group(1).strip(), position.group(1) if position else None


def cached_pages(app: Flask) -> list[str]:
    prefix = get_cache(app).prefix
    keys = redis.Redis.from_url(app.config["CACHE_REDIS_URL"]).keys(prefix + "page:*")
    return [key.decode() for key in keys]


def seats_on_list(client: FlaskClient) -> list[str]:
    return re.findall(r'class="seats-left">([^<]+)<', client.get("/").get_data(as_text=True))


# -- statements per hot page -------------------------------------------------------------
def test_hot_pages_run_no_sql_when_the_cache_is_warm(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    confirmed, _ = register(app, event_id, "Ann")
    waiting, _ = register(app, event_id, "Bob")
    layer = get_cache(app)

    pages = {
        # path: statements with everything cold
        "/": 2,  # the list's details, then the counts of all its events in one statement
        f"/events/{event_id}": 1,  # details and counts in one statement
        confirmed: 2,  # registration + attendee, event details
        waiting: 3,  # ... and the waitlist position
    }
    for path, cold in pages.items():
        layer.clear()
        assert statements_for(app, client, path) == cold, path
        assert statements_for(app, client, path) == 0, path
        assert statements_for(app, client, path, **{"HX-Request": "true"}) == 0, path

    # the list page's data is warm but its output cache is not: still no SQL
    client.get("/")
    layer.invalidate({"page:public.event_list:full"})
    assert statements_for(app, client, "/") == 0


def test_after_a_registration_the_writers_next_pages_need_no_sql(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    """The after-commit hook drops the stale keys and, on a background thread,
    refreshes the counts, the new registration and its position (refresh-ahead),
    which the writer reads next."""
    event_id = create_event(capacity=1)
    client.get("/")
    client.get(f"/events/{event_id}")
    register(app, event_id, "Ann")

    waiting, _ = register(app, event_id, "Bob")

    assert statements_for(app, client, waiting) == 0
    assert status_of(client, waiting) == ("Waitlisted", "1")
    assert statements_for(app, client, f"/events/{event_id}") == 0
    assert "1 person waiting" in text_of(client, f"/events/{event_id}")
    assert statements_for(app, client, "/") == 0  # page re-rendered from cached data
    assert "0 of 1" in text_of(client, "/")


def test_a_new_registrations_record_is_cached_as_it_commits(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The status page right after registering needs no query: the record is stored
    with the commit's invalidation (not by the refresh-ahead thread, which loses the
    race against the browser's redirect), exactly as the database would give it,
    with the name the attendee is stored under."""
    from webapp.services import read_model

    monkeypatch.setattr(read_model, "refresh_registrations", lambda *args: None)  # no help
    event_id = create_event(capacity=5)
    client.get(f"/events/{event_id}")  # the event's details are cached
    first = registrations.register(get_db(app).unit_of_work, event_id, "Ann", "ann@example.com")
    registrations.cancel(get_db(app).unit_of_work, first.registration_id)
    again = registrations.register(  # the same email: the stored name stays "Ann"
        get_db(app).unit_of_work, event_id, "Annie", "ANN@example.com"
    )
    status = f"/registrations/{make_token(app.secret_key, again.registration_id)}"

    assert statements_for(app, client, status) == 0
    assert status_of(client, status) == ("Confirmed", None)
    assert "Ann" in text_of(client, status) and "Annie" not in text_of(client, status)
    cached = get_cache(app).get(
        Slot(USER_INFORMATION, registration_key(again.registration_id)),
        lambda: pytest.fail("the record should be cached"),
    )
    with get_db(app).engine.connect() as conn:
        assert cached == queries.registration_record(conn, again.registration_id)


def test_a_waiting_registrations_position_is_cached_as_it_commits(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Joining a waitlist stores the new place with the commit, beside the positions
    already cached for the event: the status page right after needs no query, without
    the refresh-ahead thread, and shows the place the database gives."""
    from webapp.services import read_model

    monkeypatch.setattr(read_model, "refresh_registrations", lambda *args: None)  # no help
    event_id = create_event(capacity=1)
    client.get(f"/events/{event_id}")
    registrations.register(get_db(app).unit_of_work, event_id, "Ann", "ann@example.com")
    bob = registrations.register(get_db(app).unit_of_work, event_id, "Bob", "bob@example.com")
    bob_page = f"/registrations/{make_token(app.secret_key, bob.registration_id)}"
    assert status_of(client, bob_page) == ("Waitlisted", "1")  # Bob's place is cached now

    cy = registrations.register(get_db(app).unit_of_work, event_id, "Cy", "cy@example.com")
    cy_page = f"/registrations/{make_token(app.secret_key, cy.registration_id)}"

    assert statements_for(app, client, cy_page) == 0
    assert status_of(client, cy_page) == ("Waitlisted", "2")
    assert statements_for(app, client, bob_page) == 0
    assert status_of(client, bob_page) == ("Waitlisted", "1")
    with get_db(app).engine.connect() as conn:
        record = queries.registration_record(conn, cy.registration_id)
        assert record is not None
        assert queries.waitlist_position(conn, event_id, int(record["queue_key"])) == 2

    # Bob leaves: the places behind him move, and Cy's page shows the new one
    registrations.cancel(get_db(app).unit_of_work, bob.registration_id)
    assert status_of(client, cy_page) == ("Waitlisted", "1")


def test_a_cancellation_stores_both_changed_records_with_its_commit(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling with promotion stores the canceller's and the promoted person's
    cached records with their new status as it commits: neither status page needs a
    query afterwards, without the refresh-ahead thread, and each cached record is what
    the database gives."""
    from webapp.services import read_model

    monkeypatch.setattr(read_model, "refresh_registrations", lambda *args: None)  # no help
    event_id = create_event(capacity=1)
    ann, ann_id = register(app, event_id, "Ann")
    bob, bob_id = register(app, event_id, "Bob")
    assert status_of(client, ann) == ("Confirmed", None)  # both records are cached
    assert status_of(client, bob) == ("Waitlisted", "1")

    registrations.cancel(get_db(app).unit_of_work, uuid.UUID(ann_id))

    assert statements_for(app, client, ann) == 0
    assert status_of(client, ann) == ("Cancelled", None)
    assert statements_for(app, client, bob) == 0
    assert status_of(client, bob) == ("Confirmed", None)
    layer = get_cache(app)
    with get_db(app).engine.connect() as conn:
        for registration_id in (ann_id, bob_id):
            cached = layer.get(
                Slot(USER_INFORMATION, registration_key(registration_id)),
                lambda: pytest.fail("the record should be cached"),
            )
            assert cached == queries.registration_record(conn, registration_id)


def test_a_changed_record_is_not_stored_over_an_invalidation_that_came_between(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If another write's invalidation of the record lands between the read before the
    commit and the commit's store, the record stays out (it may be older than that
    write) and the next page loads it from the database."""
    from webapp.services import read_model

    monkeypatch.setattr(read_model, "refresh_registrations", lambda *args: None)
    event_id = create_event(capacity=2)
    ann, ann_id = register(app, event_id, "Ann")
    assert status_of(client, ann) == ("Confirmed", None)
    layer = get_cache(app)
    key = registration_key(ann_id)
    read_before_write = layer.read_before_write

    def read_then_overtaken(keys: list[str], slots: list[Slot]) -> Any:
        read = read_before_write(keys, slots)
        layer.invalidate({key})  # another write's invalidation, right after the read
        return read

    monkeypatch.setattr(layer, "read_before_write", read_then_overtaken)

    registrations.cancel(get_db(app).unit_of_work, uuid.UUID(ann_id))

    monkeypatch.setattr(layer, "read_before_write", read_before_write)
    assert layer.fetch([Slot(USER_INFORMATION, key)], lambda _missing: {}) == {}
    assert statements_for(app, client, ann) == 1
    assert status_of(client, ann) == ("Cancelled", None)


def test_a_capacity_increase_that_promotes_many_only_drops_their_records(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More than ten promoted at once: their records are not read inside the
    transaction, only dropped; each person's page then loads the new status."""
    from webapp.services import read_model

    monkeypatch.setattr(read_model, "refresh_registrations", lambda *args: None)
    event_id = create_event(capacity=1)
    register(app, event_id, "Ann")
    waiting = [register(app, event_id, f"Person{i}")[0] for i in range(11)]
    assert status_of(client, waiting[-1]) == ("Waitlisted", "11")

    event_service.change_capacity(get_db(app).unit_of_work, event_id, 12)

    # the record, and the event's details (a capacity change drops those too)
    assert statements_for(app, client, waiting[-1]) == 2
    assert status_of(client, waiting[-1]) == ("Confirmed", None)
    assert status_of(client, waiting[0]) == ("Confirmed", None)


def test_a_registration_stores_the_events_new_counts_with_its_commit(
    app: Flask,
    client: FlaskClient,
    create_event: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counts the commit wrote are stored with its invalidation: no query reloads
    them afterwards, and the next visitor's event page and list need no SQL."""
    from webapp.services import read_model

    reloaded: list[set[int]] = []
    monkeypatch.setattr(read_model, "refresh_counts", lambda _app, ids: reloaded.append(ids))
    event_id = create_event(capacity=2)
    client.get(f"/events/{event_id}")
    client.get("/")
    reloaded.clear()

    registrations.register(get_db(app).unit_of_work, event_id, "Ann", "ann@example.com")

    assert all(event_id not in ids for ids in reloaded), reloaded
    assert statements_for(app, client, f"/events/{event_id}") == 0
    assert "1 of 2" in text_of(client, f"/events/{event_id}")
    assert statements_for(app, client, "/") == 0
    assert "1 of 2" in text_of(client, "/")


# -- one's own write is visible on the next page -------------------------------------------
def test_attendee_sees_new_seat_count_right_after_registering(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=2)
    assert seats_on_list(client) == ["2 of 2"]  # warms list, counts and page output
    client.get(f"/events/{event_id}")

    html = client.get(f"/events/{event_id}").get_data(as_text=True)
    data = {
        "csrf_token": csrf_token_from(html),
        "idempotency_token": re.search(r'name="idempotency_token"[^>]*value="(\w+)"', html).group(
            1
        ),  # type: ignore[union-attr]
        "name": "Ann",
        "email": "ann@example.com",
    }
    response = client.post(f"/events/{event_id}/register", data=data)
    assert response.status_code == 303

    assert status_of(client, response.headers["Location"]) == ("Confirmed", None)
    assert seats_on_list(client) == ["1 of 2"]
    assert "1 of 2" in text_of(client, f"/events/{event_id}")


def test_cancel_promotes_and_moves_the_waitlist_without_stale_pages(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    ann, ann_id = register(app, event_id, "Ann")
    bob, _ = register(app, event_id, "Bob")
    cid, _ = register(app, event_id, "Cid")
    # everyone's page is cached
    assert status_of(client, ann) == ("Confirmed", None)
    assert status_of(client, bob) == ("Waitlisted", "1")
    assert status_of(client, cid) == ("Waitlisted", "2")
    assert "2 people waiting" in text_of(client, "/")

    registrations.cancel(get_db(app).unit_of_work, uuid.UUID(ann_id))

    assert status_of(client, ann) == ("Cancelled", None)
    assert status_of(client, bob) == ("Confirmed", None)  # promoted by the sync handler
    assert status_of(client, cid) == ("Waitlisted", "1")
    assert "1 person waiting" in text_of(client, "/")
    assert "0 of 1" in text_of(client, f"/events/{event_id}")


def test_organiser_capacity_change_and_edit_show_at_once(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1, title="Jazz night")
    register(app, event_id, "Ann")
    bob, _ = register(app, event_id, "Bob")
    assert status_of(client, bob) == ("Waitlisted", "1")
    assert "Jazz night" in text_of(client, "/")
    client.get(f"/events/{event_id}")

    uow = get_db(app).unit_of_work
    event_service.change_capacity(uow, event_id, 3)
    assert "1 of 3" in text_of(client, f"/events/{event_id}")
    assert status_of(client, bob) == ("Confirmed", None)

    event_service.update_event(
        uow,
        event_id,
        event_service.EventDetails(
            "Blues night", "Moved", "Cellar", datetime.now(UTC) + timedelta(days=2)
        ),
    )
    assert "Blues night" in text_of(client, "/")
    assert "Cellar" in text_of(client, f"/events/{event_id}")
    assert "Blues night" in text_of(client, bob)


def test_new_event_appears_on_the_cached_list(
    client: FlaskClient, create_event: Callable[..., int]
) -> None:
    create_event(title="First")
    assert "First" in text_of(client, "/")
    create_event(title="Second")
    assert "Second" in text_of(client, "/")


# -- output cache of the event list --------------------------------------------------------
def test_event_list_output_is_cached_per_htmx_variant(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    create_event(title="Gala")
    first = client.get("/")
    again = client.get("/")
    partial = client.get("/", headers={"HX-Request": "true"})

    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert partial.headers["X-Cache"] == "MISS"  # its own key
    for response in (first, again, partial):
        assert "HX-Request" in response.headers["Vary"]
    assert again.get_data(as_text=True).count("Gala") == first.get_data(as_text=True).count("Gala")
    assert sorted(k.rsplit(":", 1)[1] for k in cached_pages(app)) == ["full", "hx"]


def test_cached_list_page_carries_each_visitors_own_csrf_token(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=3)
    ann, bob = app.test_client(), app.test_client()
    ann_token = csrf_token_from(ann.get("/").get_data(as_text=True))
    bob_page = bob.get("/")
    bob_token = csrf_token_from(bob_page.get_data(as_text=True))

    assert bob_page.headers["X-Cache"] == "HIT"
    assert ann_token != bob_token
    form = bob.get(f"/events/{event_id}").get_data(as_text=True)
    idem = re.search(r'name="idempotency_token"[^>]*value="(\w+)"', form).group(1)  # type: ignore[union-attr]
    posted = bob.post(
        f"/events/{event_id}/register",
        data={"name": "Bob", "email": "bob@example.com", "idempotency_token": idem},
        headers={"X-CSRFToken": bob_token},  # the token of the cached list page works
    )
    assert posted.status_code == 303


def test_a_cached_page_with_text_beyond_ascii_is_served_byte_for_byte(
    app: Flask, create_event: Callable[..., int]
) -> None:
    """The stored copy keeps its text as UTF-8 bytes spelt in Latin-1 (JSON has no
    bytes): a hit, read back from Redis by another process, is the render itself but
    for the visitor's own tokens."""
    title, venue = "Café Ünter · 東京 🎉", "Zürich, Halle «Ost»"
    event_id = create_event(title=title, venue=venue, description="Grüße, ½ price €5")
    other_process = make_app(app.config["DATABASE_URL"], app.config["REDIS_URL"])
    for path in ("/", f"/events/{event_id}"):
        first = app.test_client().get(path)
        again = other_process.test_client().get(path)
        assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT"), path
        rendered, served = first.get_data(as_text=True), again.get_data(as_text=True)
        assert title in served and venue in served, path
        expected = rendered.replace(csrf_token_from(rendered), csrf_token_from(served))
        if path != "/":
            expected = expected.replace(
                idempotency_token_from(rendered), idempotency_token_from(served)
            )
        assert served == expected, path
        assert again.headers["Content-Length"] == str(len(served.encode())), path
    other_process.extensions["les.db"].dispose()


def test_a_page_stored_by_an_earlier_version_is_rendered_afresh(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    """A copy in the format before pages were stored in parts (one ``body`` with
    markers, as a rolling deploy's older workers write it) is not served: the page
    is rendered for the visitor instead."""
    create_event(title="Gala")
    layer = get_cache(app)
    key = layer.prefix + page_key("public.event_list", False)
    old = {"body": "<p>\x00csrf-token\x00</p>", "content_type": "text/html", "personal": []}
    redis.Redis.from_url(app.config["CACHE_REDIS_URL"]).set(key, dumps(old))

    page = client.get("/")
    assert page.headers["X-Cache"] == "BYPASS"
    html = page.get_data(as_text=True)
    assert "Gala" in html and "\x00" not in html
    assert csrf_token_from(html)


@pytest.fixture
def signing_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each signature gets a later timestamp, as if every page came a second later."""
    from itsdangerous import TimestampSigner

    ticks = iter(range(1_800_000_000, 1_900_000_000))
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: next(ticks))


def test_a_visitors_signed_csrf_token_is_signed_once_and_keeps_working(
    app: Flask, create_event: Callable[..., int], signing_clock: None
) -> None:
    """The signed token is kept per session (it never expires: no time limit), so a
    cached page costs no signature; every page still carries the visitor's own."""
    event_id = create_event(capacity=3)
    ann, bob = app.test_client(), app.test_client()
    ann_tokens = [csrf_token_from(ann.get(path).get_data(as_text=True)) for path in ("/", "/")]
    ann_tokens.append(csrf_token_from(ann.get(f"/events/{event_id}").get_data(as_text=True)))
    bob_token = csrf_token_from(bob.get("/").get_data(as_text=True))

    assert len(set(ann_tokens)) == 1  # signed once, although each page "came later"
    assert bob_token != ann_tokens[0]
    html = ann.get(f"/events/{event_id}").get_data(as_text=True)
    form = {"name": "Ann", "email": "ann@example.com"}
    refused = ann.post(
        f"/events/{event_id}/register",
        data=form | {"idempotency_token": idempotency_token_from(html), "csrf_token": bob_token},
    )
    assert refused.status_code == 400  # another visitor's token is not Ann's
    posted = ann.post(
        f"/events/{event_id}/register",
        data=form
        | {"idempotency_token": idempotency_token_from(html), "csrf_token": ann_tokens[0]},
    )
    assert posted.status_code == 303, posted.get_data(as_text=True)


def test_with_a_csrf_time_limit_every_page_signs_afresh(
    app: Flask, create_event: Callable[..., int], signing_clock: None
) -> None:
    app.config["WTF_CSRF_TIME_LIMIT"] = 3600  # a kept copy would expire early
    ann = app.test_client()
    tokens = {csrf_token_from(ann.get("/").get_data(as_text=True)) for _ in range(3)}
    assert len(tokens) == 3


def test_pages_with_a_flashed_message_are_neither_served_nor_stored(
    client: FlaskClient, app: Flask, create_event: Callable[..., int]
) -> None:
    create_event()
    client.get("/")  # cached
    with client.session_transaction() as session:
        session["_flashes"] = [("success", "Your registration is cancelled.")]

    personal = client.get("/")
    assert personal.headers["X-Cache"] == "BYPASS"
    assert "Your registration is cancelled." in personal.get_data(as_text=True)

    other = app.test_client().get("/")
    assert other.headers["X-Cache"] == "HIT"
    assert "Your registration is cancelled." not in other.get_data(as_text=True)


def test_personal_pages_are_never_output_cached(
    app: Flask, client: FlaskClient, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=1)
    status, _ = register(app, event_id, "Ann")
    for _ in range(2):
        response = client.get(status)
        assert "X-Cache" not in response.headers
        assert response.headers["Cache-Control"] == "no-store"
    assert cached_pages(app) == []


def idempotency_token_from(html: str) -> str:
    found = re.search(r'name="idempotency_token"[^>]*value="(\w+)"', html)
    assert found, html
    return found.group(1)


def test_cached_event_page_gives_each_visitor_their_own_tokens_and_live_seats(
    app: Flask, create_event: Callable[..., int]
) -> None:
    event_id = create_event(capacity=2)
    ann, bob = app.test_client(), app.test_client()
    first = ann.get(f"/events/{event_id}")
    again = bob.get(f"/events/{event_id}")
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    ann_html, bob_html = first.get_data(as_text=True), again.get_data(as_text=True)
    assert csrf_token_from(ann_html) != csrf_token_from(bob_html)
    assert idempotency_token_from(ann_html) != idempotency_token_from(bob_html)
    assert "\x00" not in bob_html  # no marker left behind
    assert "2 of 2" in bob_html

    # both forms work; the copy stays, and its seats, waitlist and button are live
    for client, html, name in ((bob, bob_html, "Bob"), (ann, ann_html, "Ann")):
        posted = client.post(
            f"/events/{event_id}/register",
            data={
                "name": name,
                "email": f"{name.lower()}@example.com",
                "idempotency_token": idempotency_token_from(html),
                "csrf_token": csrf_token_from(html),
            },
        )
        assert posted.status_code == 303, posted.get_data(as_text=True)
    page = app.test_client().get(f"/events/{event_id}")
    html = page.get_data(as_text=True)
    assert page.headers["X-Cache"] == "HIT"
    assert "0 of 2" in html and "0 people waiting" in html
    assert "This event is full" in html and "Join the waitlist" in html
    assert "Seats are available" not in html and ">Register</button>" not in html
    assert "\x00" not in html

    hx = {"HX-Request": "true"}
    app.test_client().get(f"/events/{event_id}", headers=hx)  # the HTMX variant's copy
    registrations.register(get_db(app).unit_of_work, event_id, "Cid", "cid@example.com")
    for headers in ({}, hx):
        page = app.test_client().get(f"/events/{event_id}", headers=headers)
        assert page.headers["X-Cache"] == "HIT", headers
        assert "1 person waiting" in page.get_data(as_text=True), headers


def test_pages_are_not_stored_shortly_before_an_event_starts(
    app: Flask, create_event: Callable[..., int]
) -> None:
    """A copy must not keep offering the form after the event has started."""
    # a copy lives up to the page TTL in Redis plus the near-cache TTL in a process
    ttl = int(app.config["CACHE_TTL_PAGE_OUTPUT"]) + int(app.config["CACHE_NEAR_TTL_SECONDS"])
    event_id = create_event(start_date=datetime.now(UTC) + timedelta(seconds=ttl - 5))
    client = app.test_client()
    assert client.get(f"/events/{event_id}").headers["X-Cache"] == "MISS"
    assert client.get(f"/events/{event_id}").headers["X-Cache"] == "MISS"
    # the list shows it as open: not stored either, until the event has started
    assert client.get("/").headers["X-Cache"] == "MISS"
    assert client.get("/").headers["X-Cache"] == "MISS"
    assert cached_pages(app) == []


# -- switched off ------------------------------------------------------------------------
def test_cache_enabled_false_reads_the_database_every_time(db_url: str, redis_url: str) -> None:
    app = make_app(db_url, redis_url, CACHE_ENABLED=False)
    try:
        client = app.test_client()
        with app.app_context():
            from webapp.services.events import EventDetails, create_event

            event_id = create_event(
                get_db(app).unit_of_work,
                EventDetails("Solo", "", "", datetime.now(UTC) + timedelta(days=1)),
                2,
            )
        for _ in range(2):
            assert statements_for(app, client, "/") == 1
            assert statements_for(app, client, f"/events/{event_id}") == 1
        register(app, event_id, "Ann")
        assert "1 of 2" in text_of(client, "/")
        assert client.get("/").headers["X-Cache"] == "BYPASS"
        assert redis.Redis.from_url(next_redis_db(redis_url)).dbsize() == 0
    finally:
        get_db(app).dispose()


def test_warming_at_start_fills_the_list_and_the_hottest_events(
    db_url: str, redis_url: str
) -> None:
    seed = make_app(db_url, redis_url)
    uow = get_db(seed).unit_of_work
    start = datetime.now(UTC) + timedelta(days=3)
    ids = [
        event_service.create_event(uow, event_service.EventDetails(f"E{i}", "", "", start), 5)
        for i in range(3)
    ]
    register(seed, ids[2], "Ann")
    get_db(seed).dispose()

    app = make_app(db_url, redis_url, CACHE_WARM=True)
    try:
        warmer = app.extensions["les.cache_warmer"]
        assert warmer.wait_idle(10) and warmer.runs >= 1
        client = app.test_client()
        with sql_statements(app) as seen:
            assert client.get(f"/events/{ids[2]}").status_code == 200
            assert client.get("/").status_code == 200
        assert seen == []
    finally:
        get_db(app).dispose()
