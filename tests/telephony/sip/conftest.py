"""One SIP media worker process for the SIP tests, on free ports of 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.telephony.sip.workers import Worker, worker_process

TRANSFER_URI = "sip:agents@127.0.0.1:5999"


@pytest.fixture(autouse=True)
def _speech(speech_server: object) -> None:
    """Every SIP worker, node and command of these tests uses the session's speech server."""


@pytest.fixture(scope="session")
def sip_worker(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """``python -m switchboard sip-worker`` against the session's Rasa and database."""
    with worker_process(
        tmp_path_factory.mktemp("sip-worker"), rasa_server.url,  # type: ignore[attr-defined]
        database_url, SWITCHBOARD_SIP_TRANSFER_URI=TRANSFER_URI, SWITCHBOARD_SIP_RECORD="true",
    ) as worker:
        yield worker
