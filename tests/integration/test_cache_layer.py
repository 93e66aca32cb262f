"""The cache layer on a real Redis: single-flight loads, stores that lose to
invalidations, region TTLs, counters, JSON values."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from webapp.adapters.cache import (
    EVENT_DETAILS,
    PAGE_OUTPUT,
    REGIONS,
    REGISTRATION_COUNTS,
    USER_INFORMATION,
    WAITLIST_POSITIONS,
    CacheLayer,
    Slot,
)
from webapp.config import next_redis_db
from webapp.observability.metrics import CACHE_REQUESTS

pytestmark = pytest.mark.redis

TTLS = {
    "event_details": 300,
    "registration_counts": 120,
    "user_information": 600,
    "waitlist_positions": 60,
    "page_output": 30,
}


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(next_redis_db(redis_url))


def make_layer(client: redis.Redis, **kw: Any) -> CacheLayer:
    return CacheLayer(client, f"t{uuid.uuid4().hex[:6]}:", TTLS, **kw)


class CountingLoader:
    def __init__(self, value: Any, delay: float = 0.1) -> None:
        self.value = value
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)  # a slow query: everyone else arrives meanwhile
        return self.value


def expire(layer: CacheLayer, client: redis.Redis, key: str) -> None:
    client.pexpire(layer.prefix + key, 1)
    time.sleep(0.01)
    assert client.get(layer.prefix + key) is None


def read_concurrently(layers: list[CacheLayer], slot: Slot, loader: CountingLoader, n: int) -> list:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def reader(i: int) -> None:
        barrier.wait()
        results[i] = layers[i % len(layers)].get(slot, loader)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_fifty_concurrent_readers_of_an_expired_key_cause_one_load(client: redis.Redis) -> None:
    layer = make_layer(client)
    slot = Slot(EVENT_DETAILS, "event:1")
    layer.get(slot, lambda: {"title": "old"})
    expire(layer, client, "event:1")
    loader = CountingLoader({"title": "Concert"})

    results = read_concurrently([layer], slot, loader, 50)

    assert loader.calls == 1
    assert results == [{"title": "Concert"}] * 50


def test_readers_in_two_processes_share_one_load(client: redis.Redis) -> None:
    """Two layers = two processes (separate in-process locks): the Redis lock
    makes the second process wait for the first one's value."""
    first = make_layer(client)
    second = CacheLayer(client, first.prefix, TTLS)
    slot = Slot(REGISTRATION_COUNTS, "counts:9")
    loader = CountingLoader({"confirmed_count": 3}, delay=0.2)

    results = read_concurrently([first, second], slot, loader, 50)

    assert loader.calls == 1
    assert results == [{"confirmed_count": 3}] * 50


def test_a_load_that_raced_an_invalidation_is_not_stored(client: redis.Redis) -> None:
    """A reader loaded the old row, then a write committed and invalidated: the old
    value must not land in the cache after the invalidation."""
    layer = make_layer(client)
    slot = Slot(REGISTRATION_COUNTS, "counts:1")

    def load_then_a_write_commits() -> dict[str, int]:
        value = {"confirmed_count": 1}  # read before the commit
        layer.invalidate({"counts:1"})  # the writer's after-commit hook
        return value

    assert layer.get(slot, load_then_a_write_commits) == {"confirmed_count": 1}
    assert client.get(layer.prefix + "counts:1") is None
    assert layer.get(slot, lambda: {"confirmed_count": 2}) == {"confirmed_count": 2}
    assert layer.get(slot, lambda: pytest.fail("should be cached")) == {"confirmed_count": 2}


def test_invalidating_a_waitlist_drops_every_cached_position(client: redis.Redis) -> None:
    layer = make_layer(client)
    for queue_key, position in ((5, 1), (8, 2)):
        slot = Slot(WAITLIST_POSITIONS, "waitlist:4", field=str(queue_key))
        assert layer.get(slot, lambda p=position: p) == position
    assert client.hlen(layer.prefix + "waitlist:4") == 2

    layer.invalidate({"waitlist:4"})

    slot = Slot(WAITLIST_POSITIONS, "waitlist:4", field="8")
    assert layer.get(slot, lambda: 1) == 1


def test_each_region_keeps_values_for_its_own_ttl(client: redis.Redis) -> None:
    layer = make_layer(client)
    for region in REGIONS:
        layer.get(Slot(region, f"k:{region}"), lambda: {"x": 1})
        ttl = client.pttl(layer.prefix + f"k:{region}") / 1000
        assert TTLS[region] - 2 < ttl <= TTLS[region], region
    layer.get(Slot(WAITLIST_POSITIONS, "waitlist:1", field="3"), lambda: 2)
    assert 58 < client.pttl(layer.prefix + "waitlist:1") / 1000 <= 60


