"""``flask`` commands: migrations and demo data (admin users: ``flask users``)."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import Flask, current_app

from webapp.extensions import uow


def init_app(app: Flask) -> None:
    from webapp.services.staff import users_group

    app.cli.add_command(db_group)
    app.cli.add_command(seed_command)
    app.cli.add_command(users_group)


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.option("--revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database to ``revision`` (default: head)."""
    from webapp.adapters.migrate import upgrade

    upgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"database at {revision}")


DEMO_EVENTS = [
    # title, venue, days from now, capacity, registrations
    ("PyCon Meetup: Async in Practice", "Hall A", 7, 10, 8),
    ("Sold-out Workshop: Postgres Internals", "Room 2", 14, 5, 8),
    ("Community Picnic", "City Park", 21, 100, 12),
    ("Lightning Talks Night", "Main Stage", 30, 40, 0),
]


@click.command("seed")
@click.option("--if-empty", is_flag=True, help="Do nothing when events exist already.")
def seed_command(if_empty: bool) -> None:
    """Create a few demo events: one nearly full, one full with a waitlist."""
    from sqlalchemy import func, select

    from webapp.adapters.tables import events
    from webapp.services import events as event_service
    from webapp.services import registrations as registration_service
    from webapp.services.unit_of_work import utcnow

    db = current_app.extensions["les.db"]
    with db.engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(events)).scalar_one()
    if if_empty and existing:
        click.echo(f"{existing} events exist; not seeding")
        return
    now = utcnow().replace(minute=0, second=0, microsecond=0)
    for title, venue, days, capacity, taken in DEMO_EVENTS:
        details = event_service.EventDetails(
            title=title,
            description=f"{title}: a demo event of the Live Event Service.",
            venue=venue,
            start_date=now + timedelta(days=days, hours=18 - now.hour),
        )
        event_id = event_service.create_event(uow, details, capacity)
        for i in range(taken):
            registration_service.register(
                uow, event_id, f"Demo Attendee {i + 1}", f"demo{i + 1}@example.test"
            )
        click.echo(f"event {event_id}: {title} ({taken} registrations, {capacity} seats)")
