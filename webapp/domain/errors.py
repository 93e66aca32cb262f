"""Domain errors: each carries a message an attendee or organiser can read."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused the operation; ``str(error)`` is user-facing."""


class InvalidInput(DomainError):
    """A value broke a domain invariant (empty name, capacity below zero...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EventNotFound(DomainError):
    pass


class RegistrationNotFound(DomainError):
    pass


class RegistrationClosed(DomainError):
    pass


class EventAlreadyStarted(DomainError):
    pass


class AlreadyRegistered(DomainError):
    """The attendee already holds an active registration for the event."""

    def __init__(self, registration_id: object) -> None:
        super().__init__("You are already registered for this event.")
        self.registration_id = registration_id


class AlreadyCancelled(DomainError):
    pass


class CapacityBelowConfirmed(DomainError):
    pass
