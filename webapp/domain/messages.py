"""Domain messages recorded by the Event aggregate.

Messages are facts in the past tense. Each is a frozen dataclass whose fields are
plain JSON values (ids as strings), so it can be written to the outbox as-is and
rebuilt in a worker with :func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Message:
    #: registry of message classes by name, filled by ``__init_subclass__``
    types: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Message.types[cls.__name__] = cls

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def from_dict(type_name: str, data: dict[str, Any]) -> Message:
    """Rebuild a message from its outbox ``Type`` and ``Data``."""
    try:
        cls = Message.types[type_name]
    except KeyError:
        raise ValueError(f"unknown message type {type_name!r}") from None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RegistrationCreated(Message):
    """An attendee registered. ``status`` is Confirmed or Waitlisted; for a waitlisted
    registration ``position`` is the 1-based waitlist position at creation time."""

    event_id: int
    registration_id: str
    attendee_id: str
    status: str
    position: int | None = None


@dataclass(frozen=True)
class RegistrationCancelled(Message):
    """A registration was cancelled; ``previous_status`` says whether a seat was freed."""

    event_id: int
    registration_id: str
    attendee_id: str
    previous_status: str


@dataclass(frozen=True)
class RegistrationPromoted(Message):
    """A waitlisted registration got a seat (after a cancellation or capacity increase)."""

    event_id: int
    registration_id: str
    attendee_id: str


@dataclass(frozen=True)
class WaitlistPositionChanged(Message):
    """The waitlist of an event moved: everyone waiting behind ``after_queue_key`` moved
    up by ``moved_by`` places. One message per change of the queue; the fan-out to the
    people concerned happens in the async handler, never in the request."""

    event_id: int
    after_queue_key: int
    moved_by: int
    reason: str


@dataclass(frozen=True)
class CapacityIncreased(Message):
    """An organiser raised the capacity of an event from ``old_capacity``."""

    event_id: int
    old_capacity: int
    new_capacity: int


@dataclass(frozen=True)
class CapacityDecreased(Message):
    """An organiser lowered the capacity (never below the confirmed count)."""

    event_id: int
    old_capacity: int
    new_capacity: int
