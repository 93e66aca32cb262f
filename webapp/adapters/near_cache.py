"""The near cache: a process-local first level (L1) in front of the Redis cache (L2),
as in .NET's HybridCache.

A hit in Redis still costs a network round trip, a JSON decode and a traced Redis
call; the public pages read the same few values thousands of times per second, so
each process keeps its own copy of the values of some regions (CACHE_NEAR_REGIONS:
event details, registration counts and page output by default) for at most
CACHE_NEAR_TTL_SECONDS.

Coherence: every invalidation (after a commit, in any process) publishes the keys it
dropped on a Redis pub/sub channel in the same MULTI as the generation bump. Each
process listens on that channel (:class:`InvalidationListener`, a daemon thread) and
drops its copies. The process that wrote drops its own copies synchronously, so it
reads its own writes; other processes see the change once the message arrives
(well under a millisecond on one host).

The near cache is used only while the listener is subscribed: before the
subscription is confirmed, after a disconnect and while Redis is down, every read
goes to Redis (or the database) as without it, and every copy is dropped when the
subscription (re)starts, so a missed message can never leave a stale copy behind.

A copy loaded concurrently with an invalidation is not kept: :meth:`NearCache.put`
takes the epoch read before the value was fetched, and any invalidation since then
(which bumps the epoch) makes the put a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: the message that drops every copy (``CacheLayer.clear``)
CLEAR_ALL = "*"
_MISSING = object()


class NearCache:
    """Bounded, TTL-limited, thread-safe process-local copies of cached values."""

    def __init__(self, regions: Iterable[str], ttl: float, max_entries: int = 10_000) -> None:
        """``max_entries`` bounds the number of keys kept (a hash key with its fields
        counts once)."""
        self.regions = frozenset(regions)
        self.ttl = ttl
        self.max_entries = max_entries
        #: key -> field (None for a plain key) -> (expires at, value); least recent key first
        self._entries: OrderedDict[str, dict[str | None, tuple[float, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0
        self._live = False

    # -- state ---------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while invalidation messages are being received (copies may be used)."""
        return self._live

    @property
    def epoch(self) -> int:
        return self._epoch

    def covers(self, region: str) -> bool:
        return self._live and region in self.regions

    def go_live(self) -> None:
        """The subscription is confirmed: start from nothing, then keep copies."""
        with self._lock:
            self._entries.clear()
            self._epoch += 1
            self._live = True

    def go_dark(self) -> None:
        """Messages may be missed from now on: drop every copy and stop keeping them."""
        with self._lock:
            self._live = False
            self._entries.clear()
            self._epoch += 1

    # -- values ----------------------------------------------------------------------------
    def get(self, key: str, field: str | None = None) -> Any:
        """The copy of ``key`` (``field``), or :data:`MISSING`."""
        if not self._live:
            return _MISSING
        with self._lock:
            fields = self._entries.get(key)
            if fields is None:
                return _MISSING
            entry = fields.get(field)
            if entry is None:
                return _MISSING
            if entry[0] < time.monotonic():
                del fields[field]
                if not fields:
                    del self._entries[key]
                return _MISSING
            return entry[1]

    def put(self, key: str, field: str | None, value: Any, epoch: int) -> bool:
        """Keep a copy, unless an invalidation happened since ``epoch`` was read."""
        with self._lock:
            if not self._live or epoch != self._epoch:
                return False
            self._entries.setdefault(key, {})[field] = (time.monotonic() + self.ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True

    def drop(self, keys: Iterable[str]) -> None:
        """Drop the copies of ``keys`` (every field of a hash key); ``*`` drops all."""
        keys = set(keys)
        with self._lock:
            self._epoch += 1
            if CLEAR_ALL in keys:
                self._entries.clear()
                return
            for key in keys:  # one lookup per key, however many copies are kept
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return sum(len(fields) for fields in self._entries.values())


MISSING = _MISSING


def encode_keys(keys: Iterable[str]) -> str:
    return json.dumps(sorted(keys))


def decode_keys(data: bytes | str) -> list[str]:
    try:
        keys = json.loads(data)
    except ValueError:
        return [CLEAR_ALL]
    return [str(k) for k in keys] if isinstance(keys, list) else [CLEAR_ALL]


class InvalidationListener:
    """A daemon thread subscribed to the invalidation channel: drops the near cache's
    copies of every key another process invalidated; reconnects after errors."""

    def __init__(
        self, client: Any, channel: str, near: NearCache, *, retry_after: float = 1.0
    ) -> None:
        self.client = client
        self.channel = channel
        self.near = near
        self.retry_after = retry_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="cache-invalidation-listener", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.near.go_dark()

    def after_fork(self) -> None:
        """A forked child inherits no thread and must not trust the parent's copies."""
        self._thread = None
        self._stop = threading.Event()
        self.near.go_dark()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except Exception as error:  # Redis down or restarted: no copies until back
                self.near.go_dark()
                log.info("cache invalidation listener disconnected: %s", error)
                self._stop.wait(self.retry_after)
            finally:
                self.near.go_dark()
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection
                        pubsub.close()

    def _listen(self, pubsub: Any) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                self.near.go_live()
            elif message["type"] == "message":
                self.near.drop(decode_keys(message["data"]))


__all__ = [
    "CLEAR_ALL",
    "MISSING",
    "InvalidationListener",
    "NearCache",
    "decode_keys",
    "encode_keys",
]
