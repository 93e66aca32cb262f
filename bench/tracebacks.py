"""Realistic failures for the seeded dead letters: what ``webapp.services.delivery``
stores when a handler fails (``Error``: the ``Class: message`` line, a blank line and
the formatted traceback, 12-16 frames through the handler, the mailer and smtplib,
socket, SQLAlchemy or Jinja; 2-4 KB) and the ``ErrorSummary`` it writes beside it.

``{n}`` in the texts stands for the dead letter's number: every message names its own
recipient, as real SMTP and handler errors do.
"""

from __future__ import annotations

from dataclasses import dataclass

APP = "/opt/live-event-service"
LIB = "/usr/local/lib/python3.11"
SITE = f"{APP}/.venv/lib/python3.11/site-packages"
Frame = tuple[str, int, str, str]
#: the per-message part of every error message (the benchmark's narrow search term)
DETAIL = " (dead letter {n}, person d{n}@dead.example.com)"


@dataclass(frozen=True)
class Failure:
    """One kind of handler failure."""

    #: class name (``ErrorType`` of the seeded rows)
    name: str
    #: module-qualified class name, as the traceback's last line spells it
    qualified: str
    #: exception message (first line carries :data:`DETAIL`)
    message: str
    #: the innermost application frame (file:line), for the fingerprint
    frame: str
    #: frames below the handler call, innermost last: (file, line, function, source)
    frames: tuple[Frame, ...]
    #: the exception this one was raised ``from``: its ``Class: message`` and frames
    cause: tuple[str, tuple[Frame, ...]] | None = None

    def error(self) -> str:
        """The ``Error`` column: summary line, blank line, traceback."""
        lines = [f"{self.name}: {self.message}", ""]
        if self.cause is not None:
            _format(lines, self.cause[1], self.cause[0])
            lines += [
                "",
                "The above exception was the direct cause of the following exception:",
                "",
            ]
        _format(lines, _HANDLER_FRAMES + self.frames, f"{self.qualified}: {self.message}")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """The ``ErrorSummary`` column: class and the message's first line."""
        return f"{self.qualified}: {self.message.splitlines()[0]}"[:300]


def _format(lines: list[str], frames: tuple[Frame, ...], last: str) -> None:
    lines.append("Traceback (most recent call last):")
    for path, line, function, source in frames:
        lines.append(f'  File "{path}", line {line}, in {function}')
        lines.append(f"    {source}")
        if " = " in source and "(" in source:  # Python 3.11 marks the call
            start = source.index(" = ") + 3
            lines.append("    " + " " * start + "^" * (len(source) - start))
    lines.append(last)


_HANDLER_FRAMES: tuple[Frame, ...] = (
    (f"{APP}/webapp/services/delivery.py", 220, "_run", "self._run_handler(mid, handler, message)"),
    (f"{APP}/webapp/services/delivery.py", 252, "_run_handler", "handler.func(message, ctx)"),
)
_MAIL_FRAMES: tuple[Frame, ...] = (
    (
        f"{APP}/webapp/services/async_handlers.py",
        59,
        "send_confirmation_mail",
        "ctx.mailer.send(view['email'], 'confirmation', context, message_key=key)",
    ),
    (
        f"{APP}/webapp/adapters/mail.py",
        93,
        "send",
        'with trace.get_tracer("les.mail").start_as_current_span("mail.send", attributes=a):',
    ),
    (f"{LIB}/contextlib.py", 155, "__exit__", "self.gen.throw(typ, value, traceback)"),
    (
        f"{SITE}/opentelemetry/trace/__init__.py",
        589,
        "use_span",
        "raise",
    ),
    (f"{APP}/webapp/adapters/mail.py", 97, "send", "self._send_smtp(mail)"),
)
_CONNECT_FRAMES: tuple[Frame, ...] = (
    (f"{APP}/webapp/adapters/mail.py", 106, "_send_smtp", "self._smtp = self._connect()"),
    (
        f"{APP}/webapp/adapters/mail.py",
        127,
        "_connect",
        "smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)",
    ),
    (f"{LIB}/smtplib.py", 255, "__init__", "(code, msg) = self.connect(host, port)"),
)

