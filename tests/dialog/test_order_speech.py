"""How the action server reads orders and speaks them (dialog/bot/actions/orders.py).

The module runs in the Rasa venv (SQLAlchemy 1.4); it uses only API that SQLAlchemy 2 has
too, so its logic is tested here directly.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from dialog.runtime import BOT_DIR

TODAY = dt.date(2026, 11, 21)  # a Saturday


def load_orders_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "switchboard_bot_orders", BOT_DIR / "actions" / "orders.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


orders = load_orders_module()


def order(status: str, carrier: str | None = "UPS", eta: dt.date | None = None) -> object:
    return orders.Order("48213", "Dana", "headphones", status, carrier, eta)


def test_shipped_order_is_spoken_digit_by_digit_with_carrier_and_date() -> None:
    text = orders.describe_order(order("shipped", eta=dt.date(2026, 11, 24)), TODAY)
    assert (
        text == "Order 4 8 2 1 3 has shipped with UPS. It should arrive on Tuesday, November 24th."
    )


@pytest.mark.parametrize(
    ("status", "carrier", "eta", "expected"),
    [
        ("processing", None, None, "Order 4 8 2 1 3 is being processed and hasn't shipped yet."),
        ("shipped", None, None, "Order 4 8 2 1 3 has shipped."),
        (
            "shipped",
            "UPS",
            TODAY + dt.timedelta(days=1),
            "Order 4 8 2 1 3 has shipped with UPS. It should arrive tomorrow.",
        ),
        (
            "out_for_delivery",
            "FedEx",
            TODAY,
            "Order 4 8 2 1 3 is out for delivery with FedEx. It should arrive today.",
        ),
        (
            "delivered",
            None,
            dt.date(2026, 11, 2),
            "Order 4 8 2 1 3 was delivered on Monday, November 2nd.",
        ),
        ("cancelled", None, None, "Order 4 8 2 1 3 was cancelled."),
        ("returned", None, None, "Order 4 8 2 1 3 has the status returned."),
    ],
)
def test_each_status_has_a_short_spoken_sentence(
    status: str, carrier: str | None, eta: dt.date | None, expected: str
) -> None:
    assert orders.describe_order(order(status, carrier, eta), TODAY) == expected


@pytest.mark.parametrize(
    ("day", "spoken"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (22, "22nd"),
        (31, "31st"),
    ],
)
def test_dates_use_ordinals(day: int, spoken: str) -> None:
    assert orders.spoken_date(dt.date(2027, 1, day), TODAY).endswith(f"January {spoken}")


def test_psycopg3_urls_are_rewritten_for_psycopg2() -> None:
    assert (
        orders.sqlalchemy_url("postgresql+psycopg://u:p@db/sb") == "postgresql+psycopg2://u:p@db/sb"
    )
    assert orders.sqlalchemy_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.fixture
def orders_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE orders (number VARCHAR(16) PRIMARY KEY, customer_name VARCHAR,"
                " item VARCHAR, status VARCHAR, carrier VARCHAR, eta DATE, updated_at TIMESTAMP)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO orders VALUES ('48213', 'Dana', 'headphones', 'shipped', 'UPS',"
                " '2026-11-24', '2026-11-20 10:00:00')"
            )
        )
    engine.dispose()
    monkeypatch.setenv(orders.DATABASE_URL_ENV, url)
    return url


def test_find_order_reads_the_orders_table(orders_db: str) -> None:
    found = orders.find_order("48213")
    assert (found.status, found.carrier, found.eta) == ("shipped", "UPS", dt.date(2026, 11, 24))
    assert orders.find_order("99999") is None


def test_unreachable_database_is_a_lookup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(orders.DATABASE_URL_ENV, f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(orders.OrderLookupError):
        orders.find_order("48213")


def test_missing_database_url_is_a_lookup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(orders.DATABASE_URL_ENV, raising=False)
    with pytest.raises(orders.OrderLookupError, match="SWITCHBOARD_DATABASE_URL"):
        orders.find_order("48213")