def test_values_are_json_and_keep_datetimes_and_uuids(client: redis.Redis) -> None:
    layer = make_layer(client)
    value = {"at": datetime(2026, 5, 1, 18, 30, tzinfo=UTC), "id": uuid.uuid4(), "n": [1, None]}
    layer.get(Slot(EVENT_DETAILS, "event:2"), lambda: value)

    raw = client.get(layer.prefix + "event:2")
    assert raw is not None and raw.startswith(b"{")  # JSON, never pickle
    assert layer.get(Slot(EVENT_DETAILS, "event:2"), lambda: None) == value


def test_missing_rows_are_not_cached(client: redis.Redis) -> None:
    layer = make_layer(client)
    slot = Slot(EVENT_DETAILS, "event:404")
    assert layer.get(slot, lambda: None) is None
    assert layer.get(slot, lambda: {"title": "created since"}) == {"title": "created since"}


def counter(region: str, result: str) -> float:
    return float(CACHE_REQUESTS.labels(region, result)._value.get())


def test_hits_misses_go_to_prometheus_and_the_shared_counters_alike(
    client: redis.Redis,
) -> None:
    layer = make_layer(client)
    before = {r: counter(EVENT_DETAILS, r) for r in ("hit", "miss")}
    slots = [Slot(EVENT_DETAILS, f"event:{i}") for i in range(3)]

    layer.fetch(slots, lambda missing: {s: {"i": s.key} for s in missing})  # 3 misses
    for _ in range(3):
        layer.fetch(slots, lambda missing: pytest.fail("cached"))  # 9 hits

    assert counter(EVENT_DETAILS, "miss") - before["miss"] == 3
    assert counter(EVENT_DETAILS, "hit") - before["hit"] == 9
    assert layer.shared_counts()[(EVENT_DETAILS, "hit")] == 9
    assert layer.shared_counts(5)[(EVENT_DETAILS, "miss")] == 3
    assert (REGISTRATION_COUNTS, "hit") not in layer.shared_counts()


def test_disabled_layer_always_loads_and_counts_nothing(client: redis.Redis) -> None:
    layer = make_layer(client, enabled=False)
    loader = CountingLoader({"a": 1}, delay=0)
    slot = Slot(EVENT_DETAILS, "event:1")
    for _ in range(3):
        assert layer.get(slot, loader) == {"a": 1}
    assert loader.calls == 3
    assert client.keys(layer.prefix + "*") == []


def test_refresh_ahead_stores_without_counting_and_loses_to_a_later_write(
    client: redis.Redis,
) -> None:
    layer = make_layer(client)
    slot = Slot(REGISTRATION_COUNTS, "counts:3")
    misses = counter(REGISTRATION_COUNTS, "miss")

    layer.refresh([slot], lambda missing: {slot: {"confirmed_count": 1}})
    assert counter(REGISTRATION_COUNTS, "miss") == misses
    assert layer.get(slot, lambda: pytest.fail("refreshed")) == {"confirmed_count": 1}

    def overtaken(_missing: list[Slot]) -> dict[Slot, Any]:
        layer.invalidate({"counts:3"})  # a newer commit's hook runs during the load
        return {slot: {"confirmed_count": 2}}

    layer.refresh([slot], overtaken)
    assert client.get(layer.prefix + "counts:3") is None


def test_warming_lookups_are_not_counted(client: redis.Redis) -> None:
    layer = make_layer(client)
    before = counter(EVENT_DETAILS, "miss"), counter(EVENT_DETAILS, "hit")
    with layer.uncounted():
        layer.get(Slot(EVENT_DETAILS, "event:8"), lambda: {"t": 1})
        layer.get(Slot(EVENT_DETAILS, "event:8"), lambda: {"t": 1})
    assert (counter(EVENT_DETAILS, "miss"), counter(EVENT_DETAILS, "hit")) == before
    layer.get(Slot(EVENT_DETAILS, "event:8"), lambda: {"t": 1})
    assert counter(EVENT_DETAILS, "hit") == before[1] + 1


@pytest.mark.parametrize(
    "slot",
    [Slot(PAGE_OUTPUT, "page:public.event_list:full"), Slot(USER_INFORMATION, "registration:r1")],
    ids=["page_output", "user_information"],
)
def test_unlocked_regions_load_once_per_process_without_a_redis_lock(
    client: redis.Redis, slot: Slot
) -> None:
    """A page render reads cached data only, a registration's record is read by one
    person: threads of a process share one load, but no cross-process lock (two extra
    round trips per miss) is taken."""
    layer = make_layer(client)
    locks_seen: list[int] = []

    class Render(CountingLoader):
        def __call__(self) -> Any:
            locks_seen.append(len(client.keys(layer.prefix + "lock:*")))
            return super().__call__()

    loader = Render({"body": "<html>"})
    results = read_concurrently([layer], slot, loader, 20)

    assert loader.calls == 1
    assert results == [{"body": "<html>"}] * 20
    assert locks_seen == [0]
    assert client.get(layer.prefix + slot.key) is not None  # stored for the others