_SQL_FRAMES: tuple[Frame, ...] = (
    (f"{SITE}/sqlalchemy/orm/session.py", 2362, "execute", "return self._execute_internal("),
    (
        f"{SITE}/sqlalchemy/orm/session.py",
        2256,
        "_execute_internal",
        "result = conn.execute(statement, params or {}, execution_options=e)",
    ),
    (
        f"{SITE}/sqlalchemy/engine/base.py",
        1418,
        "execute",
        "return meth(self, distilled_parameters, execution_options or NO_OPTIONS)",
    ),
    (
        f"{SITE}/sqlalchemy/engine/base.py",
        1640,
        "_execute_clauseelement",
        "ret = self._execute_context(",
    ),
    (
        f"{SITE}/sqlalchemy/engine/base.py",
        1846,
        "_execute_context",
        "return self._exec_single_context(",
    ),
)
_PG_CLOSED = (
    "consuming input failed: server closed the connection unexpectedly" + DETAIL + "\n"
    "\tThis probably means the server terminated abnormally\n"
    "\tbefore or while processing the request."
)

FAILURES: tuple[Failure, ...] = (
    Failure(
        "SMTPServerDisconnected",
        "smtplib.SMTPServerDisconnected",
        "Connection unexpectedly closed" + DETAIL,
        "webapp/adapters/mail.py:106",
        (
            *_MAIL_FRAMES,
            *_CONNECT_FRAMES,
            (f"{LIB}/smtplib.py", 343, "connect", "(code, msg) = self.getreply()"),
            (
                f"{LIB}/smtplib.py",
                405,
                "getreply",
                'raise SMTPServerDisconnected("Connection unexpectedly closed")',
            ),
        ),
    ),
    Failure(
        "SMTPRecipientsRefused",
        "smtplib.SMTPRecipientsRefused",
        "{'d{n}@dead.example.com': (550, b'5.1.1 <d{n}@dead.example.com>: Recipient address "
        "rejected: User unknown in virtual mailbox table')}" + DETAIL,
        "webapp/adapters/mail.py:107",
        (
            *_MAIL_FRAMES,
            (f"{APP}/webapp/adapters/mail.py", 107, "_send_smtp", "self._smtp.send_message(mail)"),
            (
                f"{LIB}/smtplib.py",
                986,
                "send_message",
                "return self.sendmail(from_addr, to_addrs, flatmsg, mail_options, rcpt_options)",
            ),
            (f"{LIB}/smtplib.py", 901, "sendmail", "raise SMTPRecipientsRefused(senderrs)"),
        ),
    ),
    Failure(
        "TimeoutError",
        "TimeoutError",
        "timed out" + DETAIL,
        "webapp/adapters/mail.py:106",
        (
            *_MAIL_FRAMES,
            *_CONNECT_FRAMES,
            (
                f"{LIB}/smtplib.py",
                341,
                "connect",
                "self.sock = self._get_socket(host, port, self.timeout)",
            ),
            (
                f"{LIB}/smtplib.py",
                312,
                "_get_socket",
                "return socket.create_connection((host, port), timeout, self.source_address)",
            ),
            (f"{LIB}/socket.py", 851, "create_connection", "raise exceptions[0]"),
            (f"{LIB}/socket.py", 836, "create_connection", "sock.connect(sa)"),
        ),
    ),
    Failure(
        "OperationalError",
        "sqlalchemy.exc.OperationalError",
        f"(psycopg.OperationalError) {_PG_CLOSED}\n"
        "(Background on this error at: https://sqlalche.me/e/20/e3q8)",
        "webapp/services/async_handlers.py:126",
        (
            (
                f"{APP}/webapp/services/async_handlers.py",
                112,
                "count_popularity",
                "_increment_stats(ctx.session, message.event_id, increments)",
            ),
            (
                f"{APP}/webapp/services/async_handlers.py",
                126,
                "_increment_stats",
                "session.execute(stmt)",
            ),
            *_SQL_FRAMES,
            (
                f"{SITE}/sqlalchemy/engine/base.py",
                1986,
                "_exec_single_context",
                "self._handle_dbapi_exception(e, statement, parameters, cursor, context)",
            ),
            (
                f"{SITE}/sqlalchemy/engine/base.py",
                2355,
                "_handle_dbapi_exception",
                "raise sqlalchemy_exception.with_traceback(exc_info[2]) from e",
            ),
            (
                f"{SITE}/sqlalchemy/engine/base.py",
                1967,
                "_exec_single_context",
                "self.dialect.do_execute(",
            ),
            (
                f"{SITE}/sqlalchemy/engine/default.py",
                941,
                "do_execute",
                "cursor.execute(statement, parameters)",
            ),
            (f"{SITE}/psycopg/cursor.py", 732, "execute", "raise ex.with_traceback(None)"),
        ),
        cause=(
            f"psycopg.OperationalError: {_PG_CLOSED}",
            (
                (
                    f"{SITE}/sqlalchemy/engine/base.py",
                    1967,
                    "_exec_single_context",
                    "self.dialect.do_execute(",
                ),
                (
                    f"{SITE}/sqlalchemy/engine/default.py",
                    941,
                    "do_execute",
                    "cursor.execute(statement, parameters)",
                ),
                (f"{SITE}/psycopg/cursor.py", 732, "execute", "raise ex.with_traceback(None)"),
            ),
        ),
    ),
    Failure(
        "KeyError",
        "KeyError",
        "'email'" + DETAIL,
        "webapp/services/async_handlers.py:58",
        (
            (
                f"{APP}/webapp/services/async_handlers.py",
                58,
                "send_confirmation_mail",
                "to = view['email']",
            ),
            (
                f"{SITE}/sqlalchemy/engine/row.py",
                181,
                "__getitem__",
                "return self._get_by_key_impl_mapping(key)",
            ),
            (
                f"{SITE}/sqlalchemy/engine/result.py",
                174,
                "_key_fallback",
                "raise KeyError(key.args[0]) from ke",
            ),
        ),
        cause=(
            "KeyError: 'email'",
            (
                (
                    f"{SITE}/sqlalchemy/engine/row.py",
                    178,
                    "__getitem__",
                    "return self._parent._key_fallback(key, ke)",
                ),
                (
                    f"{SITE}/sqlalchemy/engine/result.py",
                    171,
                    "_key_fallback",
                    "map_ = self._keymap[key]",
                ),
            ),
        ),
    ),
    Failure(
        "TemplateNotFound",
        "jinja2.exceptions.TemplateNotFound",
        "mail/promotion.html" + DETAIL,
        "webapp/adapters/mail.py:75",
        (
            *_MAIL_FRAMES[:4],
            (
                f"{APP}/webapp/adapters/mail.py",
                96,
                "send",
                "mail = self.build(to, template, context, message_key)",
            ),
            (
                f"{APP}/webapp/adapters/mail.py",
                75,
                "build",
                'html = env.get_template(f"mail/{template}.html")',
            ),
            (
                f"{SITE}/jinja2/environment.py",
                1010,
                "get_template",
                "return self._load_template(name, globals)",
            ),
            (
                f"{SITE}/jinja2/environment.py",
                969,
                "_load_template",
                "template = self.loader.load(self, name, self.make_globals(globals))",
            ),
            (
                f"{SITE}/jinja2/loaders.py",
                125,
                "load",
                "source, filename, uptodate = self.get_source(environment, name)",
            ),
            (f"{SITE}/jinja2/loaders.py", 204, "get_source", "raise TemplateNotFound(template)"),
        ),
    ),
)
