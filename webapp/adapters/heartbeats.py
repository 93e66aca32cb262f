"""Heartbeats of the background processes, kept in Redis.

Each process kind (``relay``, ``worker``) has a sorted set ``les:heartbeats:<kind>``
whose members are process names and whose scores are the Unix time of their last
beat; ``/readyz`` reads the newest one.
"""

from __future__ import annotations

import time

import redis

KEY = "les:heartbeats:{kind}"
#: members silent for longer than this are dropped when someone beats
FORGET_AFTER_SECONDS = 3600


def beat(client: redis.Redis, kind: str, name: str, now: float | None = None) -> float:
    """Record that ``name`` (of ``kind``) is alive; returns the timestamp written."""
    from webapp.observability.metrics import HEARTBEAT_TIMESTAMP

    now = time.time() if now is None else now
    key = KEY.format(kind=kind)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {name: now})
    pipe.zremrangebyscore(key, "-inf", now - FORGET_AFTER_SECONDS)
    pipe.execute()
    HEARTBEAT_TIMESTAMP.labels(process=kind).set(now)
    return now


def last_beat(client: redis.Redis, kind: str) -> float | None:
    """Unix time of the newest heartbeat of any process of ``kind``, or None."""
    newest = client.zrevrange(KEY.format(kind=kind), 0, 0, withscores=True)
    return float(newest[0][1]) if newest else None


def forget(client: redis.Redis, kind: str, name: str) -> None:
    """Remove a process that stopped cleanly."""
    client.zrem(KEY.format(kind=kind), name)
