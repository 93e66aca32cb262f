"""The read cache: flask-caching's ``RedisCache`` in its own Redis database, with
regions, single-flight loading, invalidation that cannot lose to a slow reader,
hit/miss/error counters and graceful degradation when Redis is down.

Regions (the Prometheus ``region`` label and the keys of :func:`cache_stats`):

- ``event_details`` (CACHE_TTL_EVENT_DETAILS): ``event:<id>`` (title, description,
  venue, start date, registration open) and ``upcoming`` (the details of the event list).
- ``registration_counts`` (CACHE_TTL_REGISTRATION_COUNTS): ``counts:<id>`` (capacity,
  confirmed count, waitlist length: what "seats left" is computed from).
- ``user_information`` (CACHE_TTL_USER_INFORMATION): ``registration:<uuid>`` (a
  registration with its attendee's name and email).
- ``waitlist_positions`` (CACHE_TTL_WAITLIST_POSITIONS): hash ``waitlist:<id>``, field =
  queue key, value = 1-based position.
- ``page_output`` (CACHE_TTL_PAGE_OUTPUT): ``page:<endpoint>:<full|hx>``.

Correctness after one's own write: invalidation (after the commit) bumps a
generation counter ``gen:<key>`` and deletes the key in one transaction. A loader
reads the generation *before* it queries the database and stores its result only
if the generation is unchanged (a Lua script), so a reader that loaded old rows
just before a commit can never put them back after the invalidation.

Refresh-ahead: right after a commit's invalidation the hook reloads what the writer
reads next (the touched events' counts, the changed registrations and a new waiting
one's position) through :meth:`CacheLayer.refresh`, guarded the same way. Warming
and refreshing are not readers' lookups and are not counted as hits or misses.

Stampede protection: on a miss, one loader per key and process (in-process lock)
and per key across processes (``SET lock:<key> NX PX``) queries the database;
the others poll the key for a short while and get the loaded value. Page output
(rendered from cached data) and a registration's record (read by one person) take
the in-process lock only.

Values are JSON (datetimes and UUIDs tagged), never pickle: whoever can write to
the cache's Redis must not be able to run code in the app.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask, current_app

from webapp.adapters.near_cache import (
    CLEAR_ALL,
    MISSING,
    InvalidationListener,
    NearCache,
    encode_keys,
)
from webapp.observability.metrics import CACHE_REQUESTS

log = logging.getLogger(__name__)

EVENT_DETAILS = "event_details"
REGISTRATION_COUNTS = "registration_counts"
USER_INFORMATION = "user_information"
WAITLIST_POSITIONS = "waitlist_positions"
PAGE_OUTPUT = "page_output"

#: region -> the setting holding its TTL in seconds
REGION_TTL_SETTINGS: dict[str, str] = {
    EVENT_DETAILS: "CACHE_TTL_EVENT_DETAILS",
    REGISTRATION_COUNTS: "CACHE_TTL_REGISTRATION_COUNTS",
    USER_INFORMATION: "CACHE_TTL_USER_INFORMATION",
    WAITLIST_POSITIONS: "CACHE_TTL_WAITLIST_POSITIONS",
    PAGE_OUTPUT: "CACHE_TTL_PAGE_OUTPUT",
}
REGIONS = tuple(REGION_TTL_SETTINGS)
RESULTS = ("hit", "miss", "error")
#: regions loaded without the cross-process lock (threads of one process still share
#: one load), where an occasional second load in another process costs less than the
#: lock's two extra Redis round trips per miss: a page render reads cached data only,
#: and a registration's record is read by the one person it belongs to (right after
#: the redirect that follows their own write, so the miss is the common case)
UNLOCKED_REGIONS = frozenset({PAGE_OUTPUT, USER_INFORMATION})

_GEN_TTL_MS = 3_600_000  # generations outlive every cached value
_STATS_MINUTE_TTL = 900
_EXTENSION = "les.cache"


# -- values --------------------------------------------------------------------------------
def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    raise TypeError(f"cannot cache a {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dt" in obj:
            return datetime.fromisoformat(obj["$dt"])
        if "$uuid" in obj:
            return uuid.UUID(obj["$uuid"])
    return obj


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_encode, separators=(",", ":")).encode()


def loads(raw: bytes) -> Any:
    return json.loads(raw, object_hook=_decode)


# -- Lua: stores that respect invalidations, lock release ------------------------------------
#: KEYS = gen1, key1, gen2, key2, ...; ARGV = ttl_ms, expected1, value1, expected2, value2, ...
_STORE = """
local stored = 0
for i = 1, #KEYS, 2 do
  local current = redis.call('GET', KEYS[i]) or '0'
  if current == ARGV[i + 1] then
    redis.call('SET', KEYS[i + 1], ARGV[i + 2], 'PX', ARGV[1])
    stored = stored + 1
  end
