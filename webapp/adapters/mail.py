"""Outgoing mail: text + HTML bodies rendered from ``templates/mail``, sent over SMTP,
or written as ``.eml`` files into ``MAILBOX_DIR`` when no SMTP host is configured.

The Message-ID is derived from the caller's ``message_key`` (outbox message id +
purpose), so a mail sent again after a crash carries the same Message-ID and a
mail client or the mailbox folder recognises the duplicate.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
import tempfile
from collections.abc import Sequence
from email.charset import Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from opentelemetry import trace

from webapp.observability.metrics import MAILS_SENT

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"

#: UTF-8 bodies sent as they are: ``7bit`` when ASCII, else ``8bit`` (as
#: ``EmailMessage.set_content`` does), not base64
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = None


class _Compat32(type(compat32)):  # type: ignore[misc]
    """``compat32``, the policy of ``email.mime``, with a shortcut for a header that
    needs no folding and no encoding: a printable ASCII value whose line fits is
    written as it is, which is what ``compat32`` writes for it (a test compares
    them). ``compat32`` builds a ``Header`` and runs its folding for every header of
    every mail: 0.08 of a mail's 0.13 ms to serialize."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        limit = self.max_line_length
        if (
            isinstance(value, str)
            and value.isascii()
            and value.isprintable()
            and limit is not None
            and len(name) + 2 + len(value) <= limit
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)  # type: ignore[no-any-return]


#: got once, not per mail (see ``webapp.observability.tracing.OUTBOX_TRACER``)
_TRACER = trace.get_tracer("les.mail")

#: the policy of every mail built here (``as_bytes`` and ``smtplib`` use it)
MAIL_POLICY = _Compat32()


def _header(value: str) -> str | Header:
    return value if value.isascii() else Header(value, "utf-8")


def _address(value: str) -> str:
    """``Name <addr>`` with a non-ASCII display name as an RFC 2047 word."""
    name, addr = parseaddr(value)
    return formataddr((name, addr), charset="utf-8") if addr else value


def _environment(auto_reload: bool) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=auto_reload,
    )


def _templates_auto_reload(config: dict[str, Any]) -> bool:
    """As Flask decides for the pages: ``TEMPLATES_AUTO_RELOAD``, else ``DEBUG``. Off,
    a mail's two templates are not looked up on disk again (a ``stat`` each) for
    every mail."""
    configured = config.get("TEMPLATES_AUTO_RELOAD")
    return bool(config.get("DEBUG")) if configured is None else bool(configured)


def message_id_for(message_key: str, sender: str) -> str:
    """Deterministic ``<hash@domain>`` for one logical mail."""
    digest = hashlib.sha256(message_key.encode()).hexdigest()[:32]
    return f"<{digest}@{_domain(sender)}>"


@lru_cache(maxsize=8)
def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"


def boundary_for(message_key: str, bodies: Sequence[str]) -> str:
    """The multipart boundary of one logical mail: derived from its key, so a mail
    sent again has the same bytes but for its Date, and (as the stdlib's random
    boundary) not found in any body, which it must not be. Set here because the
    stdlib's generator otherwise draws a random one and compiles a new regular
    expression for every mail to look for it: 0.055 of a mail's 0.33 ms to build and
    serialize, and a new entry in ``re``'s pattern cache for every mail."""
    digest = hashlib.sha256(b"boundary\0" + message_key.encode()).hexdigest()[:32]
    boundary, counter = f"=============={digest}==", 0
    while any(boundary in body for body in bodies):  # stricter than a line start
        boundary = f"=============={digest}==.{counter}"
        counter += 1
    return boundary


