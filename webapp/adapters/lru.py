"""A small thread-safe LRU map for per-process memos (signed CSRF tokens, verified
session cookies): bounded, the least recently used entry goes first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruMap(Generic[K, V]):
    """At most ``max_kept`` entries; ``get`` and ``put`` make an entry the most recent."""

    def __init__(self, max_kept: int) -> None:
        self.max_kept = max_kept
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_kept:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
