"""Reads for the pages. Views call these, never the queries directly, so the cache
sits in one place (``webapp.adapters.cache``).

Every function returns plain dicts (see ``webapp.adapters.queries``), freshly built
on each call, so a view may add keys to them.

How the pages combine the regions: an event is its slow-changing *details*
(region ``event_details``: ``event:<id>``, and ``upcoming`` for the list) plus its
fast-changing *counts* (region ``registration_counts``: ``counts:<id>``, capacity,
confirmed, waitlist length). A registration is the ``user_information`` record
(``registration:<uuid>``) plus its event's details plus, while waiting, its position
(region ``waitlist_positions``). Every write drops exactly the keys it changed right
after its commit (``webapp.services.cache_invalidation``), so the person who wrote
sees the new counts and position on the next page; the details survive the
registrations that do not change them.

``event_attendees`` and ``all_events`` (organiser pages) are never cached.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from flask import Flask

from webapp.adapters import queries
from webapp.adapters.cache import (
    EVENT_DETAILS,
    REGISTRATION_COUNTS,
    USER_INFORMATION,
    WAITLIST_POSITIONS,
    Slot,
    get_cache,
    init_cache,
)
from webapp.adapters.cache import cache_stats as cache_stats
from webapp.extensions import get_db
from webapp.services.unit_of_work import utcnow

log = logging.getLogger(__name__)

#: the event list is cached as one value of this many upcoming events
LIST_SIZE = 100
HOTTEST_EVENTS = 10
UPCOMING_KEY = "upcoming"

_DETAIL_FIELDS = ("id", "title", "venue", "start_date", "registration_open")
_COUNT_FIELDS = ("capacity", "confirmed_count", "waitlist_count")


def event_key(event_id: int) -> str:
    return f"event:{event_id}"


def counts_key(event_id: int) -> str:
    return f"counts:{event_id}"


def registration_key(registration_id: uuid.UUID | str) -> str:
    return f"registration:{registration_id}"


def waitlist_key(event_id: int) -> str:
    return f"waitlist:{event_id}"


def _details(row: dict[str, Any]) -> dict[str, Any]:
    details = {name: row[name] for name in _DETAIL_FIELDS}
    if "description" in row:
        details["description"] = row["description"]
    return details


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _COUNT_FIELDS}


def _with_seats_left(counts: dict[str, Any]) -> dict[str, Any]:
    return {**counts, "seats_left": max(counts["capacity"] - counts["confirmed_count"], 0)}


def _compose(details: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    return {**details, **_with_seats_left(counts)}


def _connect() -> Any:
    return get_db().engine.connect()


# -- public reads --------------------------------------------------------------------------
def upcoming_events(limit: int = 100) -> list[dict[str, Any]]:
    """Events that have not started, soonest first, with their live counts."""
    layer = get_cache()
    now = utcnow()
    if not layer.enabled or limit > LIST_SIZE:
        with _connect() as conn:
            return queries.upcoming_events(conn, now, limit)
    list_slot = Slot(EVENT_DETAILS, UPCOMING_KEY)

    def load_list(_missing: list[Slot]) -> dict[Slot, Any]:
        with _connect() as conn:
            rows = queries.upcoming_events(conn, utcnow(), LIST_SIZE)
        return {list_slot: [_details(row) for row in rows]}

    listed = layer.fetch([list_slot], load_list).get(list_slot, [])
    if any(item["start_date"] <= now for item in listed):
        layer.invalidate({UPCOMING_KEY})  # an event started since the list was cached
        listed = layer.fetch([list_slot], load_list).get(list_slot, [])
    listed = [item for item in listed if item["start_date"] > now][:limit]
    counts = event_counts([item["id"] for item in listed])
    return [_compose(item, counts[item["id"]]) for item in listed if item["id"] in counts]


def event_counts(event_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Capacity, confirmed count and waitlist length per event (region registration_counts);
    the missing ones are loaded together in one statement."""
    layer = get_cache()
    slots = {Slot(REGISTRATION_COUNTS, counts_key(event_id)): event_id for event_id in event_ids}

    def load(missing: list[Slot]) -> dict[Slot, Any]:
        with _connect() as conn:
            rows = queries.event_counts(conn, [slots[slot] for slot in missing])
        return {slot: _counts(rows[slots[slot]]) for slot in missing if slots[slot] in rows}

    found = layer.fetch(list(slots), load)
    return {slots[slot]: value for slot, value in found.items()}


def event_seats(event_id: int) -> dict[str, Any] | None:
    """An event's capacity, confirmed count, waitlist length and seats left (the live
    parts of its page), or None."""
    counts = event_counts([event_id]).get(event_id)
    return _with_seats_left(counts) if counts is not None else None


