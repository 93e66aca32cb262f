"""The near cache (process-local first level) on a real Redis: copies are served
without a round trip, every invalidation in any process drops them, and nothing is
served from a copy while invalidations could be missed."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from tests.conftest import make_app
from webapp.adapters.cache import EVENT_DETAILS, USER_INFORMATION, CacheLayer, Slot, get_cache
from webapp.adapters.near_cache import MISSING, NearCache
from webapp.config import next_redis_db
from webapp.extensions import get_db
from webapp.services import registrations

pytestmark = pytest.mark.redis

TTLS = dict.fromkeys(
    ("event_details", "registration_counts", "user_information", "waitlist_positions"), 300
) | {"page_output": 30}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def cache_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(next_redis_db(redis_url))


@pytest.fixture
def two_processes(cache_client: redis.Redis) -> Iterator[tuple[CacheLayer, CacheLayer]]:
    """Two cache layers on one prefix, as two web processes would have."""
    prefix = f"n{uuid.uuid4().hex[:6]}:"
    layers = tuple(
        CacheLayer(cache_client, prefix, TTLS, near=NearCache([EVENT_DETAILS], ttl=60))
        for _ in range(2)
    )
    for layer in layers:
        layer.start_near_cache()
    assert wait_until(lambda: all(layer.near.live for layer in layers))  # type: ignore[union-attr]
    yield layers  # type: ignore[misc]
    for layer in layers:
        layer.stop_near_cache()


class Loader:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


SLOT = Slot(EVENT_DETAILS, "event:1")


def test_a_copy_is_served_without_asking_redis(
    two_processes: tuple[CacheLayer, CacheLayer], cache_client: redis.Redis
) -> None:
    a, _ = two_processes
    loader = Loader({"title": "Gala"})
    assert a.get(SLOT, loader) == {"title": "Gala"}
    cache_client.delete(a.prefix + SLOT.key)  # behind the cache's back: L2 is empty now
    loader.value = {"title": "changed"}
    assert a.get(SLOT, loader) == {"title": "Gala"}  # from this process's copy
    assert loader.calls == 1
    assert a.local_counts()[(EVENT_DETAILS, "hit")] == 1


def test_an_invalidation_in_another_process_drops_the_copy(
    two_processes: tuple[CacheLayer, CacheLayer],
) -> None:
    a, b = two_processes
    loader = Loader({"seats": 5})
    assert a.get(SLOT, loader) == {"seats": 5}
    loader.value = {"seats": 4}
    b.invalidate({SLOT.key})
    assert wait_until(lambda: a.get(SLOT, loader) == {"seats": 4}, timeout=2.0)


def test_the_writing_process_reads_its_own_write_at_once(
    two_processes: tuple[CacheLayer, CacheLayer],
) -> None:
    a, _ = two_processes
    loader = Loader({"seats": 5})
    a.get(SLOT, loader)
    loader.value = {"seats": 4}
    a.invalidate({SLOT.key})
    assert a.get(SLOT, loader) == {"seats": 4}  # no waiting for the message


def test_regions_outside_the_near_cache_always_go_to_redis(
    two_processes: tuple[CacheLayer, CacheLayer], cache_client: redis.Redis
) -> None:
    a, _ = two_processes
    slot = Slot(USER_INFORMATION, "registration:r1")
    loader = Loader({"status": "Confirmed"})
    a.get(slot, loader)
    cache_client.delete(a.prefix + slot.key)
    loader.value = {"status": "Cancelled"}
    assert a.get(slot, loader) == {"status": "Cancelled"}


def test_no_copies_while_invalidations_could_be_missed(
    two_processes: tuple[CacheLayer, CacheLayer], cache_client: redis.Redis
) -> None:
    a, _ = two_processes
    loader = Loader({"seats": 5})
    a.get(SLOT, loader)
    assert len(a.near) == 1  # type: ignore[arg-type]

    # the subscription breaks (Redis restarted, connection dropped)
    cache_client.client_kill_filter(_type="pubsub")
    assert wait_until(lambda: not a.near.live or a.near.epoch > 1)  # type: ignore[union-attr]
    assert a.near.get(SLOT.key) is MISSING  # type: ignore[union-attr]  # copies dropped

    # once subscribed again, copies are kept again
    assert wait_until(lambda: a.near.live)  # type: ignore[union-attr]
    a.get(SLOT, loader)
    assert a.near.get(SLOT.key) == {"seats": 5}  # type: ignore[union-attr]


def test_a_value_loaded_across_an_invalidation_is_not_kept() -> None:
    near = NearCache([EVENT_DETAILS], ttl=60)
    near.go_live()
    epoch = near.epoch  # a reader starts loading the old value...
    near.drop(["event:1"])  # ...and the key is invalidated meanwhile
    assert near.put("event:1", None, {"seats": 5}, epoch) is False
    assert near.get("event:1") is MISSING
    assert near.put("event:1", None, {"seats": 4}, near.epoch) is True


def test_copies_expire_and_the_oldest_go_first() -> None:
    near = NearCache([EVENT_DETAILS], ttl=0.05, max_entries=2)
    near.go_live()
    for n in range(3):
        near.put(f"event:{n}", None, n, near.epoch)
    assert near.get("event:0") is MISSING and near.get("event:2") == 2
    time.sleep(0.06)
    assert near.get("event:2") is MISSING


# -- two apps, as two web processes ------------------------------------------------------
@pytest.fixture
def two_apps(db_url: str, redis_url: str) -> Iterator[tuple[Flask, Flask]]:
    apps = tuple(make_app(db_url, redis_url, CACHE_NEAR="true") for _ in range(2))
    for application in apps:
        assert wait_until(lambda a=application: get_cache(a).near.live)  # type: ignore[union-attr]
    yield apps  # type: ignore[misc]
    for application in apps:
        get_cache(application).stop_near_cache()
        application.extensions["les.db"].dispose()


def seats(html: str) -> str:
    found = re.search(r'class="seats-left">([^<]+)<', html)
    assert found, html
    return found.group(1)


def test_a_registration_in_one_process_updates_the_event_page_of_the_other(
    two_apps: tuple[Flask, Flask], create_event_in: Callable[..., int]
) -> None:
    reader, writer = two_apps
    event_id = create_event_in(reader, capacity=3)
    visitor = reader.test_client()
    assert seats(visitor.get(f"/events/{event_id}").text) == "3 of 3"
    assert visitor.get(f"/events/{event_id}").headers["X-Cache"] == "HIT"

    registrations.register(get_db(writer).unit_of_work, event_id, "Ann", "ann@example.com")

    assert wait_until(
        lambda: seats(visitor.get(f"/events/{event_id}").text) == "2 of 3", timeout=2.0
    )
    assert seats(visitor.get("/").text) == "2 of 3"


@pytest.fixture
def create_event_in() -> Callable[..., int]:
    from datetime import UTC, datetime, timedelta

    from webapp.services.events import EventDetails, create_event

    def factory(app: Flask, capacity: int) -> int:
        details = EventDetails(
            "Near", "A test event", "Hall", datetime.now(UTC) + timedelta(days=3), True
        )
        return create_event(get_db(app).unit_of_work, details, capacity)

    return factory
