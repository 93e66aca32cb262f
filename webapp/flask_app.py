"""The application class: Flask's, remembering which hooks and views are coroutine
functions.

Flask asks ``ensure_sync`` of every view, ``before_request``, ``after_request`` and
``teardown`` hook on every request (18 times for a registration flow's request), and
each answer is ``inspect.iscoroutinefunction``, which unwraps the function and reads
its code flags. The answer never changes for a function, so it is kept (a bounded
cache: ``after_this_request`` callbacks are new functions on each request).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from flask import Flask


@functools.lru_cache(maxsize=1024)
def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)


class LiveEventFlask(Flask):
    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """As Flask's: ``async def`` functions wrapped to run to completion, others
        as they are."""
        try:
            coroutine = _is_coroutine_function(func)
        except TypeError:  # an unhashable callable: asked every time
            return super().ensure_sync(func)
        return self.async_to_sync(func) if coroutine else func
