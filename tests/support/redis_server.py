"""A redis-server of the test's own, on a free port, without persistence; it can be
stopped and started again on the same port (a Redis outage). Fixtures ``redis_server``
and ``live`` (a plugin of ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.bench.local_cluster import RedisServer
from switchboard.storage.live import LiveState


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
