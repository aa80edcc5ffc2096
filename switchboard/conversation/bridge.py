"""The agents on a call: who hears what, and what the agent says.

The media loop gives the bridge each 20 ms of the caller and of the bot (or hold music)
and gets back what the caller hears. With an agent on the call the bot is silent and the
caller hears the agent (and a supervisor who barged in); the agent hears the caller (and
the supervisor); a supervisor listening in hears both sides and is never heard. The
agent's speech is cut into turns by its own turn detector, so it is transcribed and
stored like the caller's (speaker ``agent``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from switchboard.conversation.desk import AgentLeg
from switchboard.conversation.turn_detector import CallerTurnEnded, TurnDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentTurn:
    """A finished turn of the agent's speech, to transcribe and store."""

    agent: str
    audio: np.ndarray
    speech_start_ms: int
    speech_end_ms: int


@dataclass(frozen=True)
class AgentRequest:
    """The agent asked something of the call (``hangup``, ``bot``, ``transfer <target>``),
    or their leg went away (``gone``)."""

    agent: str
    what: str


def mix(first: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """The frames summed, clipped to int16 (one frame is returned as it is)."""
    if not others:
        return first
    total = first.astype(np.int32)
    for frame in others:
        total += frame
    return np.clip(total, -32768, 32767).astype(np.int16)


class Bridge:
    """The legs of one call's agents and supervisors."""

    def __init__(self, new_detector: Callable[[], TurnDetector],
                 emit: Callable[[AgentTurn | AgentRequest], None]) -> None:
        self._new_detector = new_detector
        self._emit = emit
        self.agent: AgentLeg | None = None
        """The agent talking with the caller (the bot is silent meanwhile)."""
        self._detector: TurnDetector | None = None
        self._joined_ms = 0
        """Where the agent's detector started (its times count from there)."""
        self.supervisors: list[AgentLeg] = []

    def __bool__(self) -> bool:
        return self.agent is not None or bool(self.supervisors)

    def join(self, leg: AgentLeg, media_ms: int) -> None:
        """``leg`` joins the call at ``media_ms`` of its media."""
        if leg.mode == "talk":
            self.release()
            self.agent, self._detector = leg, self._new_detector()
            self._joined_ms = media_ms
        else:
            self.supervisors.append(leg)

    def release(self) -> AgentLeg | None:
        """The agent leaves the call (the bot takes it back); their leg is closed."""
        leg, detector = self.agent, self._detector
        self.agent, self._detector = None, None
        if detector is not None:
            detector.close()
        if leg is not None:
            leg.close()
        return leg

    def close(self) -> None:
        self.release()
        for leg in self.supervisors:
            leg.close()
        self.supervisors.clear()

    def exchange(self, caller: np.ndarray, bot: np.ndarray | None,
                 media_ms: int) -> np.ndarray | None:
        """One frame each way: given the caller's and the bot's, what the caller hears."""
        heard = self._agent_voice(media_ms) if self.agent is not None else bot
        if not self.supervisors:  # the usual case: one agent, nothing to mix
            if self.agent is not None:
                self.agent.hear(caller)
            return heard
        barging: list[np.ndarray] = []
        for leg in list(self.supervisors):
            frame = leg.take()
            if frame is None:
                self.supervisors.remove(leg)
                leg.close()
            elif leg.mode == "barge":
                barging.append(frame)
        if barging:
            heard = mix(*barging) if heard is None else mix(heard, *barging)
        if self.agent is not None:
            self.agent.hear(mix(caller, *barging))
        both = caller if heard is None else mix(caller, heard)
        for leg in self.supervisors:
            leg.hear(both)
        return heard

    def _agent_voice(self, media_ms: int) -> np.ndarray | None:
        """The agent's next 20 ms (their turns cut out as they end); None once gone."""
        leg = self.agent
        assert leg is not None
        asked = leg.request()
        if asked:
            self._emit(AgentRequest(leg.agent, asked))
        frame = leg.take()
        if frame is None:
            self._emit(AgentRequest(leg.agent, "gone"))
            self.release()
            return None
        assert self._detector is not None
        for decision in self._detector.process(frame, media_ms, bot_speaking=False,
                                               interruptible=False):
            if isinstance(decision, CallerTurnEnded):
                self._emit(AgentTurn(leg.agent, decision.audio,
                                     self._joined_ms + decision.speech_start_ms,
                                     self._joined_ms + decision.speech_end_ms))
        return frame

