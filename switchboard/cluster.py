"""A node among nodes: its heartbeat in Redis, and the end of the calls of nodes that
stopped beating.

The supervisor runs one :class:`NodeKeeper` per node when ``redis_url`` is set. Every
``heartbeat_interval_s`` it renews the node's heartbeat (``heartbeat_ttl_s``) and looks at
the other nodes: the calls of a node whose heartbeat expired are ended as ``node_lost``
(in Redis, so that their callers resume elsewhere, and in the database) and queued for
analysis; a claim in Redis makes exactly one survivor do it for each call. At start the
keeper does the same for the calls its own node left behind (a restart under the same
``node_id``). With ``sip_rejoin_lost_calls``, each such SIP call whose caller can take an
INVITE with Replaces is handed to this node's SIP workers, which call the caller back into
the same conversation (``rejoin:`` jobs in Redis); the others wait for the caller's redial.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from switchboard.base.metrics import HEARTBEAT_AGE, RECOVERIES
from switchboard.base.settings import Settings
from switchboard.storage.live import CallState, LiveState, LiveStateUnavailable, RejoinJob
from switchboard.storage.repository import CallRepository

log = logging.getLogger(__name__)

LOST_REASON = "node_lost"


class NodeKeeper:
    """Heartbeat and reaper of one node (a thread of the supervisor)."""

    def __init__(self, settings: Settings, calls: CallRepository,
                 analyse: Callable[[str], None], *, info: dict[str, object] | None = None
                 ) -> None:
        """``analyse(call_id)`` queues an ended call's analysis (never raises)."""
        self.settings = settings
        self.node_id = settings.effective_node_id
        self.calls = calls
        self.analyse = analyse
        self.info = {"pid": os.getpid(), "started": time.time(), **(info or {})}
        self.live = LiveState(settings.redis_url, recovery_window_s=settings.recovery_window_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unavailable = False
        self._last_beat = time.monotonic()

    def start(self) -> None:
        """End what this node left behind, beat once, then keep beating on a thread."""
        self._guarded(lambda: self.reap(self.node_id))
        self._guarded(self.beat)
        self._thread = threading.Thread(target=self._run, name="node-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.live.close()

    def beat(self) -> None:
        self.live.beat(self.node_id, self.info, self.settings.heartbeat_ttl_s)
        self._last_beat = time.monotonic()

    def sweep(self) -> list[str]:
        """End the calls of every other node whose heartbeat expired; their ids."""
        ended: list[str] = []
        for node, alive in self.live.nodes().items():
            if node != self.node_id and not alive:
                ended += self.reap(node)
        return ended

    def reap(self, node: str) -> list[str]:
        """End the calls ``node`` left running (claimed one by one: another survivor
        sweeping at the same time ends the others); forget the node once none is left."""
        ended: list[str] = []
        for call_id in self.live.node_calls(node):
            state = self.live.call(call_id)
            if state is None or not state.active:
                self.live.drop_from_node(node, call_id)
                continue
            if not self.live.claim_lost(call_id, self.node_id):
                continue
            self._end_in_redis([state], LOST_REASON)
            stored = self.calls.end_active_calls(reason=LOST_REASON, call_ids=[call_id])
            log.warning("node %s is lost: its call %s ended (%s)%s", node, call_id, LOST_REASON,
                        "" if stored else "; it was already ended in the database")
            self.analyse(call_id)
            RECOVERIES.labels("node_lost").inc()
            self._rejoin([state])  # last: its failure must not cost the claimed call its end
            ended.append(call_id)
        if node != self.node_id and not self.live.node_calls(node):
            self.live.forget_node(node)
        return ended

    def end_calls(self, call_ids: list[str], reason: str) -> None:
        """Calls of this node that ended without their process saying so (it died): ended
        in Redis too, so that their callers resume on a redial."""
        def end() -> None:
            states = [state for call_id in call_ids
                      if (state := self.live.call(call_id)) is not None and state.active]
            self._end_in_redis(states, reason)
            self._rejoin(states)

        self._guarded(end)

    def _rejoin(self, states: list[CallState]) -> None:
        """Hand the ended calls whose callers can be called back to this node's workers."""
        if not self.settings.sip_rejoin_lost_calls:
            return
        for state in states:
            if state.transport == "sip" and state.rejoin:
                self.live.queue_rejoin(self.node_id,
                                       RejoinJob(state.call_id, state.caller, state.rejoin),
                                       self.settings.rejoin_timeout_s)
                log.info("call %s: calling its caller back (INVITE with Replaces)",
                         state.call_id)

    def _end_in_redis(self, states: list[CallState], reason: str) -> None:
        """Mark calls ended (not as their callers' latest call: a redial may be up)."""
        for state in states:
            state.state, state.end_reason, state.updated_at = "ended", reason, time.time()
        self.live.write_calls(states, index_callers=False)

    def _run(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while not self._stop.wait(interval):
            self._guarded(self.beat)
            self._guarded(self.sweep)
            HEARTBEAT_AGE.set(time.monotonic() - self._last_beat)

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run one step; Redis or the database being away is logged once, not fatal."""
        try:
            step()
        except LiveStateUnavailable as exc:
            if not self._unavailable:
                log.warning("%s; this node's heartbeat and the recovery of lost nodes wait "
                            "for it", exc)
            self._unavailable = True
            return
        except Exception:
            log.exception("node keeper: %s failed", getattr(step, "__name__", "a step"))
            return
        if self._unavailable:
            log.warning("Redis is back: heartbeat and recovery resume")
            self._unavailable = False
