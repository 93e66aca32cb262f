"""The unit of work: one transaction per use case.

``commit()`` publishes the messages the aggregates recorded: synchronous handlers
run first (they may record more messages), then every message with asynchronous
handlers is written to ``OutboxMessages`` — all before the single commit. Side
effects outside the database (cache invalidation, waking the relay) run only
after the commit succeeded.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from webapp.adapters.audit import record_audit
from webapp.adapters.outbox import write_outbox
from webapp.adapters.repository import (
    AttendeeRepository,
    EventRepository,
    RegistrationRepository,
)
from webapp.domain.messages import Message, RegistrationCancelled, RegistrationPromoted
from webapp.services import messagebus

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewRegistration:
    """A registration this unit of work created, as committed, with its attendee's
    stored name and email: enough for the read cache to hold its record right away."""

    registration_id: uuid.UUID
    event_id: int
    status: str
    queue_key: int | None
    created_at: datetime
    name: str
    email: str


@dataclass
class CommitResult:
    """What a committed unit of work changed, for after-commit hooks."""

    messages: list[Message] = field(default_factory=list)
    event_ids: set[int] = field(default_factory=set)
    outbox_rows: list[dict[str, Any]] = field(default_factory=list)
    new_registrations: list[NewRegistration] = field(default_factory=list)
    #: capacity, confirmed_count and waitlist_count as committed, of the events this
    #: unit of work held locked (nobody else could change them until the commit)
    event_counts: dict[int, dict[str, int]] = field(default_factory=dict)
    #: registration id -> its status and cancelled_at as committed, of the existing
    #: registrations this unit of work cancelled or promoted (under their event's lock)
    changed_registrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what before-commit hooks noted for their after-commit counterparts
    prepared: dict[str, Any] = field(default_factory=dict)


AfterCommitHook = Callable[[CommitResult], None]
#: runs inside the transaction, right before COMMIT, with the result so far; it must be
#: quick (the unit of work still holds its locks) and must not fail the commit
BeforeCommitHook = Callable[[CommitResult], None]


class UnitOfWork:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        after_commit: list[AfterCommitHook] | None = None,
        before_commit: list[BeforeCommitHook] | None = None,
        trace_context: Callable[[], str | None] | None = None,
        max_retries: int = 3,
    ) -> None:
        self.session_factory = session_factory
        self.after_commit_hooks = after_commit or []
        self.before_commit_hooks = before_commit or []
        self.trace_context = trace_context or (lambda: None)
        self.max_retries = max_retries
        self.now = utcnow()

    def __enter__(self) -> UnitOfWork:
        self.now = utcnow()
        self.session = self.session_factory()
        self.events = EventRepository(self.session)
        self.registrations = RegistrationRepository(self.session)
        self.attendees = AttendeeRepository(self.session)
        self._committed = False
        self._result = CommitResult()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            self.session.rollback()
        self.session.close()

    def flush(self) -> None:
        self.session.flush()

    def created(self, registration: NewRegistration) -> None:
        """Report a registration this unit of work creates (to after-commit hooks)."""
        self._result.new_registrations.append(registration)

    def audit(
        self,
        actor: str,
        action: str,
        target: dict[str, Any],
        outcome: str = "done",
        count: int | None = 1,
        reason: str | None = None,
    ) -> int:
        """Write an audit row in this unit of work's transaction (commits with it)."""
        return record_audit(
            self.session,
            at=self.now,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            count=count,
            reason=reason,
        )

    def commit(self) -> CommitResult:
        self.publish()
        result = self._result
        result.event_ids = {e.id for e in self.events.seen if e.id is not None}
        result.event_counts = {
            e.id: {
                "capacity": e.capacity,
                "confirmed_count": e.confirmed_count,
                "waitlist_count": e.waitlist_count,
            }
            for e in self.events.locked
            if e.id is not None
        }
        result.changed_registrations = self._changed_registrations(result.messages)
        for prepare in self.before_commit_hooks:
            try:
                prepare(result)
            except Exception:  # an optimisation must never fail the use case
                log.exception("before-commit hook %r failed", prepare)
        self.session.commit()
        self._committed = True
        for hook in self.after_commit_hooks:
            try:
                hook(result)
            except Exception:  # a side effect must never undo a committed use case
                log.exception("after-commit hook %r failed", hook)
        return result

    def rollback(self) -> None:
        self.session.rollback()

    def _changed_registrations(self, messages: list[Message]) -> dict[str, dict[str, Any]]:
        """The committed status of each registration a message says was cancelled or
        promoted, read off the entities this unit of work loaded (no query)."""
        changed = {
            m.registration_id
            for m in messages
            if isinstance(m, RegistrationCancelled | RegistrationPromoted)
        }
        return {
            str(r.id): {"status": r.status.value, "cancelled_at": r.cancelled_at}
            for r in self.registrations.loaded.values()
            if str(r.id) in changed
        }

    def _collect(self) -> list[Message]:
        collected: list[Message] = []
        for event in self.events.seen:
            collected.extend(event.messages)
            event.messages.clear()
        return collected

    def publish(self) -> None:
        """Run the synchronous handlers of the messages recorded so far (they may
        record more) and write those with asynchronous handlers to the outbox.

        ``commit()`` calls it; a use case calls it earlier when it needs the
        handlers' effects (e.g. how many people a capacity change promoted) before
        committing. Calling it again only handles messages recorded since.
        """
        to_outbox: list[Message] = []
        queue = deque(self._collect())
        while queue:
            message = queue.popleft()
            self._result.messages.append(message)
            for handler in messagebus.sync_handlers(type(message)):
                handler(message, self)
            if messagebus.goes_to_outbox(message):
                to_outbox.append(message)
            queue.extend(self._collect())
        self.session.flush()
        # CreatedAt is when the message is written, at the end of the use case: the
        # relay's and workers' latencies (metrics, dashboard, benchmark) start there,
        # not at the start of the transaction
        self._result.outbox_rows.extend(
            write_outbox(self.session, to_outbox, utcnow(), self.trace_context(), self.max_retries)
        )
