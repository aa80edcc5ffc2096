"""``switchboard run``: starts the node's processes, restarts the ones that die, and stops
them all on Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from types import FrameType

from dialog.runtime import RasaError, RasaServers, ensure_trained
from switchboard.settings import Settings
from switchboard.storage.database import DatabaseError, prepare_database
from switchboard.storage.repository import CallRepository

log = logging.getLogger(__name__)

POLL_S = 1.0
RESTART_WINDOW_S = 300.0
MAX_RESTARTS = 5


class SupervisorError(RuntimeError):
    """The node cannot start or keeps failing; the message says what to do."""


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._restarts: deque[float] = deque()

    def run(self) -> None:
        """Start everything, supervise until a stop signal, then stop everything."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        try:
            sessions = prepare_database(
                self.settings.effective_database_url, demo_data=self.settings.demo_data
            )
        except DatabaseError as exc:
            raise SupervisorError(str(exc)) from exc
        ended = CallRepository(sessions).end_active_calls(reason="node_restarted")
        if ended:
            log.warning("marked %d calls left active by a previous run as ended", ended)
        try:
            model = ensure_trained(self.settings)
            rasa = RasaServers(self.settings, model)
            self._start(rasa)
        except RasaError as exc:
            raise SupervisorError(str(exc)) from exc
        log.info("node ready: Rasa at %s; try `switchboard simulate caller.wav`", rasa.url)
        try:
            while not self._stop.wait(POLL_S):
                exited = rasa.poll()
                if exited:
                    self._restart(rasa, exited)
        finally:
            log.info("stopping the node's processes")
            rasa.stop()
            log.info("stopped")

    def _start(self, rasa: RasaServers) -> None:
        rasa.start()
        try:
            waited = rasa.wait_healthy()
        except BaseException:
            rasa.stop()
            raise
        log.info("Rasa server and action server healthy after %.1f s", waited)

    def _restart(self, rasa: RasaServers, exited: dict[str, int]) -> None:
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        details = ", ".join(f"{name} (exit code {code})" for name, code in exited.items())
        if len(self._restarts) > MAX_RESTARTS:
            raise SupervisorError(
                f"{details} died {len(self._restarts)} times in {RESTART_WINDOW_S:.0f} s; "
                f"giving up. See the logs in {self.settings.data_dir / 'logs'}."
            )
        log.error("%s died; restarting the dialog servers", details)
        rasa.stop()
        try:
            self._start(rasa)
        except RasaError as exc:
            log.error("restart failed: %s", exc)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self._stop.set()

