"""A child whose restart fails is not left stopped and unwatched: each failed restart counts
as another death, until the supervisor gives up with an error naming the child."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.base.children import ChildError
from switchboard.base.settings import Settings
from switchboard.supervisor import MAX_RESTARTS, Supervised, Supervisor, SupervisorError


class NeverHealthy:
    name = "flaky child"

    def __init__(self) -> None:
        self.starts = 0
        self.running = False

    def start(self) -> None:
        self.starts += 1
        self.running = True

    def wait_healthy(self, timeout: float | None = None) -> float:
        raise ChildError("flaky child exited with code 1 while starting.")

    def poll(self) -> int | None:
        return None if self.running else 1

    def stop(self) -> None:
        self.running = False


def test_failed_restarts_count_until_the_supervisor_gives_up(tmp_path: Path) -> None:
    supervisor = Supervisor(Settings(data_dir=tmp_path))
    child = NeverHealthy()
    with pytest.raises(SupervisorError, match="flaky child died"):
        supervisor._restart(Supervised(child), 1)
    assert child.starts == MAX_RESTARTS
