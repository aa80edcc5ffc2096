"""``switchboard bench console`` seeds a database and times every page; here at a small
size, to check that it runs, that every request it times succeeds, and that it refuses a
database that already holds calls (it never writes into a real one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.console import BenchError, bench_console, seed, time_requests
from switchboard.storage.database import prepare_database
from switchboard.storage.models import Call, CallAnalysis, Turn


def test_seeding_makes_analysed_calls_with_turns(tmp_path: Path) -> None:
    sessions = prepare_database(f"sqlite:///{tmp_path / 'seed.db'}", demo_data=False)
    seed(sessions, 30)
    with sessions() as session:
        assert session.scalar(select(func.count(Call.id))) == 30
        assert session.scalar(select(func.count(CallAnalysis.id))) == 30
        assert session.scalar(select(func.count(Turn.id))) == 180


def test_every_timed_request_succeeds() -> None:
    _, timings = time_requests(200, 1)
    assert len(timings) >= 10
    assert {t.name: t.status for t in timings} == {t.name: 200 for t in timings}
    assert all(len(t.samples_ms) == 1 and t.samples_ms[0] > 0 for t in timings)


def test_the_report_has_a_series_per_request_and_no_failures() -> None:
    report = bench_console(50, 2)
    assert report.figures == {"failed_requests": {}}
    assert len(report.series) >= 10 and all(len(s) == 2 for s in report.series.values())


def test_it_refuses_a_database_with_calls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    seed(prepare_database(url, demo_data=False), 1)
    with pytest.raises(BenchError, match="empty database"):
        bench_console(10, 1, url)


def test_the_command_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", "bench", "console", "--calls", "100",
         "--requests", "2", "--json", str(tmp_path / "console.json")], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "100 calls seeded" in result.stdout and "call detail" in result.stdout
    figures = json.loads((tmp_path / "console.json").read_text())
    assert figures["series_ms"]["call detail"]["n"] == 2
    assert figures["figures"] == {"failed_requests": {}}
