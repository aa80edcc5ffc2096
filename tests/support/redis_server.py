"""A redis-server of the test's own, on a free port, without persistence; it can be
stopped and started again on the same port (a Redis outage). Fixtures ``redis_server``
and ``live`` (a plugin of ``tests/conftest.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis

from switchboard.base.children import ChildProcess
from switchboard.base.processes import free_port
from switchboard.storage.live import LiveState


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        self._process = ChildProcess(
            "redis-server",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            log_path=directory / f"redis-{self.port}.log",
            healthy=lambda: None if self._pings() else "no PONG yet", start_timeout_s=10.0,
        )

    def start(self) -> None:
        self._process.start()
        self._process.wait_healthy()

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self.client.close()

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (it may stop and start it)."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def live(redis_server: RedisServer) -> Iterator[LiveState]:
    """The live state in ``redis_server``, as the test's own reader."""
    state = LiveState(redis_server.url, recovery_window_s=60)
    yield state
    state.close()
