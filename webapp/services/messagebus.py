"""Routing of domain messages to handlers.

Critical handlers (``@handles(Message)``) run synchronously inside the unit of
work, in the business transaction. Non-critical handlers are marked
``@handles(Message, asynchronous=True)``: their message is written to the outbox in
the same transaction and a worker runs them later (see ``workers``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from webapp.domain.messages import Message

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AsyncHandler:
    #: stable name, the inbox key (module:function)
    name: str
    func: Callable[..., Any]
    #: commits part of its work before its end (``checkpoint``: a fan-out of mails
    #: recorded recipient by recipient): it locks the message's row and writes its
    #: inbox row at its end; every other handler claims its inbox row first (see
    #: ``webapp.services.delivery``)
    checkpoints: bool = False
    #: writes only through its context's session and sends nothing (a counter): when
    #: a message's other handlers succeed, it runs in the transaction that marks the
    #: message processed, with the job's other messages, instead of a transaction of
    #: its own (see ``webapp.services.delivery``)
    database_only: bool = False


_sync: dict[type[Message], list[Callable[..., Any]]] = defaultdict(list)
_async: dict[str, list[AsyncHandler]] = defaultdict(list)


def handles(
    *message_types: type[Message],
    asynchronous: bool = False,
    checkpoints: bool = False,
    database_only: bool = False,
) -> Callable[[F], F]:
    """Register the decorated function as a handler of ``message_types``.
    ``checkpoints`` and ``database_only`` (asynchronous handlers only): see
    :class:`AsyncHandler`."""
    if (checkpoints or database_only) and not asynchronous:
        raise ValueError("checkpoints and database_only are for asynchronous handlers")
    if checkpoints and database_only:
        raise ValueError("a database-only handler commits with its message, not midway")

    def register(func: F) -> F:
        for message_type in message_types:
            if asynchronous:
                name = f"{func.__module__}:{func.__qualname__}"
                if all(h.name != name for h in _async[message_type.__name__]):
                    handler = AsyncHandler(name, func, checkpoints, database_only)
                    _async[message_type.__name__].append(handler)
            elif func not in _sync[message_type]:
                _sync[message_type].append(func)
        return func

    return register


def sync_handlers(message_type: type[Message]) -> list[Callable[..., Any]]:
    load_handlers()
    return list(_sync.get(message_type, ()))


def async_handlers(type_name: str) -> list[AsyncHandler]:
    load_handlers()
    return list(_async.get(type_name, ()))


def goes_to_outbox(message: Message) -> bool:
    return bool(async_handlers(message.type_name))


def load_handlers() -> None:
    """Import the handler modules so their decorators have registered."""
    from webapp.services import async_handlers, handlers  # noqa: F401
