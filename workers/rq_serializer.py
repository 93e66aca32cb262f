"""RQ's serializer, checked once per process instead of at every job.

RQ (2.x) resolves its serializer each time it builds a job, a queue or a registry:
about seven times per job a worker runs, and once per job the relay enqueues. Each
time it checks the serializer against ``rq.serializers.Serializer``, a
runtime-checkable Protocol, and on Python 3.11 that check walks the Protocol's
members twice: 99 k instructions (16 µs) each time, about 0.7 M per job.
:func:`install` checks this service's serializer (``JSONSerializer``) once with RQ's
own function and lets RQ's modules take it without the check; any other serializer
resolves as before.
"""

from __future__ import annotations

import importlib
from typing import Any

from rq import serializers
from rq.serializers import JSONSerializer

#: RQ's modules that resolve a serializer per object they build
RESOLVING_MODULES = ("rq.job", "rq.queue", "rq.registry", "rq.results", "rq.scheduler")

_rq_resolve = serializers.resolve_serializer


def resolve_serializer(serializer: Any = None) -> Any:
    """RQ's ``resolve_serializer``, but ``JSONSerializer`` (checked by
    :func:`install`) comes back at once."""
    if serializer is JSONSerializer:
        return JSONSerializer
    return _rq_resolve(serializer)


def install() -> None:
    """Use :func:`resolve_serializer` in RQ's modules (idempotent), once RQ's own
    check has taken ``JSONSerializer`` (it raises as RQ would if not)."""
    _rq_resolve(JSONSerializer)
    for name in RESOLVING_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "resolve_serializer", None) is _rq_resolve:
            module.resolve_serializer = resolve_serializer  # type: ignore[attr-defined]
