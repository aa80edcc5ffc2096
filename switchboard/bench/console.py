"""``switchboard bench console``: how fast the console answers over a database of many calls.

Seeds N synthetic calls (turns with latencies, events, analyses, spread over 30 days) into
a fresh database (a SQLite file in a temporary directory, or an empty PostgreSQL database
given by URL), signs in, and times each page and API request in-process (the app and the
database, without a network), ``requests`` times each.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from admin.console import install_console
from analytics.analysis import ABANDONED, FAILED, HANDED_OFF, RESOLVED
from analytics.rollups import roll_missing
from switchboard.base.settings import Settings
from switchboard.bench.kit import BenchError, Report
from switchboard.storage.database import prepare_database
from switchboard.storage.models import Call, CallAnalysis, CallEvent, Turn, new_id
from switchboard.storage.repository import CallCursor

BENCH_USER = "bench-admin"
BENCH_PASSWORD = "bench password, not for use"
SPREAD = timedelta(days=30)
OUTCOMES = [(RESOLVED, 0.7), (HANDED_OFF, 0.18), (ABANDONED, 0.09), (FAILED, 0.03)]
INTENTS = ["check_order_status", "inform", "reset_password", "billing_question",
           "request_agent", "thankyou", "goodbye", "nlu_fallback"]
BATCH = 2000


@dataclass
class Timing:
    name: str
    path: str
    status: int
    samples_ms: list[float]


def _rows(calls: int, now: datetime, rng: random.Random) -> Iterator[tuple[
        dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]:
    outcomes, weights = zip(*OUTCOMES, strict=True)
    for i in range(calls):  # oldest first, as a real database fills up
        call_id = new_id()
        start = now - SPREAD * (1 - (i + rng.random()) / calls)
        turns, at = [], start
        intents: list[str] = []
        for seq in range(1, 7):
            speaker = "bot" if seq % 2 else "caller"
            length = timedelta(seconds=rng.uniform(1.0, 4.0))
            intent = rng.choice(INTENTS) if speaker == "caller" else None
            if intent:
                intents.append(intent)
            response = rng.gauss(850, 120) if speaker == "bot" and seq > 1 else None
            turns.append({"call_id": call_id, "seq": seq, "speaker": speaker,
                          "text": f"synthetic {speaker} turn {seq}", "started_at": at,
                          "ended_at": at + length, "intent": intent, "barge_in": False,
                          "response_ms": response})
            at += length + timedelta(seconds=rng.uniform(0.3, 1.2))
        outcome = rng.choices(outcomes, weights)[0]
        call = {"id": call_id, "transport": rng.choice(["sip", "sip", "webrtc"]),
                "caller": f"+1555{rng.randrange(10**6):06d}", "status": "ended",
                "started_at": start, "ended_at": at, "end_reason": "bot_hangup",
                "metadata": {}}
        events = [{"call_id": call_id, "at": start, "kind": "answered", "data": {}}]
        sentiment = round(rng.uniform(-0.6, 0.9), 4)
        analysis = {"call_id": call_id, "analyzed_at": at, "runs": 1, "outcome": outcome,
                    "duration_s": (at - start).total_seconds(), "caller_talk_s": 6.0,
                    "bot_talk_s": 7.0, "silence_s": 3.0, "turns": 6, "caller_turns": 3,
                    "bot_turns": 3, "barge_ins": 0,
                    "fallbacks": int("nlu_fallback" in intents), "intents": intents,
                    "sentiment": sentiment,
                    "sentiment_label": "positive" if sentiment > 0.05 else "neutral",
                    "summary": f"Caller asked about {intents[0]}.", "transcript": [],
                    "latency": {}, "redactions": 0}
        yield call, turns, events, analysis


def seed(sessions: sessionmaker[Session], calls: int, *, seed_value: int = 7) -> None:
    """Insert ``calls`` synthetic analysed calls in batches (PostgreSQL: COPY)."""
    rng = random.Random(seed_value)
    now = datetime.now(UTC)
    batch: list[Any] = []
    with sessions() as session:
        copy = session.get_bind().dialect.name == "postgresql"
        for rows in _rows(calls, now, rng):
            batch.append(rows)
            if len(batch) >= BATCH:
                (_copy if copy else _insert)(session, batch)
                batch.clear()
        if batch:
            (_copy if copy else _insert)(session, batch)


def _insert(session: Session, batch: list[Any]) -> None:
    session.execute(insert(Call), [b[0] for b in batch])
    session.execute(insert(Turn), [t for b in batch for t in b[1]])
    session.execute(insert(CallEvent), [e for b in batch for e in b[2]])
    session.execute(insert(CallAnalysis), [b[3] for b in batch])
    session.commit()


def _copy(session: Session, batch: list[Any]) -> None:
    """PostgreSQL's COPY (psycopg): minutes for a million calls, not hours."""
    cursor = session.connection().connection.cursor()
    for table, rows in ((Call.__tablename__, [b[0] for b in batch]),
                        (Turn.__tablename__, [t for b in batch for t in b[1]]),
                        (CallEvent.__tablename__, [e for b in batch for e in b[2]]),
                        (CallAnalysis.__tablename__, [b[3] for b in batch])):
        names = list(rows[0])
        with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([json.dumps(v) if isinstance(v, dict | list) else v
                                for v in row.values()])
    session.commit()


def _gather_statistics(sessions: sessionmaker[Session]) -> None:
    """PostgreSQL's statistics of the tables just loaded, as autovacuum gathers them
    after a load (without them the planner takes a million rows for a few)."""
    with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ANALYZE"))
            session.commit()