class Mailer:
    """Renders and delivers mails. ``SMTP_HOST`` empty -> ``MAILBOX_DIR`` files."""

    def __init__(self, config: dict[str, Any], keep_alive: bool = False) -> None:
        #: keep the SMTP session open between mails (long-lived worker processes)
        self.keep_alive = keep_alive
        self.sender = str(config.get("MAIL_FROM") or "Live Events <events@example.test>")
        self.host = str(config.get("SMTP_HOST") or "")
        self.port = int(config.get("SMTP_PORT") or 25)
        self.use_tls = bool(config.get("SMTP_USE_TLS"))
        self.use_ssl = bool(config.get("SMTP_USE_SSL"))
        self.username = str(config.get("SMTP_USERNAME") or "")
        self.password = str(config.get("SMTP_PASSWORD") or "")
        self.timeout = float(config.get("SMTP_TIMEOUT") or 10.0)
        self.mailbox_dir = Path(str(config.get("MAILBOX_DIR") or "var/mailbox"))
        self.env = _environment(_templates_auto_reload(config))
        #: the From header, parsed and encoded once
        self._from = _address(self.sender)
        self._smtp: smtplib.SMTP | None = None

    def preload(self) -> None:
        """Compile every mail template now (before a worker forks its children)."""
        for name in self.env.list_templates(filter_func=lambda n: n.startswith("mail/")):
            self.env.get_template(name)

    @property
    def transport(self) -> str:
        return f"smtp://{self.host}:{self.port}" if self.host else f"mailbox:{self.mailbox_dir}"

    def build(self, to: str, template: str, context: dict[str, Any], message_key: str) -> Message:
        """Render ``mail/<template>.txt`` (first line ``Subject: ...``) and ``.html``.

        Built with the stdlib's ``email.mime`` classes (``compat32`` policy): the
        same headers and transfer encodings as ``EmailMessage`` (7bit or 8bit
        UTF-8 bodies, RFC 2047 words for non-ASCII headers), at a thirtieth of the
        CPU; ``EmailMessage`` parses every header it is given through the header
        registry, which was a sixth of a worker's time per message."""
        text = self.env.get_template(f"mail/{template}.txt").render(**context)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise ValueError(f"mail/{template}.txt must start with a 'Subject:' line")
        html = self.env.get_template(f"mail/{template}.html").render(**context)
        text_body = body.lstrip("\n")
        boundary = boundary_for(message_key, (text_body, html))
        mail = MIMEMultipart("alternative", boundary, policy=MAIL_POLICY)
        mail["Subject"] = _header(first.removeprefix("Subject:").strip())
        mail["From"] = self._from
        mail["To"] = _address(to)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = message_id_for(message_key, self.sender)
        mail.attach(MIMEText(text_body, "plain", _UTF8, policy=MAIL_POLICY))
        mail.attach(MIMEText(html, "html", _UTF8, policy=MAIL_POLICY))
        return mail

    def send(self, to: str, template: str, context: dict[str, Any], message_key: str) -> None:
        attributes = {"les.mail.template": template, "les.mail.transport": self.transport}
        # the mail is the last hop of a registration's trace
        with _TRACER.start_as_current_span("mail.send", attributes=attributes):
            mail = self.build(to, template, context, message_key)
            if self.host:
                self._send_smtp(mail)
            else:
                self._write_mailbox(mail, message_key)
        MAILS_SENT.labels(template=template).inc()

    def _send_smtp(self, mail: Message) -> None:
        """Send over the process's open SMTP session (opened on first use, reopened
        once if the server closed it meanwhile)."""
        for attempt in (1, 2):
            fresh = self._smtp is None
            try:
                if self._smtp is None:
                    self._smtp = self._connect()
                self._smtp.send_message(mail)
                if not self.keep_alive:
                    self.close()
                return
            except (smtplib.SMTPServerDisconnected, ConnectionError) as error:
                self.close()
                if fresh or attempt == 2:
                    raise error
            except BaseException:
                self.close()  # unknown session state after a refusal: start clean
                raise

    def _connect(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP
        if self.use_ssl:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.use_tls and not self.use_ssl:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def close(self) -> None:
        """Quit the SMTP session, if one is open."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _write_mailbox(self, mail: Message, message_key: str) -> None:
        """One file per logical mail (named after the key): a redelivery overwrites it."""
        self.mailbox_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(message_key.encode()).hexdigest()[:24] + ".eml"
        fd, tmp = tempfile.mkstemp(dir=self.mailbox_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(mail.as_bytes())
        os.replace(tmp, self.mailbox_dir / name)


def make_mailer(config: dict[str, Any], keep_alive: bool = False) -> Mailer:
    return Mailer(config, keep_alive=keep_alive)
