"""After-commit cache invalidation: derive from a committed unit of work exactly which
cached keys changed, and drop them before the request answers.

It runs in the writer's own request (an after-commit hook of the unit of work, not
the outbox), so the attendee who registered or the organiser who changed the
capacity reads the new state on the next page. Promotions made by the synchronous
handlers are messages of the same commit, so they are covered too.

=============================================  ==========================================
change                                         keys dropped
=============================================  ==========================================
any change to an event                         ``counts:<id>``, the cached list pages
registration created / cancelled / promoted    ``registration:<uuid>`` of that registration
waitlist moved (cancel while waiting,          ``waitlist:<id>`` (all positions of the
promotion)                                     event)
event created or edited, capacity changed      ``event:<id>``, ``upcoming``, the
                                               cached pages of that event (their
                                               counts are rendered live)
=============================================  ==========================================

What the commit itself knows to be current is stored in the same Redis transaction
(``fresh_values``): a new registration's record, the waitlist position of a new
waiting one, the cached record of a cancelled or promoted one with its new status,
and the committed counts of the events it held locked. Each is stored only if no
other write's invalidation of that key came between the generation read before the
commit and this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from webapp.adapters.cache import (
    REGISTRATION_COUNTS,
    USER_INFORMATION,
    WAITLIST_POSITIONS,
    CacheLayer,
    Slot,
)
from webapp.adapters.cache_pages import all_page_keys, event_page_keys
from webapp.domain.messages import (
    Message,
    RegistrationCancelled,
    RegistrationCreated,
    RegistrationPromoted,
    WaitlistPositionChanged,
)
from webapp.domain.model import RegistrationStatus
from webapp.services.read_model import (
    UPCOMING_KEY,
    counts_key,
    event_key,
    registration_key,
    waitlist_key,
)
from webapp.services.unit_of_work import (
    AfterCommitHook,
    BeforeCommitHook,
    CommitResult,
    NewRegistration,
)

log = logging.getLogger(__name__)

#: messages of the registration flow: they change counts, registrations and the
#: waitlist, never an event's details
_REGISTRATION_FLOW = (
    RegistrationCreated,
    RegistrationCancelled,
    RegistrationPromoted,
    WaitlistPositionChanged,
)


def keys_to_invalidate(result: CommitResult) -> set[str]:
    """The cache keys a committed unit of work made stale."""
    keys: set[str] = set()
    by_event: dict[int, list[Message]] = {event_id: [] for event_id in result.event_ids}
    for message in result.messages:
        event_id = getattr(message, "event_id", None)
        if event_id is None:
            continue
        by_event.setdefault(int(event_id), []).append(message)
        registration_id = getattr(message, "registration_id", None)
        if registration_id:
            keys.add(registration_key(registration_id))
        if isinstance(message, WaitlistPositionChanged | RegistrationPromoted) or (
            isinstance(message, RegistrationCancelled) and message.previous_status == "Waitlisted"
        ):
            keys.add(waitlist_key(int(event_id)))
    for event_id, messages in by_event.items():
        keys.add(counts_key(event_id))
        # no message (created, details edited) or a non-registration one (capacity):
        # the details, the event's pages and the list of upcoming events may have
        # changed. The registration flow changes only the counts, which the cached
        # event page renders live on every hit (cache_pages.live_part).
        if not messages or not all(isinstance(m, _REGISTRATION_FLOW) for m in messages):
            keys.add(event_key(event_id))
            keys.add(UPCOMING_KEY)
            keys |= event_page_keys(event_id)
    if by_event:
        keys |= all_page_keys()
    return keys


#: CommitResult.prepared: key -> its generation, read before the commit (the counts of
#: the events held locked, the waitlists that new waiting registrations joined, the
#: records of the registrations cancelled or promoted)
_GENERATIONS = "cache.generations"
#: CommitResult.prepared: slot -> the cached record of a changed registration, read
#: with the generations
_RECORDS = "cache.records"
#: a unit of work that changed more registrations than this (a capacity increase that
#: promoted many) only invalidates their records: no large read inside its transaction
_RECORDS_PATCHED_AT_MOST = 10


def fresh_values(result: CommitResult) -> dict[Slot, tuple[Any, str]]:
    """What this commit itself knows to be current, stored as its keys are invalidated
    (``CacheLayer.invalidate_and_store``), each with the generation it was read under:

    - the records of the registrations it created, as the status page reads them
      (``queries.registration_record``'s shape; generation "0": the key is new), so
      the page after the registration's redirect needs no query;
    - the waitlist position of each registration it put on a waitlist (the domain
      gives it: the last place, decided under the event's lock), added to the
      event's cached positions, which nobody else's place changed;
    - the record of each registration it cancelled or promoted, as cached before the
      commit with the committed status and cancellation time (nothing else in a
      record changes);
    - the counts of the events it held locked, as committed,

    the last three where their key's generation was read before the commit
    (:func:`make_prepare_hook`), so neither the status pages nor the event's pages
    need a query.
    """
    fresh: dict[Slot, tuple[Any, str]] = {
        _record_slot(new.registration_id): (
            {
                "registration_id": new.registration_id,
                "event_id": new.event_id,
                "status": new.status,
                "queue_key": new.queue_key,
                "created_at": new.created_at,
                "cancelled_at": None,
                "name": new.name,
                "email": new.email,
            },
            "0",
        )
        for new in result.new_registrations
    }
    generations: dict[str, str] = result.prepared.get(_GENERATIONS) or {}
    for slot, position in _new_positions(result).items():
        if slot.key in generations:
            fresh[slot] = (position, generations[slot.key])
    records: dict[Slot, dict[str, Any]] = result.prepared.get(_RECORDS) or {}
    for registration_id, change in result.changed_registrations.items():
        slot = _record_slot(registration_id)
        if slot in records and slot.key in generations:
            fresh[slot] = ({**records[slot], **change}, generations[slot.key])
    for event_id, counts in result.event_counts.items():
        key = counts_key(event_id)
        if key in generations:
            fresh[Slot(REGISTRATION_COUNTS, key)] = (dict(counts), generations[key])
    return fresh


def _new_positions(result: CommitResult) -> dict[Slot, int]:
    """The waitlist position of each registration this unit of work put on a waitlist,
    in the slot the status page reads it from."""
    positions = {
        message.registration_id: message.position
        for message in result.messages
        if isinstance(message, RegistrationCreated) and message.position is not None
    }
    return {
        _position_slot(new): positions[str(new.registration_id)]
        for new in result.new_registrations
        if new.queue_key is not None and str(new.registration_id) in positions
    }


def _record_slot(registration_id: str) -> Slot:
    return Slot(USER_INFORMATION, registration_key(registration_id))


def _position_slot(new: NewRegistration) -> Slot:
    """Where a new waiting registration's position is cached: its event's hash."""
    return Slot(WAITLIST_POSITIONS, waitlist_key(new.event_id), field=str(new.queue_key))


def make_prepare_hook(layer: CacheLayer) -> BeforeCommitHook:
    """The hook for ``Database.before_commit``: read the generations of the counts of
    the events the unit of work holds locked, of the waitlists its new waiting
    registrations joined and of the records of the registrations it changed, with
    those records, so that what it committed can be stored with the invalidation (one
    Redis round trip inside the transaction)."""

    def read_generations(result: CommitResult) -> None:
        changed = result.changed_registrations
        if len(changed) > _RECORDS_PATCHED_AT_MOST:
            changed = {}
        records = [_record_slot(r) for r in sorted(changed)]
        keys = [counts_key(event_id) for event_id in sorted(result.event_counts)]
        keys += sorted({slot.key for slot in _new_positions(result)})
        keys += [slot.key for slot in records]
        read = layer.read_before_write(keys, records) if keys else None
        if read:
            result.prepared[_GENERATIONS], result.prepared[_RECORDS] = read

    return read_generations


def to_refresh(result: CommitResult, stored: set[Slot]) -> tuple[set[int], set[str]]:
    """Events whose counts, and registrations whose records, the writer reads next and
    that were not stored with the invalidation: the writer's own registration, created
    or cancelled (a new waiting one whose position was not stored, for its position).
    Not a promoted one: its owner is not the one reading next (the promotion mail's
    handler reads the database), so its record waits for its next reader."""
    stored_keys = {slot.key for slot in stored}
    event_ids = set(result.event_ids)
    registration_ids: set[str] = set()
    waiting = {
        str(new.registration_id)
        for new in result.new_registrations
        if new.status == RegistrationStatus.WAITLISTED.value and _position_slot(new) not in stored
    }
    for message in result.messages:
        if getattr(message, "event_id", None) is not None:
            event_ids.add(int(message.event_id))  # type: ignore[attr-defined]
        if isinstance(message, RegistrationCreated | RegistrationCancelled) and (
            registration_key(message.registration_id) not in stored_keys
            or str(message.registration_id) in waiting
        ):
            registration_ids.add(message.registration_id)
    return {e for e in event_ids if counts_key(e) not in stored_keys}, registration_ids


def make_hook(
    layer: CacheLayer,
    on_invalidated: Callable[[], None] | None = None,
    refresh: Callable[[set[int], set[str]], None] | None = None,
) -> AfterCommitHook:
    """The hook for ``Database.after_commit``: drop the stale keys, then refresh what
    the writer reads next (``refresh``) and schedule warming (``on_invalidated``)."""

    def invalidate_cache(result: CommitResult) -> None:
        keys = keys_to_invalidate(result)
        if not keys:
            return
        stored = layer.invalidate_and_store(keys, fresh_values(result))
        if stored is None:
            return  # Redis unreachable: nothing to refresh into
        if refresh is not None:
            try:
                refresh(*to_refresh(result, stored))
            except Exception:  # refreshing is an optimisation; the keys are gone anyway
                log.warning("cache refresh after commit failed", exc_info=True)
        if on_invalidated is not None:
            on_invalidated()

    return invalidate_cache
