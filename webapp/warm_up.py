"""Code the web would otherwise load on a worker's first requests, loaded before them.

A fresh web worker used to spend its first registration flow at about 100 ms instead
of 14-17 (in-process, data already cached in Redis): every page template compiled on
its first render, the message handlers imported on the first use case, and WTForms'
``Email`` validator importing ``email_validator`` and ``idna`` on the first form it
checked (37 ms alone). gunicorn replaces a worker after ``max_requests``, so its
successor paid that again. Over HTTP, a new gunicorn worker's first registration flow
took 143-176 ms before and 72-90 ms with the warm-up (later flows 14-32 ms); what is
left is its first connections and its empty near cache. Loaded in gunicorn's master
before it forks (with the app preloaded), every worker inherits them, frozen with the
rest of its start-up objects (``webapp.start_up_objects``).
"""

from __future__ import annotations

from flask import Flask

#: templates the pages render; the mails' are compiled by the mailer's own environment
_MAIL_TEMPLATES = "mail/"


def load_request_code(app: Flask) -> int:
    """Import what the views import on first use and compile every page template
    into the app's template cache; returns how many templates it holds (a second
    call finds them all cached)."""
    import email_validator  # noqa: F401  (WTForms' Email validator imports it lazily)

    from webapp.services import messagebus

    messagebus.load_handlers()
    env = app.jinja_env
    names = env.list_templates(filter_func=lambda name: not name.startswith(_MAIL_TEMPLATES))
    for name in names:
        env.get_template(name)
    return len(names)
