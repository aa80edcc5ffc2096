"""Engine creation, migrations on start, and the demo data."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from switchboard.storage.models import Order

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class DatabaseError(RuntimeError):
    """The database cannot be reached or migrated; the message says which URL and why."""


def _make_sqlite_directory(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


CONNECT_TIMEOUT_S = 5
"""How long a new PostgreSQL connection may take (a host that does not answer at all)."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory and foreign keys switched on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _make_sqlite_directory(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":  # an unreachable host fails in seconds
        return create_engine(url, pool_pre_ping=True,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Apply every Alembic revision up to head."""
    _make_sqlite_directory(url)
    try:
        command.upgrade(alembic_config(url), "head")
    except Exception as exc:
        safe = make_url(url).render_as_string(hide_password=True)
        raise DatabaseError(f"cannot migrate database {safe}: {exc}") from exc


DEMO_ORDERS = [
    ("48213", "Maria Lopez", "wireless headphones", "shipped", "UPS", 3),
    ("51007", "James Chen", "standing desk", "processing", None, 7),
    ("30562", "Aisha Khan", "coffee grinder", "delivered", "FedEx", -2),
    ("77801", "Tom Becker", "running shoes", "cancelled", None, None),
    ("62490", "Lena Novak", "laptop sleeve", "out_for_delivery", "USPS", 0),
]


def seed_demo_orders(session: Session) -> int:
    """Insert the demo orders that are missing; returns how many were added."""
    existing = set(session.scalars(select(Order.number)))
    added = 0
    today = date.today()
    for number, name, item, status, carrier, eta_days in DEMO_ORDERS:
        if number in existing:
            continue
        eta = today + timedelta(days=eta_days) if eta_days is not None else None
        session.add(
            Order(number=number, customer_name=name, item=item, status=status,
                  carrier=carrier, eta=eta)
        )
        added += 1
    session.commit()
    return added


def prepare_database(url: str, *, demo_data: bool = True) -> sessionmaker[Session]:
    """Migrate the database at ``url``, seed demo data, and return a session factory."""
    migrate(url)
    engine = make_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    if demo_data:
        with factory() as session:
            added = seed_demo_orders(session)
        if added:
            log.info("seeded %d demo orders", added)
    return factory
