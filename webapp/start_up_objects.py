"""The objects a long-running process builds at start-up, kept out of the cyclic
garbage collector's full passes (``gc.freeze``).

Once the app is built, a web worker holds 120,000 to 140,000 objects the collector
tracks: imported modules, Flask's and SQLAlchemy's setup, compiled statements,
templates, OpenTelemetry. Nearly all of them live as long as the process, yet every full
collection walks them all again. Measured in-process over 1,500 registration flows,
one full collection came every ~1,500 flows and took ~80 ms, with every request
thread of the process held up meanwhile (the GIL); frozen, none of them ran, and the
next full collection walks only what was built since.

Frozen objects are freed as before when their last reference goes; only cycles among
them would never be found, and they live as long as the process anyway. What a
process builds later is collected as before. Frozen right before a fork (gunicorn's
master, the worker pool), as the ``gc`` module's documentation advises for a process
that forks without exec, the objects are not walked by the children's collections
either. That saved no memory here: gunicorn's master and two workers used 127-128 MB
(PSS) after 3,000 event-list requests with the freeze and without, as reference
counting writes to those pages anyway.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("les.gc")


def freeze_start_up_objects(process: str) -> int:
    """Collect the garbage start-up left, then move every object still tracked out of
    the collector's reach; logs and returns how many are frozen in all."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "%s: %d start-up objects frozen out of the garbage collector's full passes",
        process,
        frozen,
    )
    return frozen


def freeze_before_fork() -> None:
    """What the process built since it froze its start-up objects (a forking parent's
    few): frozen too, without a collection, so a fork costs no collector pass."""
    gc.freeze()
