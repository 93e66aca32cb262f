"""Test-only async handler for the Prometheus test, loaded by its worker through
LES_EXTRA_HANDLER_MODULES: every cancellation's handling fails, so handler failures
and dead letters appear in the metrics (with OUTBOX_MAX_RETRIES=1)."""

from __future__ import annotations

from typing import Any

from webapp.domain.messages import RegistrationCancelled
from webapp.services.messagebus import handles


class ObservabilityTestFailure(RuntimeError):
    """A deliberate handler failure."""


@handles(RegistrationCancelled, asynchronous=True)
def fail_on_cancellation(message: RegistrationCancelled, ctx: Any) -> None:
    raise ObservabilityTestFailure(f"deliberate failure for {message.registration_id}")
