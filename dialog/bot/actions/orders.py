"""Demo order lookups in the app's database, and how an order is spoken on the phone.

The database URL comes from ``SWITCHBOARD_DATABASE_URL`` (set by ``dialog.runtime``).
The app's Alembic migrations own the ``orders`` table; this module only reads it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

DATABASE_URL_ENV = "SWITCHBOARD_DATABASE_URL"
ORDER_NUMBER_DIGITS = 5
POSTGRES_CONNECT_TIMEOUT_S = 3

_ORDER_QUERY = sqlalchemy.text(
    "SELECT number, customer_name, item, status, carrier, eta FROM orders WHERE number = :number"
)


class OrderLookupError(Exception):
    """The orders table could not be read (database down, misconfigured, not migrated)."""


@dataclass(frozen=True)
class Order:
    number: str
    customer_name: str
    item: str
    status: str
    carrier: str | None
    eta: dt.date | None


def sqlalchemy_url(app_url: str) -> str:
    """The app's SQLAlchemy 2 URL rewritten for this venv (psycopg 3 → psycopg2)."""
    return re.sub(r"^postgresql\+psycopg:", "postgresql+psycopg2:", app_url)


_engines: dict[str, Engine] = {}


def _get_engine() -> Engine:
    """A pooled engine for the URL in the environment (read on every call)."""
    app_url = os.environ.get(DATABASE_URL_ENV, "")
    if not app_url:
        raise OrderLookupError(f"{DATABASE_URL_ENV} is not set")
    if app_url not in _engines:
        url = sqlalchemy_url(app_url)
        connect_args: dict[str, Any] = {}
        if url.startswith("postgresql"):
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        _engines[app_url] = sqlalchemy.create_engine(
            url, pool_pre_ping=True, connect_args=connect_args
        )
    return _engines[app_url]


def _as_date(value: Any) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def find_order(number: str) -> Order | None:
    """The order with this number, ``None`` if there is none; ``OrderLookupError`` on failure."""
    try:
        with _get_engine().connect() as connection:
            row = connection.execute(_ORDER_QUERY, {"number": number}).first()
    except OrderLookupError:
        raise
    except Exception as error:  # any driver or SQL error means "can't look up right now"
        logger.warning("Order lookup for %s failed: %s", number, error)
        raise OrderLookupError(str(error)) from error
    if row is None:
        return None
    return Order(
        number=str(row.number),
        customer_name=row.customer_name or "",
        item=row.item or "",
        status=str(row.status),
        carrier=row.carrier or None,
        eta=_as_date(row.eta),
    )


# --- speech -------------------------------------------------------------------------------


def spoken_digits(number: str) -> str:
    """``"48213"`` → ``"4 8 2 1 3"``: Piper then reads it digit by digit."""
    return " ".join(number)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def spoken_date(day: dt.date, today: dt.date) -> str:
    """``today``, ``tomorrow`` or ``Tuesday, November 24th``."""
    if day == today:
        return "today"
    if day == today + dt.timedelta(days=1):
        return "tomorrow"
    return f"{day:%A}, {day:%B} {_ordinal(day.day)}"


def _on(day: dt.date, today: dt.date) -> str:
    spoken = spoken_date(day, today)
    return spoken if spoken in ("today", "tomorrow") else f"on {spoken}"


def describe_order(order: Order, today: dt.date) -> str:
    """One or two short sentences saying where the order is."""
    name = f"Order {spoken_digits(order.number)}"
    with_carrier = f" with {order.carrier}" if order.carrier else ""
    if order.status == "processing":
        text = f"{name} is being processed and hasn't shipped yet."
        if order.eta:
            text += f" We expect it to arrive {_on(order.eta, today)}."
        return text
    if order.status == "shipped":
        text = f"{name} has shipped{with_carrier}."
        if order.eta:
            text += f" It should arrive {_on(order.eta, today)}."
        return text
    if order.status == "out_for_delivery":
        return f"{name} is out for delivery{with_carrier}. It should arrive today."
    if order.status == "delivered":
        if order.eta:
            return f"{name} was delivered {_on(order.eta, today)}."
        return f"{name} was delivered."
    if order.status == "cancelled":
        return f"{name} was cancelled."
    return f"{name} has the status {order.status.replace('_', ' ')}."


def not_found_text(number: str) -> str:
    return f"Sorry, I couldn't find an order with the number {spoken_digits(number)}."


def wrong_length_text(number: str) -> str:
    return f"Order numbers have five digits, and I heard {spoken_digits(number)}."