end
return stored
"""
#: KEYS = gen, hash; ARGV = ttl_ms, expected, field, value
_STORE_FIELD = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return 1
"""
#: KEYS = gen, key; ARGV = gen ttl_ms, value ttl_ms, generation seen, value. Bump the
#: generation; store the value only if this bump follows the generation seen directly,
#: else drop whatever is there. Returns 1 when stored.
_BUMP_AND_STORE_IF_NEXT = """
local gen = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if gen == tonumber(ARGV[3]) + 1 then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
  return 1
end
redis.call('DEL', KEYS[2])
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Slot:
    """One cached value: a plain key, or one ``field`` of a hash key."""

    region: str
    key: str
    field: str | None = None

    @property
    def lock_name(self) -> str:
        return f"{self.key}#{self.field}" if self.field is not None else self.key


Loader = Callable[[list[Slot]], dict[Slot, Any]]


class CacheUnavailable(Exception):
    """Redis is (recently) failing: callers fall back to the database."""


class CacheLayer:
    """Region-aware cache-aside on one Redis client. Thread-safe.

    ``enabled=False`` (CACHE_ENABLED=false) makes every read go to the database and
    counts nothing: the benchmark's baseline.
    """

    def __init__(
        self,
        client: Any | None,
        prefix: str,
        ttls: dict[str, int],
        *,
        enabled: bool = True,
        lock_ttl: float = 5.0,
        wait_budget: float = 2.0,
        poll_interval: float = 0.01,
        retry_after: float = 1.0,
        log_interval: float = 30.0,
        stats_flush_interval: float = 1.0,
        near: NearCache | None = None,
    ) -> None:
        self.client = client
        self.enabled = enabled and client is not None
        self.prefix = prefix
        self.ttls = {region: int(ttls.get(region, 60)) for region in REGIONS}
        self.lock_ttl_ms = int(lock_ttl * 1000)
        self.wait_budget = wait_budget
        self.poll_interval = poll_interval
        self.retry_after = retry_after
        self.log_interval = log_interval
        self.stats_flush_interval = stats_flush_interval
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._local_locks: dict[str, threading.Lock] = {}
        self._down_until = 0.0
        self._needs_clear = False
        self._errors_unlogged = 0
        self._last_error_log = 0.0
        self._counts: dict[tuple[str, str], int] = dict.fromkeys(
            ((r, res) for r in REGIONS for res in RESULTS), 0
        )
        self._pending: dict[tuple[str, str], int] = {}
        self._last_stats_flush = time.monotonic()
        #: the process-local first level (None: every read goes to Redis)
        self.near = near if self.enabled else None
        self.listener = (
            InvalidationListener(client, self.invalidation_channel, self.near)
            if self.near is not None
            else None
        )
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (layer := ref()) and layer._after_fork())

    def _after_fork(self) -> None:
        """A forked child (gunicorn worker, RQ work horse) must not inherit locks that
        a thread of the parent held at the fork, nor its unflushed counts."""
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._local_locks = {}
        self._pending = {}
        if self.listener is not None:
            self.listener.after_fork()

    def start_near_cache(self) -> None:
        """Subscribe to invalidations (a daemon thread); copies are kept from then on."""
        if self.listener is not None:
            self.listener.start()

    def stop_near_cache(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    # -- keys --------------------------------------------------------------------------
    def _k(self, key: str) -> str:
        return self.prefix + key

    def _gen(self, key: str) -> str:
        return self.prefix + "gen:" + key

    def _lock(self, slot: Slot) -> str:
        return self.prefix + "lock:" + slot.lock_name

    @property
    def invalidation_channel(self) -> str:
        return self.prefix + "invalidations"

    @property
    def stats_prefix(self) -> str:
        # outside the flask-caching prefix: Cache.clear() must not wipe the counters
        return self.prefix.rstrip(":") + "-stats:"

    # -- health ----------------------------------------------------------------------------
    def _check_available(self) -> None:
        if time.monotonic() < self._down_until:
            raise CacheUnavailable("cache marked down")
        if self._needs_clear:
            self._clear_values("invalidations were lost while Redis was unreachable")

    def _clear_values(self, reason: str) -> None:
        """Drop every cached value of this app (not the counters)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        if self.near is not None:
            self.near.drop([CLEAR_ALL])
            self.client.publish(self.invalidation_channel, encode_keys([CLEAR_ALL]))
        self._needs_clear = False
        level = logging.INFO if reason == "requested" else logging.WARNING
        log.log(level, "cache cleared (%d keys): %s", len(keys), reason)

    def _failed(self, regions: list[str], error: BaseException, count: int = 1) -> None:
        now = time.monotonic()
        if not isinstance(error, CacheUnavailable):
            self._down_until = now + self.retry_after
        for region in regions:
            self._count(region, "error", count)
        with self._mutex:
            self._errors_unlogged += len(regions) * count
            due = now - self._last_error_log >= self.log_interval
            if due:
                errors, self._errors_unlogged = self._errors_unlogged, 0
                self._last_error_log = now
        if due:
            log.warning(
                "cache unavailable, serving from the database (%d cache errors since the "
                "last report; next report in %.0fs at most): %s",
                errors,
                self.log_interval,
                error,
            )

    @property
    def available(self) -> bool:
        if not self.enabled:
            return False
        try:
            self._check_available()
            return bool(self.client.ping())
        except Exception as error:
            self._failed([], error)
            return False

    # -- counting --------------------------------------------------------------------------
    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Lookups in this block (warming, refreshing) are not readers' requests:
        they do not count as hits or misses (errors still do)."""
        previous = getattr(self._local, "uncounted", False)
        self._local.uncounted = True
        try:
            yield
        finally:
            self._local.uncounted = previous

    def _count(self, region: str, result: str, n: int = 1) -> None:
        if n <= 0 or (result != "error" and getattr(self._local, "uncounted", False)):
            return
        CACHE_REQUESTS.labels(region, result).inc(n)
        with self._mutex:
            self._counts[(region, result)] = self._counts.get((region, result), 0) + n
            self._pending[(region, result)] = self._pending.get((region, result), 0) + n
            due = time.monotonic() - self._last_stats_flush >= self.stats_flush_interval
        if due:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Add this process's counts since the last flush to the shared Redis hashes."""
        if not self.enabled:
            return
        with self._mutex:
            pending, self._pending = self._pending, {}
            self._last_stats_flush = time.monotonic()
        if not pending or time.monotonic() < self._down_until:
            self._restore_pending(pending)
            return
        minute = int(time.time() // 60)
        try:
            pipe = self.client.pipeline(transaction=False)
            for (region, result), n in pending.items():
                field = f"{region}:{result}"
                pipe.hincrby(self.stats_prefix + "total", field, n)
                pipe.hincrby(f"{self.stats_prefix}m:{minute}", field, n)
            pipe.expire(f"{self.stats_prefix}m:{minute}", _STATS_MINUTE_TTL)
            pipe.execute()
        except Exception:  # counted again at the next flush
            self._down_until = time.monotonic() + self.retry_after
            self._restore_pending(pending)

    def _restore_pending(self, pending: dict[tuple[str, str], int]) -> None:
        with self._mutex:
            for item, n in pending.items():
                self._pending[item] = self._pending.get(item, 0) + n

    def local_counts(self) -> dict[tuple[str, str], int]:
        with self._mutex:
            return dict(self._counts)

    def shared_counts(self, minutes: int | None = None) -> dict[tuple[str, str], int]:
        """Counts of all processes: since the counters exist, or over the last minutes."""
        self.flush_stats()
        self._check_available()
        if minutes is None:
            names = [self.stats_prefix + "total"]
        else:
            now = int(time.time() // 60)
            names = [f"{self.stats_prefix}m:{m}" for m in range(now - minutes + 1, now + 1)]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        totals: dict[tuple[str, str], int] = {}
        for mapping in pipe.execute():
            for field, value in mapping.items():
                region, _, result = field.decode().partition(":")
                totals[(region, result)] = totals.get((region, result), 0) + int(value)
        return totals

    # -- reading ---------------------------------------------------------------------------
    def _read(self, slots: list[Slot]) -> dict[Slot, Any]:
        pipe = self.client.pipeline(transaction=False)
        for slot in slots:
            if slot.field is None:
                pipe.get(self._k(slot.key))
            else:
                pipe.hget(self._k(slot.key), slot.field)
        found = {}
        for slot, raw in zip(slots, pipe.execute(), strict=True):
            if raw is not None:
                found[slot] = loads(raw)
        return found

    def fetch(self, slots: list[Slot], loader: Loader) -> dict[Slot, Any]:
        """Values for ``slots``: from the cache, else from ``loader(missing_slots)``.

        The loader returns a dict for the slots it found (a slot it omits or maps to
        None is "not there" and is not cached). Each slot is counted once: a hit when
        the value came from the cache (also after waiting for another loader), a miss
        when this call loaded it, an error when Redis failed and the database served.
        """
        if not slots:
            return {}
        if not self.enabled:
            return _clean(loader(slots))
        near = self.near
        if near is None or not near.live:
            return self._fetch_shared(slots, loader)
        epoch = near.epoch  # before anything is read: see NearCache.put
        copies: dict[Slot, Any] = {}
        for slot in slots:
            if near.covers(slot.region):
                value = near.get(slot.key, slot.field)
                if value is not MISSING:
                    copies[slot] = value
        self._count_slots(copies, "hit")
        if len(copies) == len(slots):
            return copies
        found = self._fetch_shared([s for s in slots if s not in copies], loader)
        for slot, value in found.items():
            if near.covers(slot.region):
                near.put(slot.key, slot.field, value, epoch)
        return copies | found

    def _fetch_shared(self, slots: list[Slot], loader: Loader) -> dict[Slot, Any]:
        """:meth:`fetch` from Redis, then the loader: what the near cache falls back to."""
        try:
            self._check_available()
            found = self._read(slots)
        except Exception as error:
            self._failed([s.region for s in slots], error)
            return _clean(loader(slots))
        self._count_slots(found, "hit")
        missing = [s for s in slots if s not in found]
        if missing:
            found.update(self._load_missing(missing, loader))
        return found

    def get(self, slot: Slot, loader: Callable[[], Any]) -> Any:
        """One slot: the cached value or ``loader()`` (None is not cached)."""
        return self.fetch([slot], lambda _missing: {slot: loader()}).get(slot)

    def _count_slots(self, slots: Any, result: str) -> None:
        by_region: dict[str, int] = {}
        for slot in slots:
            by_region[slot.region] = by_region.get(slot.region, 0) + 1
        for region, n in by_region.items():
            self._count(region, result, n)

    def _load_missing(self, missing: list[Slot], loader: Loader) -> dict[Slot, Any]:
        mine: list[Slot] = []
        theirs: list[Slot] = []
        tokens: dict[Slot, str] = {}
        local_held: list[threading.Lock] = []
        for slot in missing:
            lock = self._local_lock(slot)
            if lock.acquire(blocking=False):
                local_held.append(lock)
                mine.append(slot)
            else:
                theirs.append(slot)
        try:
            result: dict[Slot, Any] = {}
            try:
                gens, acquired = self._begin(mine, tokens)
            except Exception as error:
                self._failed([s.region for s in missing], error)
                return _clean(loader(missing))
            theirs += [s for s in mine if not acquired[s]]
            mine = [s for s in mine if acquired[s]]
            if mine:
                # another loader may have stored between our read and our lock
                contended = [s for s in mine if s.region not in UNLOCKED_REGIONS]
                try:
                    again = self._read(contended) if contended else {}
                except Exception:
                    again = {}
                self._count_slots(again, "hit")
                result.update(again)
                todo = [s for s in mine if s not in again]
                if todo:
                    result.update(self._load_and_store(todo, gens, loader))
            if theirs:
                result.update(self._wait_or_load(theirs, loader))
            return result
        finally:
            self._release(tokens)
            for lock in local_held:
                lock.release()
            self._forget_local_locks(missing)

    def _begin(self, slots: list[Slot], tokens: dict[Slot, str]) -> tuple[dict[str, str], Any]:
        """Read the generations (before loading!) and take the cross-process locks."""
        if not slots:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        keys = sorted({s.key for s in slots})
        for key in keys:
            pipe.get(self._gen(key))
        locked = [s for s in slots if s.region not in UNLOCKED_REGIONS]
        for slot in locked:
            tokens[slot] = uuid.uuid4().hex
            pipe.set(self._lock(slot), tokens[slot], nx=True, px=self.lock_ttl_ms)
        replies = pipe.execute()
        gens = {
            k: (g.decode() if g is not None else "0") for k, g in zip(keys, replies, strict=False)
        }
        acquired = dict.fromkeys(slots, True)
        acquired.update({s: bool(ok) for s, ok in zip(locked, replies[len(keys) :], strict=True)})
        for slot, ok in acquired.items():
            if not ok:
                tokens.pop(slot)
        return gens, acquired

    def _load_and_store(
        self, slots: list[Slot], gens: dict[str, str], loader: Loader
    ) -> dict[Slot, Any]:
        loaded = _clean(loader(slots))
        self._count_slots(slots, "miss")
        self._store(loaded, gens)
        return loaded

    def _store(self, values: dict[Slot, Any], gens: dict[str, str]) -> None:
        """Store loaded values unless their key was invalidated since ``gens`` was read."""
        if not values:
            return
        try:
            by_ttl: dict[int, tuple[list[str], list[Any]]] = {}
            pipe = self.client.pipeline(transaction=False)
            for slot, value in values.items():
                ttl_ms = self.ttls[slot.region] * 1000
                gen = gens.get(slot.key, "0")
                if slot.field is None:
                    keys, args = by_ttl.setdefault(ttl_ms, ([], []))
                    keys += [self._gen(slot.key), self._k(slot.key)]
                    args += [gen, dumps(value)]
                else:
                    _queue_script(
                        pipe,
                        _STORE_FIELD,
                        [self._gen(slot.key), self._k(slot.key)],
                        [ttl_ms, gen, slot.field, dumps(value)],
                    )
            for ttl_ms, (keys, args) in by_ttl.items():
                _queue_script(pipe, _STORE, keys, [ttl_ms, *args])
            pipe.execute()
        except Exception as error:
            self._failed([], error)

    def _wait_or_load(self, slots: list[Slot], loader: Loader) -> dict[Slot, Any]:
        """Another thread or process is loading these: poll until the value appears.
        Load it ourselves after the wait budget, or as soon as nobody holds the lock
        any more without having stored a value (its store lost to an invalidation)."""
        result: dict[Slot, Any] = {}
        waiting = list(slots)
        deadline = time.monotonic() + self.wait_budget
        orphaned: dict[Slot, int] = {}
        try:
            while waiting and time.monotonic() < deadline:
                time.sleep(self.poll_interval)
                pipe = self.client.pipeline(transaction=False)
                for slot in waiting:
                    if slot.field is None:
                        pipe.get(self._k(slot.key))
                    else:
                        pipe.hget(self._k(slot.key), slot.field)
                    pipe.exists(self._lock(slot))
                replies = pipe.execute()
                still = []
                for index, slot in enumerate(waiting):
                    raw, locked = replies[2 * index], replies[2 * index + 1]
                    if raw is not None:
                        result[slot] = loads(raw)
                        self._count(slot.region, "hit")
                        continue
                    if not locked and slot.region in UNLOCKED_REGIONS:
                        locked = self._loading_here(slot)  # its loader is in this process
                    orphaned[slot] = 0 if locked else orphaned.get(slot, 0) + 1
                    still.append(slot)
                waiting = still
                if waiting and all(orphaned.get(s, 0) >= 2 for s in waiting):
                    break
            gens, _ = self._begin_gens_only(waiting) if waiting else ({}, None)
        except Exception as error:
            self._failed([s.region for s in waiting], error)
            result.update(_clean(loader(waiting)))
            return result
        if waiting:
            result.update(self._load_and_store(waiting, gens, loader))
        return result

    def _begin_gens_only(self, slots: list[Slot]) -> tuple[dict[str, str], None]:
        keys = sorted({s.key for s in slots})
        replies = self.client.mget([self._gen(k) for k in keys])
        gens = {
            k: (g.decode() if g is not None else "0") for k, g in zip(keys, replies, strict=True)
        }
        return gens, None

    def _release(self, tokens: dict[Slot, str]) -> None:
        if not tokens:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for slot, token in tokens.items():
                _queue_script(pipe, _RELEASE, [self._lock(slot)], [token])
            pipe.execute()
        except Exception as error:  # the lock expires by itself
            self._failed([], error)

    def _local_lock(self, slot: Slot) -> threading.Lock:
        with self._mutex:
            return self._local_locks.setdefault(slot.lock_name, threading.Lock())

    def _loading_here(self, slot: Slot) -> bool:
        with self._mutex:
            lock = self._local_locks.get(slot.lock_name)
        return lock is not None and lock.locked()

    def _forget_local_locks(self, slots: list[Slot]) -> None:
        with self._mutex:
            for slot in slots:
                lock = self._local_locks.get(slot.lock_name)
                if lock is not None and not lock.locked():
                    del self._local_locks[slot.lock_name]

    # -- invalidation ----------------------------------------------------------------------
    def refresh(self, slots: list[Slot], loader: Loader) -> dict[Slot, Any]:
        """Load ``slots`` now and store them (refresh-ahead after a write), unless an
        invalidation overtakes the load. Not counted as lookups; returns what loaded."""
        if not self.enabled or not slots:
            return {}
        try:
            self._check_available()
            gens, _ = self._begin_gens_only(slots)
        except Exception as error:
            self._failed([], error)
            return {}
        loaded = _clean(loader(slots))
        self._store(loaded, gens)
        return loaded

    def invalidate(self, keys: set[str] | list[str]) -> bool:
        """Delete ``keys`` (plain or hash) and bump their generations, atomically.

        Returns False when Redis could not be reached: the whole cache is then cleared
        as soon as Redis answers again, so no stale value survives the outage.
        """
        return self.invalidate_and_store(keys) is not None

    def read_before_write(
        self, keys: list[str], slots: list[Slot]
    ) -> tuple[dict[str, str], dict[Slot, Any]] | None:
        """The current generation of each of ``keys`` ("0" if never invalidated) and the
        cached values of ``slots`` (plain keys), read together in one MGET, or None when
        Redis cannot be reached: what a writer reads before its commit to store its own
        result afterwards (:meth:`invalidate_and_store`), or a cached value it knows
        how its change alters."""
        if any(slot.field is not None for slot in slots):
            raise ValueError("read_before_write reads plain keys, not hash fields")
        if not self.enabled or not (keys or slots):
            return {}, {}
        try:
            self._check_available()
            replies = self.client.mget(
                [self._gen(k) for k in keys] + [self._k(slot.key) for slot in slots]
            )
            generations = {k: _gen_value(g) for k, g in zip(keys, replies, strict=False)}
            values = {
                slot: loads(raw)
                for slot, raw in zip(slots, replies[len(keys) :], strict=True)
                if raw is not None
            }
        except Exception as error:
            self._failed([], error)
            return None
        return generations, values

    def invalidate_and_store(
        self, keys: set[str] | list[str], fresh: dict[Slot, tuple[Any, str]] | None = None
    ) -> set[Slot] | None:
        """:meth:`invalidate` ``keys``; in the same transaction, store the ``fresh``
        values the write itself produced, each given as ``(value, generation)`` with
        the key's generation read before the write committed ("0" for a key that did not
        exist before it, such as a new registration's record).

        A plain key's value is stored only if this invalidation is the next one after
        that generation. Any other write's invalidation in between (which may carry
        newer state, or may have been overtaken by this one) keeps it out, and the key
        stays empty for the next reader to load. A hash field whose key this write does
        not invalidate (a new waitlist position: nobody else moved) is added to the
        hash only if the key's generation is still the one read: any invalidation since
        keeps it out. Returns the slots stored, or None when Redis could not be reached
        (see :meth:`invalidate`).
        """
        if not self.enabled or not keys:
            return set()
        if self.near is not None:
            self.near.drop(keys)  # this process reads its own writes at once
        try:
            self._check_available()
            pipe = self.client.pipeline(transaction=True)
            fresh = fresh or {}
            storing = {s.key: s for s in fresh if s.field is None and s.key in keys}
            order: list[Slot | None] = []
            for key in sorted(keys):
                slot = storing.get(key)
                if slot is not None:
                    value, generation = fresh[slot]
                    _queue_script(
                        pipe,
                        _BUMP_AND_STORE_IF_NEXT,
                        [self._gen(key), self._k(key)],
                        [_GEN_TTL_MS, self.ttls[slot.region] * 1000, generation, dumps(value)],
                    )
                    order.append(slot)
                    continue
                pipe.incr(self._gen(key))
                pipe.pexpire(self._gen(key), _GEN_TTL_MS)
                pipe.delete(self._k(key))
                order += [None, None, None]
            for slot, (value, generation) in fresh.items():
                if slot.field is not None and slot.key not in keys:
                    _queue_script(
                        pipe,
                        _STORE_FIELD,
                        [self._gen(slot.key), self._k(slot.key)],
                        [self.ttls[slot.region] * 1000, generation, slot.field, dumps(value)],
                    )
                    order.append(slot)
            if self.near is not None:  # the other processes drop their copies
                pipe.publish(self.invalidation_channel, encode_keys(keys))
            replies = pipe.execute()
        except Exception as error:
            self._needs_clear = True
            self._failed([], error)
            return None
        return {slot for slot, reply in zip(order, replies, strict=False) if slot and reply == 1}

    def clear(self) -> None:
        """Drop every cached value of this app (not the counters)."""
        if self.enabled:
            self._clear_values("requested")

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Temporarily read straight from the database (tests, maintenance)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous


def _queue_script(pipe: Any, script: str, keys: list[str], args: list[Any]) -> None:
    """Queue a Lua script on a pipeline as a plain EVAL. (A redis-py ``Script`` object
    makes every pipeline that carries it ask SCRIPT EXISTS first: one more round trip
    on each store and lock release. Redis caches the compiled script by its hash, so
    EVAL only sends the few hundred bytes of source again.)"""
    pipe.eval(script, len(keys), *keys, *args)


def _gen_value(raw: bytes | None) -> str:
    return raw.decode() if raw is not None else "0"


def _clean(values: dict[Slot, Any]) -> dict[Slot, Any]:
    return {slot: value for slot, value in values.items() if value is not None}


# -- app wiring ----------------------------------------------------------------------------
def key_prefix(config: dict[str, Any]) -> str:
    """Per database: two apps on different databases never read each other's rows."""
    digest = hashlib.sha256(str(config["DATABASE_URL"]).encode()).hexdigest()[:8]
    return f"les:{digest}:"


def init_cache(app: Flask) -> CacheLayer:
    """Configure flask-caching's RedisCache on CACHE_REDIS_URL and build the layer."""
    from webapp.extensions import cache

    config = app.config
    enabled = bool(config.get("CACHE_ENABLED", True))
    timeout = float(config.get("CACHE_SOCKET_TIMEOUT", 0.25))
    prefix = key_prefix(config)
    if enabled:
        cache.init_app(
            app,
            config={
                "CACHE_TYPE": "RedisCache",
                "CACHE_REDIS_URL": config["CACHE_REDIS_URL"],
                "CACHE_KEY_PREFIX": prefix,
                "CACHE_DEFAULT_TIMEOUT": int(config.get("CACHE_TTL_EVENT_DETAILS", 300)),
                "CACHE_OPTIONS": {
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "health_check_interval": 30,
                },
            },
        )
        backend = app.extensions["cache"][cache]
        client = backend._write_client
    else:
        cache.init_app(app, config={"CACHE_TYPE": "NullCache", "CACHE_NO_NULL_WARNING": True})
        client = None
    ttls = {region: int(config.get(name, 60)) for region, name in REGION_TTL_SETTINGS.items()}
    layer = CacheLayer(
        client,
        prefix,
        ttls,
        enabled=enabled,
        retry_after=float(config.get("CACHE_RETRY_AFTER_SECONDS", 1.0)),
        log_interval=float(config.get("CACHE_ERROR_LOG_INTERVAL_SECONDS", 30.0)),
        near=_near_cache(config) if enabled else None,
    )
    app.extensions[_EXTENSION] = layer
    if layer.near is not None:  # subscribes once the process may run threads
        app.extensions.setdefault("les.process_start", []).append(layer.start_near_cache)
    return layer


def _near_cache(config: Any) -> NearCache | None:
    """The process-local level (CACHE_NEAR: auto = on except under ENV=testing)."""
    setting = str(config.get("CACHE_NEAR", "auto")).strip().lower()
    on = config.get("ENV") != "testing" if setting == "auto" else setting in _TRUE
    if not on:
        return None
    names = str(config.get("CACHE_NEAR_REGIONS", "")).replace(" ", "").split(",")
    unknown = sorted(set(names) - set(REGIONS) - {""})
    if unknown:
        raise ValueError(f"CACHE_NEAR_REGIONS: unknown regions {unknown}; known: {REGIONS}")
    return NearCache(
        [n for n in names if n],
        ttl=float(config.get("CACHE_NEAR_TTL_SECONDS", 30.0)),
        max_entries=int(config.get("CACHE_NEAR_MAX_ENTRIES", 10_000)),
    )


_TRUE = {"1", "true", "yes", "on"}


def get_cache(app: Flask | None = None) -> CacheLayer:
    return (app or current_app).extensions[_EXTENSION]  # type: ignore[no-any-return]


def _rates(counts: dict[tuple[str, str], int], region: str) -> dict[str, Any]:
    hits = counts.get((region, "hit"), 0)
    misses = counts.get((region, "miss"), 0)
    errors = counts.get((region, "error"), 0)
    total = hits + misses + errors
    return {
        "hits": hits,
        "misses": misses,
        "errors": errors,
        "hit_rate": round(hits / total, 4) if total else None,
    }


def cache_stats(app: Flask | None = None, window_minutes: int = 5) -> dict[str, dict[str, Any]]:
    """Hit/miss/error numbers per region, for the operator dashboard.

    Returns ``{region: {"hits", "misses", "errors", "hit_rate", "last_5_minutes":
    {"hits", "misses", "errors", "hit_rate"}, "scope"}}`` for every region in
    :data:`REGIONS`. ``hit_rate`` is hits / (hits + misses + errors), None without
    lookups. The top-level numbers count since the shared counters were created
    (all processes; they live in the cache's Redis, apart from the cached values);
    ``last_5_minutes`` covers the current and previous ``window_minutes - 1`` whole
    minutes. These are the same increments as the Prometheus counter
    ``les_cache_requests_total{region, result}``. When Redis is unreachable the
    numbers are this process's since it started, ``last_5_minutes`` is None, and
    ``scope`` says ``"this_process"`` instead of ``"all_processes"``. With
    CACHE_ENABLED=false every number is 0 and ``scope`` is ``"disabled"``.
    """
    layer = get_cache(app)
    scope = "all_processes"
    recent: dict[tuple[str, str], int] | None
    if not layer.enabled:
        totals: dict[tuple[str, str], int] = {}
        recent = {}
        scope = "disabled"
    else:
        try:
            totals = layer.shared_counts()
            recent = layer.shared_counts(window_minutes)
        except Exception as error:
            layer._failed([], error)
            totals, recent, scope = layer.local_counts(), None, "this_process"
    stats = {}
    for region in REGIONS:
        entry = _rates(totals, region)
        entry["last_5_minutes"] = _rates(recent, region) if recent is not None else None
        entry["scope"] = scope
        stats[region] = entry
    return stats


__all__ = [
    "EVENT_DETAILS",
    "PAGE_OUTPUT",
    "REGIONS",
    "REGISTRATION_COUNTS",
    "USER_INFORMATION",
    "WAITLIST_POSITIONS",
    "CacheLayer",
    "Slot",
    "cache_stats",
    "get_cache",
    "init_cache",
]