@contextmanager
def _database(database_url: str | None) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = Settings(data_dir=Path(tmp), database_url=url)
        sessions = prepare_database(url, demo_data=False)
        with sessions() as session:
            if session.scalar(select(func.count(Call.id))):
                raise BenchError("the benchmark needs an empty database; this one has calls")
        yield settings, sessions


def bench_console(calls: int, requests: int, database_url: str | None = None) -> Report:
    """Seed, then time each console page and API request."""
    (seeded_s, rolled_s), timings = time_requests(calls, requests, database_url)
    return Report(
        title=f"bench console: {calls} calls seeded in {seeded_s:.1f} s, their hours rolled "
              f"up (as the analytics worker does) in {rolled_s:.1f} s; each request "
              f"{requests} times, in-process (the app and the database, no network)",
        series={timing.name: timing.samples_ms for timing in timings},
        figures={"failed_requests": {timing.name: timing.status for timing in timings
                                     if timing.status != 200}},
    )


def time_requests(calls: int, requests: int, database_url: str | None = None
                  ) -> tuple[tuple[float, float], list[Timing]]:
    """Seed, roll up, then time each console page and API request; returns the seeding
    and rollup times (s) and the timings."""
    with _database(database_url) as (settings, sessions):
        started = time.perf_counter()
        seed(sessions, calls)
        _gather_statistics(sessions)
        seeded_s = time.perf_counter() - started
        roll_missing(sessions)
        _gather_statistics(sessions)
        rolled_s = time.perf_counter() - started - seeded_s
        app = FastAPI()
        install_console(app, settings, sessions)
        accounts = app.state.console.accounts
        user = accounts.create_user(BENCH_USER, BENCH_PASSWORD, "admin")
        token, _ = accounts.create_token(user.id, "bench")
        with sessions() as session:
            some_call = session.scalar(select(Call.id).order_by(Call.started_at.desc()))
            deep = session.execute(select(Call.started_at, Call.id).order_by(
                Call.started_at.desc(), Call.id.desc()).offset(min(calls, 1000) - 1)
                .limit(1)).one()
        forty_pages_in = urlencode({"before": str(CallCursor(*deep))})
        targets = [
            ("dashboard, 7 days", "/"),
            ("dashboard, 30 days", "/?range=30d"),
            ("calls list, page 1", "/calls"),
            ("calls list, 40 pages in", f"/calls?{forty_pages_in}"),
            ("calls, intent+outcome", "/calls?intent=request_agent&outcome=handed_off"),
            ("calls, caller search", "/calls?caller=5551"),
            ("call detail", f"/calls/{some_call}"),
            ("API calls", "/api/calls?per_page=100"),
            ("API calls, page 40 (offset)", "/api/calls?per_page=25&page=40"),
            ("API call detail", f"/api/calls/{some_call}"),
            ("API aggregates, 30 days", "/api/aggregates?since="
             f"{(datetime.now(UTC) - SPREAD).date().isoformat()}"),
        ]
        timings = []
        with TestClient(app, base_url="https://bench") as client:
            client.headers["Authorization"] = f"Bearer {token}"
            login = client.get("/login")  # pages use the session cookie
            csrf = login.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            client.post("/login", data={"username": BENCH_USER, "password": BENCH_PASSWORD,
                                        "csrf_token": csrf})
            for name, path in targets:
                samples, status = [], 0
                for _ in range(requests):
                    begin = time.perf_counter()
                    status = client.get(path).status_code
                    samples.append((time.perf_counter() - begin) * 1000)
                timings.append(Timing(name, path, status, samples))
        return (seeded_s, rolled_s), timings


LOAD_PATHS = ("/api/aggregates?since={month_ago}", "/api/calls?per_page=100",
              "/api/calls?intent=request_agent&outcome=handed_off")
LOAD_MAX_S = 600.0
"""A console load never runs longer than this, whatever its caller does."""


class ConsoleLoad:
    """``workers`` threads reading the console's heaviest API requests (30-day aggregates,
    calls lists) from a served web app as fast as it answers, until stopped; as a bench
    user with an API token made in ``sessions`` (the web app's database)."""

    def __init__(self, base_url: str, sessions: sessionmaker[Session], workers: int) -> None:
        from admin.accounts import AccountRepository

        self._accounts = AccountRepository(sessions, session_lifetime=timedelta(hours=1))
        name = f"bench-load-{new_id()[:8]}"
        self._user = self._accounts.create_user(name, new_id(), "agent")  # reads only
        self._token, self._token_view = self._accounts.create_token(self._user.id,
                                                                    "bench console load")
        self._lock = threading.Lock()
        self._base_url = base_url
        month_ago = (datetime.now(UTC) - SPREAD).date().isoformat()
        self._paths = [path.format(month_ago=month_ago) for path in LOAD_PATHS]
        self._stop = threading.Event()
        self.samples_ms: list[float] = []
        self.failures = 0
        self._threads = [threading.Thread(target=self._run, name=f"console-load-{i}",
                                          daemon=True) for i in range(workers)]

    def __enter__(self) -> ConsoleLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        # the bench user cannot be used again: its token revoked, the account off
        self._accounts.revoke_token(self._token_view.id)
        self._accounts.update_user(self._user.id, role="agent", active=False)

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        headers = {"Authorization": f"Bearer {self._token}"}
        with httpx.Client(base_url=self._base_url, headers=headers, timeout=30,
                          trust_env=False, verify=False) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                for path in self._paths:
                    begin = time.perf_counter()
                    try:
                        ok = client.get(path).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with self._lock:
                        if ok:
                            self.samples_ms.append((time.perf_counter() - begin) * 1000)
                        else:
                            self.failures += 1
