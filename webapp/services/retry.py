"""Bounded retries of a whole use case on transient database conflicts."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock detected
RETRYABLE_SQLSTATES = {"40001", "40P01"}


class ServiceBusy(Exception):
    """The database stayed contended after every retry; ask the user to try again."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, IntegrityError):
        # a concurrent insert of the same attendee/registration: the retry sees it
        return True
    if isinstance(error, DBAPIError):
        code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        if code in RETRYABLE_SQLSTATES:
            return True
        if isinstance(error, OperationalError) and "database is locked" in str(error.orig):
            return True
    return False


def with_retries(action: Callable[[], T], attempts: int = 5, base_delay: float = 0.01) -> T:
    """Run ``action`` (which opens its own unit of work) until it commits."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except DBAPIError as error:
            if not is_transient(error):
                raise
            if attempt == attempts:
                log.warning("giving up after %d transient failures: %s", attempts, error.orig)
                raise ServiceBusy("The service is busy right now; please try again.") from error
            time.sleep(base_delay * (2 ** (attempt - 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")