def event_detail(event_id: int) -> dict[str, Any] | None:
    """One event with its description and live counts, or None."""
    layer = get_cache()
    details_slot = Slot(EVENT_DETAILS, event_key(event_id))
    counts_slot = Slot(REGISTRATION_COUNTS, counts_key(event_id))

    def load(missing: list[Slot]) -> dict[Slot, Any]:
        with _connect() as conn:
            if missing == [counts_slot]:
                rows = queries.event_counts(conn, [event_id])
                return {counts_slot: _counts(rows[event_id])} if event_id in rows else {}
            row = queries.event_detail(conn, event_id)
        if row is None:
            return {}
        loaded = {details_slot: _details(row), counts_slot: _counts(row)}
        return {slot: loaded[slot] for slot in missing}

    found = layer.fetch([details_slot, counts_slot], load)
    if details_slot not in found or counts_slot not in found:
        return None
    return _compose(found[details_slot], found[counts_slot])


def event_details(event_id: int) -> dict[str, Any] | None:
    """An event's slow-changing details (no counts): title, description, venue, start
    date, registration open; or None. What a registration POST checks before locking."""
    slot = Slot(EVENT_DETAILS, event_key(event_id))

    def load() -> dict[str, Any] | None:
        with _connect() as conn:
            row = queries.event_detail(conn, event_id)
        return _details(row) if row else None

    return get_cache().get(slot, load)  # type: ignore[no-any-return]


def registration_status(registration_id: uuid.UUID | str) -> dict[str, Any] | None:
    """A person's registration with its event and live waitlist position, or None.

    Keys: registration_id, event_id, status, queue_key, created_at, cancelled_at,
    name, email, event_title, start_date, venue, position (None unless waiting).
    """
    registration_id = uuid.UUID(str(registration_id))
    layer = get_cache()
    if not layer.enabled:
        with _connect() as conn:
            return queries.registration_status(conn, registration_id)

    def load_record() -> dict[str, Any] | None:
        with _connect() as conn:
            return queries.registration_record(conn, registration_id)

    record = layer.get(Slot(USER_INFORMATION, registration_key(registration_id)), load_record)
    if record is None:
        return None
    event_id = record["event_id"]
    details = event_details(event_id)
    if details is None:
        return None
    view = {
        **record,
        "event_title": details["title"],
        "start_date": details["start_date"],
        "venue": details["venue"],
        "position": None,
    }
    if record["status"] == queries.WAITLISTED and record["queue_key"] is not None:
        queue_key = int(record["queue_key"])

        def load_position() -> int:
            with _connect() as conn:
                return queries.waitlist_position(conn, event_id, queue_key)

        slot = Slot(WAITLIST_POSITIONS, waitlist_key(event_id), field=str(queue_key))
        view["position"] = layer.get(slot, load_position)
    return view


def event_attendees(event_id: int) -> list[dict[str, Any]]:
    """Organiser view: never cached (personal data, must be exact)."""
    with _connect() as conn:
        return queries.event_attendees(conn, event_id)


def all_events() -> list[dict[str, Any]]:
    """Organiser list: never cached."""
    with _connect() as conn:
        return queries.all_events(conn)


# -- warming and refreshing ----------------------------------------------------------------
def warm(hottest: int = HOTTEST_EVENTS) -> int:
    """Fill the cache with the event list and the hottest events (most registrations).
    Loads only what is missing (not counted as lookups); returns how many hot events
    were looked at."""
    with get_cache().uncounted():
        upcoming_events()
        with _connect() as conn:
            ids = queries.hottest_event_ids(conn, utcnow(), hottest)
        for event_id in ids:
            event_detail(event_id)
    return len(ids)


def refresh_counts(app: Flask, event_ids: set[int]) -> None:
    """Reload the counts of these events now (one statement) and store them, unless a
    newer write's invalidation overtakes the load."""
    layer = get_cache(app)
    if not layer.enabled or not event_ids:
        return
    engine = get_db(app).engine
    by_slot = {Slot(REGISTRATION_COUNTS, counts_key(e)): e for e in event_ids}

    def load_counts(missing: list[Slot]) -> dict[Slot, Any]:
        with engine.connect() as conn:
            rows = queries.event_counts(conn, [by_slot[slot] for slot in missing])
        return {slot: _counts(rows[by_slot[slot]]) for slot in missing if by_slot[slot] in rows}

    layer.refresh(list(by_slot), load_counts)


def refresh_registrations(app: Flask, registration_ids: set[str]) -> None:
    """Refresh-ahead, right after a commit's invalidation: reload the registrations it
    changed, with the position of a waiting one, because the writer's next page reads
    exactly these. Guarded like every store: a newer write's invalidation wins."""
    layer = get_cache(app)
    engine = get_db(app).engine
    if not layer.enabled:
        return
    for registration_id in sorted(registration_ids):
        with engine.connect() as conn:
            _refresh_registration(layer, conn, registration_id)


