"""Fast seeding of the benchmark database with COPY (psycopg 3).

Counters stay consistent with the rows: ``Events.ConfirmedCount`` / ``WaitlistCount`` /
``LastQueueKey`` match the seeded registrations, waitlisted rows carry queue keys
1..N in order, so promotions and positions behave exactly as after real traffic.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.tracebacks import FAILURES
from webapp.config import default


@dataclass
class SeedPlan:
    """How many events of each kind, and their sizes."""

    open_events: int = 100  # huge capacity, some seats taken: registration into free seats
    open_capacity: int = 100_000
    open_confirmed: int = 100
    full_events: int = 60  # full with long waitlists: waitlist registrations, cancellations
    full_capacity: int = 300
    full_waitlist: int = 600
    mid_events: int = 40  # nearly full, no waitlist: list/detail variety
    mid_capacity: int = 1000
    mid_confirmed: int = 900
    hot_events: int = 4  # one fresh event per hot-event run (all clients on it)
    hot_capacity: int = 1000
    hot_confirmed: int = 970  # 30 seats left: every run crosses from seats to the waitlist

    @property
    def registrations(self) -> int:
        return (
            self.open_events * self.open_confirmed
            + self.full_events * (self.full_capacity + self.full_waitlist)
            + self.mid_events * self.mid_confirmed
            + self.hot_events * self.hot_confirmed
        )

    @property
    def events(self) -> int:
        return self.open_events + self.full_events + self.mid_events + self.hot_events


@dataclass
class Seeded:
    open_ids: list[int] = field(default_factory=list)
    full_ids: list[int] = field(default_factory=list)
    mid_ids: list[int] = field(default_factory=list)
    hot_ids: list[int] = field(default_factory=list)
    #: confirmed registrations in full events (cancelling one promotes the waitlist head)
    cancellable: list[str] = field(default_factory=list)
    events: int = 0
    registrations: int = 0
    users: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "registrations": self.registrations,
            "users": self.users,
            "open_events": len(self.open_ids),
            "full_events": len(self.full_ids),
            "mid_events": len(self.mid_ids),
            "hot_events": len(self.hot_ids),
            "seconds": round(self.seconds, 2),
        }


#: ``WAITLIST_NOTICE_MAX_POSITION`` of the benchmark's app (its default)
NOTICE_MAX_POSITION = int(default("WAITLIST_NOTICE_MAX_POSITION"))


def seed(conninfo: str, plan: SeedPlan, rng: random.Random | None = None) -> Seeded:
    """Insert events, users and registrations; returns the ids the scenarios use."""
    import time

    started = time.perf_counter()
    rng = rng or random.Random(42)
    now = datetime.now(UTC)
    result = Seeded()
    event_rows: list[tuple[Any, ...]] = []
    user_rows: list[tuple[Any, ...]] = []
    reg_rows: list[tuple[Any, ...]] = []
    next_id = 0

    def add_event(kind: str, capacity: int, confirmed: int, waitlist: int) -> int:
        nonlocal next_id
        next_id += 1
        start = now + timedelta(days=7 + next_id % 90, hours=next_id % 24)
        event_rows.append(
            (
                next_id,
                f"{kind.title()} event {next_id}: a talk about something interesting",
                "Seeded by the benchmark. " * 8,
                f"Room {next_id % 17}",
                start,
                capacity,
                confirmed,
                waitlist,
                waitlist,
                True,
                now,
                now,
            )
        )
        for n in range(confirmed + waitlist):
            user_id = uuid.uuid4()
            reg_id = uuid.uuid4()
            user_rows.append(
                (user_id, f"Seeded Person {next_id}-{n}", f"s{next_id}-{n}@seed.example.com", now)
            )
            waiting = n >= confirmed
            reg_rows.append(
                (
                    reg_id,
                    next_id,
                    user_id,
                    "Waitlisted" if waiting else "Confirmed",
                    n - confirmed + 1 if waiting else None,
                    now,
                    now,
                    None if waiting else now,
                )
            )
            if kind == "full" and not waiting:
                result.cancellable.append(str(reg_id))
        return next_id

    for _ in range(plan.open_events):
        result.open_ids.append(add_event("open", plan.open_capacity, plan.open_confirmed, 0))
    for _ in range(plan.full_events):
        result.full_ids.append(
            add_event("full", plan.full_capacity, plan.full_capacity, plan.full_waitlist)
        )
    for _ in range(plan.mid_events):
        result.mid_ids.append(add_event("mid", plan.mid_capacity, plan.mid_confirmed, 0))
    for _ in range(plan.hot_events):
        result.hot_ids.append(add_event("hot", plan.hot_capacity, plan.hot_confirmed, 0))
    rng.shuffle(result.cancellable)

    with psycopg.connect(conninfo, autocommit=False) as conn, conn.cursor() as cur:
        with cur.copy(
            'COPY "Events" ("Id", "Title", "Description", "Venue", "StartDate", "Capacity", '
            '"ConfirmedCount", "WaitlistCount", "LastQueueKey", "RegistrationOpen", '
            '"CreatedAt", "UpdatedAt") FROM STDIN'
        ) as copy:
            for row in event_rows:
                copy.write_row(row)
        cur.execute("SELECT setval(pg_get_serial_sequence('\"Events\"', 'Id'), %s)", (next_id,))
        with cur.copy('COPY "Users" ("Id", "Name", "Email", "CreatedAt") FROM STDIN') as copy:
            for row in user_rows:
                copy.write_row(row)
        with cur.copy(
            'COPY "EventRegistrations" ("Id", "EventId", "UserId", "Status", '
            '"PositionInQueue", "CreatedAt", "UpdatedAt", "ConfirmedAt") FROM STDIN'
        ) as copy:
            for row in reg_rows:
                copy.write_row(row)
        # a running service has told the people near a seat where they stand (a notice
        # when they came within WAITLIST_NOTICE_MAX_POSITION places): without these
        # rows, the first move of every seeded waitlist would mail all of them
        cur.execute(
            'INSERT INTO "WaitlistNotices" ("RegistrationId", "Position", "NotifiedAt") '
            'SELECT "Id", "PositionInQueue", %s FROM "EventRegistrations" '
            'WHERE "Status" = \'Waitlisted\' AND "PositionInQueue" <= %s',
            (now, NOTICE_MAX_POSITION),
        )
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE")
    result.events = len(event_rows)
    result.users = len(user_rows)
    result.registrations = len(reg_rows)
    result.seconds = time.perf_counter() - started
    return result


DEAD_LETTER_TYPES = [
    "RegistrationCreated",
    "RegistrationPromoted",
    "WaitlistPositionChanged",
    "RegistrationCancelled",
]


def seed_dead_letters(
    conninfo: str, count: int, event_ids: list[int], rng: random.Random | None = None
) -> float:
    """Insert ``count`` dead-lettered outbox messages (varied types, error classes,
    fingerprints, dates over two weeks, events) with one failed attempt row each, in
    one INSERT ... SELECT generate_series; returns seconds. Their errors are real-sized
    tracebacks (:mod:`bench.tracebacks`, 2-4 KB) with the summary the worker writes."""
    import time

    del rng  # deterministic from the row number
    started = time.perf_counter()
    sql = """
    WITH rows AS (
      SELECT g,
             (%(types)s::text[])[1 + g %% cardinality(%(types)s::text[])] AS type,
             1 + ((g / 4) * 7919) %% cardinality(%(classes)s::text[]) AS k,
             (%(events)s::int[])[1 + (g * 104729) %% cardinality(%(events)s::int[])] AS event_id,
             now() - ((g * 48271) %% (14 * 86400)) * interval '1 second' AS created
      FROM generate_series(1::bigint, %(count)s) AS g
    ), inserted AS (
      INSERT INTO "OutboxMessages" ("Id", "Type", "Data", "CreatedAt", "Error", "ErrorSummary",
          "RetryCount", "MaxRetryCount", "ErrorType", "Fingerprint", "DeadLetteredAt",
          "EventId", "ReplayCount")
      SELECT gen_random_uuid(), type,
             json_build_object('event_id', event_id, 'registration_id', gen_random_uuid(),
                               'attendee_id', gen_random_uuid(), 'status', 'Confirmed')::text,
             created,
             replace((%(errors)s::text[])[k], '{n}', g::text),
             left(replace((%(summaries)s::text[])[k], '{n}', g::text), 300),
             3, 3, (%(classes)s::text[])[k],
             substr(md5(type || '|' || (%(classes)s::text[])[k] || '|'
                        || (%(frames)s::text[])[k]), 1, 16),
             created + interval '35 seconds', event_id, 0
      FROM rows
      RETURNING "Id", "DeadLetteredAt", "ErrorType", "Error"
    )
    INSERT INTO "OutboxAttempts" ("MessageId", "AttemptedAt", "Worker", "DurationMs",
        "Succeeded", "ErrorType", "Error")
    SELECT "Id", "DeadLetteredAt", 'bench-worker', 12, false, "ErrorType", "Error"
    FROM inserted
    """
    params = {
        "types": DEAD_LETTER_TYPES,
        "classes": [f.name for f in FAILURES],
        "errors": [f.error() for f in FAILURES],
        "summaries": [f.summary() for f in FAILURES],
        "frames": [f.frame for f in FAILURES],
        "events": event_ids,
        "count": count,
    }
    with psycopg.connect(conninfo) as conn:
        # a bulk load then one index build beats 100,000 incremental GIN (trigram)
        # insertions; the indexes come back with their exact definitions
        gin = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'OutboxMessages' "
            "AND indexdef ILIKE '%% USING gin %%'"
        ).fetchall()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for name, _ in gin:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute(sql, params)
        for _, definition in gin:
            conn.execute(definition)
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute('ANALYZE "OutboxMessages"')
        conn.execute('ANALYZE "OutboxAttempts"')
    return time.perf_counter() - started