class _CountingConnection(redis.Connection):
    """Counts what is sent to Redis: one call per command or per pipeline."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


@pytest.mark.parametrize(
    ("region", "round_trips"),
    [
        (EVENT_DETAILS, 5),  # read, generations + lock, read again, store, release
        (PAGE_OUTPUT, 3),  # read, generations, store (no cross-process lock)
    ],
)
def test_a_miss_costs_a_fixed_number_of_round_trips_and_a_hit_one(
    redis_url: str, region: str, round_trips: int
) -> None:
    """The Lua stores and lock releases travel inside their pipelines (no SCRIPT EXISTS
    ahead of each), so a miss is a fixed, small number of round trips."""
    pool = redis.ConnectionPool.from_url(
        next_redis_db(redis_url), connection_class=_CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    client.ping()  # the connection's handshake is not the miss's
    layer = make_layer(client, stats_flush_interval=3600)  # no counter flush meanwhile
    slot = Slot(region, f"k{uuid.uuid4().hex[:6]}")

    before = _CountingConnection.sent
    assert layer.get(slot, lambda: {"title": "Launch"}) == {"title": "Launch"}
    assert _CountingConnection.sent - before == round_trips

    before = _CountingConnection.sent
    assert layer.get(slot, lambda: pytest.fail("a hit must not load")) == {"title": "Launch"}
    assert _CountingConnection.sent - before == 1
    pool.disconnect()


def test_a_writers_own_value_is_stored_only_right_after_the_generation_it_read(
    client: redis.Redis,
) -> None:
    """A write stores what it knows to be current with its invalidation, given the
    key's generation read before it committed. If another write's invalidation came in
    between (newer state, or overtaken by this one), the value stays out."""
    layer = make_layer(client)
    new, overtaken = (Slot(USER_INFORMATION, f"registration:{uuid.uuid4()}") for _ in range(2))

    # a key that did not exist before the write: generation "0"
    assert layer.invalidate_and_store({new.key}, {new: ({"status": "Confirmed"}, "0")}) == {new}
    assert layer.get(new, lambda: pytest.fail("stored with the commit")) == {"status": "Confirmed"}
    assert layer.invalidate({new.key})  # a later write drops it as usual
    assert layer.get(new, lambda: {"status": "Cancelled"}) == {"status": "Cancelled"}

    assert layer.invalidate({overtaken.key})  # the newer write's invalidation came first
    stale = {overtaken: ({"status": "Waitlisted"}, "0")}
    assert layer.invalidate_and_store({overtaken.key}, stale) == set()
    assert client.get(layer.prefix + overtaken.key) is None
    assert layer.get(overtaken, lambda: {"status": "Confirmed"}) == {"status": "Confirmed"}

    # an existing key: the generation read before the write
    counts = Slot(REGISTRATION_COUNTS, f"counts:{uuid.uuid4().hex[:6]}")
    layer.get(counts, lambda: {"confirmed_count": 1})
    [seen] = layer.read_before_write([counts.key], [])[0].values()  # type: ignore[index]
    assert layer.invalidate_and_store({counts.key}, {counts: ({"confirmed_count": 2}, seen)})
    assert layer.get(counts, lambda: pytest.fail("stored")) == {"confirmed_count": 2}
    assert layer.invalidate({counts.key})  # another write in between ...
    late = {counts: ({"confirmed_count": 3}, seen)}
    assert layer.invalidate_and_store({counts.key}, late) == set()  # ... keeps it out
    assert layer.get(counts, lambda: {"confirmed_count": 4}) == {"confirmed_count": 4}


def test_a_writers_new_hash_field_joins_the_hash_only_under_the_generation_it_read(
    client: redis.Redis,
) -> None:
    """A new waiting registration's position is added to its event's cached positions
    (a key the write does not invalidate) only if no invalidation of that key came
    after the generation read before the commit; the other positions stay."""
    layer = make_layer(client)
    key = f"waitlist:{uuid.uuid4().hex[:6]}"
    first, second, third = (Slot(WAITLIST_POSITIONS, key, field=str(q)) for q in (1, 2, 3))
    assert layer.get(first, lambda: 1) == 1
    [seen] = layer.read_before_write([key], [])[0].values()  # type: ignore[index]

    stored = layer.invalidate_and_store({"counts:1"}, {second: (2, seen)})
    assert stored == {second}
    assert layer.get(second, lambda: pytest.fail("stored with the commit")) == 2
    assert layer.get(first, lambda: pytest.fail("kept")) == 1

    assert layer.invalidate({key})  # someone left the waitlist: every position moved
    assert layer.invalidate_and_store({"counts:1"}, {third: (3, seen)}) == set()
    assert client.hget(layer.prefix + key, "3") is None
    assert layer.get(third, lambda: 2) == 2  # loaded afresh

    # a write that invalidates the key itself stores none of its fields
    [now] = layer.read_before_write([key], [])[0].values()  # type: ignore[index]
    assert layer.invalidate_and_store({key}, {first: (1, now)}) == set()
    assert client.exists(layer.prefix + key) == 0
