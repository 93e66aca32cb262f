"""Critical handlers: run synchronously in the business transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from webapp.domain.messages import CapacityIncreased, RegistrationCancelled
from webapp.domain.model import RegistrationStatus
from webapp.services.messagebus import handles

if TYPE_CHECKING:
    from webapp.services.unit_of_work import UnitOfWork


def _fill_free_seats(event_id: int, uow: UnitOfWork) -> None:
    event = uow.events.get(event_id, for_update=True)
    if event is None or event.seats_left == 0 or event.waitlist_count == 0:
        return
    # Nothing pending in this unit of work changes who is waiting (the seat was freed
    # by a confirmed registration, or by a new capacity), so the query need not flush
    # first: the event's counters are then written once, at the commit.
    with uow.session.no_autoflush:
        head = uow.registrations.waitlist_head(
            event.id, min(event.seats_left, event.waitlist_count)
        )
    event.promote(head, uow.now)


@handles(RegistrationCancelled)
def promote_after_cancellation(message: RegistrationCancelled, uow: UnitOfWork) -> None:
    """A freed seat goes to the head of the waitlist, in the same transaction."""
    if message.previous_status == RegistrationStatus.CONFIRMED.value:
        _fill_free_seats(message.event_id, uow)


@handles(CapacityIncreased)
def promote_after_capacity_increase(message: CapacityIncreased, uow: UnitOfWork) -> None:
    """New seats are filled from the waitlist, in queue order, in the same transaction."""
    _fill_free_seats(message.event_id, uow)