def _refresh_registration(layer: Any, conn: Any, registration_id: str) -> None:
    slot = Slot(USER_INFORMATION, registration_key(registration_id))
    loaded = layer.refresh(
        [slot], lambda _m: {slot: queries.registration_record(conn, registration_id)}
    )
    record = loaded.get(slot)
    if not record or record["status"] != queries.WAITLISTED or not record["queue_key"]:
        return
    event_id, queue_key = record["event_id"], int(record["queue_key"])
    position = Slot(WAITLIST_POSITIONS, waitlist_key(event_id), field=str(queue_key))
    layer.refresh(
        [position], lambda _m: {position: queries.waitlist_position(conn, event_id, queue_key)}
    )


class Warmer:
    """Warms in a background thread: at start and after invalidations of the list.

    Requests are coalesced: a burst of writes causes one warm-up after ``delay``, and
    warm-ups are at least ``min_interval`` apart. Errors are logged and swallowed.
    """

    def __init__(self, app: Flask, delay: float = 0.2, min_interval: float = 1.0) -> None:
        self.app = app
        self.delay = delay
        self.min_interval = min_interval
        self.runs = 0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        self._idle.clear()
        self._wake.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cache-warmer", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests: True once no warm-up is pending or running."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.delay)
            self._wake.clear()
            try:
                with self.app.app_context():
                    warm()
            except Exception:
                log.warning("cache warm-up failed", exc_info=True)
            self.runs += 1
            if not self._wake.is_set():
                self._idle.set()
            time.sleep(self.min_interval)


class Refresher:
    """Runs refresh-ahead (``refresh_registrations``) on a background thread, so the
    writing request only pays for the invalidation. Writes that arrive while a
    refresh runs are merged into the next one. Errors are logged and swallowed: the
    stale keys are gone already, a failed refresh only costs a later miss."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._pending_registrations: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def submit(self, registration_ids: set[str]) -> None:
        with self._lock:
            self._pending_registrations |= registration_ids
            self._idle.clear()
            self._wake.set()
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()  # a forked child has no thread of its parent's
                self._thread = threading.Thread(
                    target=self._run, name="cache-refresher", daemon=True
                )
                self._thread.start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests: True once no refresh is pending or running."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                registration_ids, self._pending_registrations = self._pending_registrations, set()
            try:
                refresh_registrations(self.app, registration_ids)
            except Exception:
                log.warning("cache refresh after commit failed", exc_info=True)
            with self._lock:
                if not self._wake.is_set():
                    self._idle.set()


def _warming_enabled(app: Flask) -> bool:
    setting = str(app.config.get("CACHE_WARM", "auto")).strip().lower()
    if setting == "auto":
        return app.config.get("ENV") != "testing"
    return setting in {"1", "true", "yes", "on"}


def init_app(app: Flask) -> None:
    """Set up the cache, its after-commit invalidation and warming (CACHE_WARM,
    default on except under ENV=testing)."""
    from webapp.services import cache_invalidation

    layer = init_cache(app)
    warmer = Warmer(app) if layer.enabled and _warming_enabled(app) else None
    refresher = Refresher(app)
    app.extensions["les.cache_warmer"] = warmer
    app.extensions["les.cache_refresher"] = refresher
    get_db(app).background.extend(h for h in (refresher, warmer) if h is not None)

    def refresh(event_ids: set[int], registration_ids: set[str]) -> None:
        """Counts the commit could not store itself, now, in the writing request: every
        page of the event (the form the next attendee opens, the list) reads them, and
        a background refresh lost the race against the browser's redirect, so the load
        ran twice. Records later, on the refresh-ahead thread."""
        refresh_counts(app, event_ids)
        if registration_ids:
            refresher.submit(registration_ids)

    if layer.enabled:
        get_db(app).before_commit.append(cache_invalidation.make_prepare_hook(layer))
    get_db(app).after_commit.append(
        cache_invalidation.make_hook(
            layer, on_invalidated=warmer.request if warmer else None, refresh=refresh
        )
    )
    if warmer is not None:  # the first warm-up, once the process may run threads
        app.extensions.setdefault("les.process_start", []).append(warmer.request)


__all__ = [
    "all_events",
    "cache_stats",
    "event_attendees",
    "event_counts",
    "event_detail",
    "event_details",
    "event_seats",
    "init_app",
    "refresh_counts",
    "refresh_registrations",
    "registration_status",
    "upcoming_events",
    "warm",
]
