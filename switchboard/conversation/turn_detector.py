"""Turn-taking decisions, frame by frame: when the caller's turn ends, when to transcribe
speculatively, and when the caller barges in over the bot.

Pure: the detector owns no tasks and reads no clock but media time. It feeds each frame to
the :class:`~switchboard.conversation.endpointing.Endpointer` and returns what the pipeline
must do; the pipeline carries it out. That makes every rule here testable frame by frame.

Barge-in: as soon as the caller speaks while an interruptible bot utterance plays,
playback is held (silence goes out at once); once the caller has spoken
``min_utterance_ms`` the reply is cancelled, and if the sound dies out before that (a
cough, a click) playback resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from switchboard.base.settings import Settings
from switchboard.conversation.endpointing import Endpointer, VadEvent
from switchboard.conversation.engines import SpeechDetector


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class TurnTaking:
    """Turn-taking knobs; defaults and meanings are the settings' (README table)."""

    vad_threshold: float = _default("vad_threshold")
    speech_start_ms: int = _default("speech_start_ms")
    end_of_turn_ms: int = _default("end_of_turn_ms")
    early_transcribe_ms: int = _default("early_transcribe_ms")
    min_utterance_ms: int = _default("min_utterance_ms")
    max_utterance_s: float = _default("max_utterance_s")
    barge_in: bool = _default("barge_in")
    no_input_timeout_s: float = _default("no_input_timeout_s")
    max_reprompts: int = _default("max_reprompts")
    dtmf_timeout_s: float = _default("dtmf_timeout_s")
    max_call_s: float = _default("max_call_s")
    apology_text: str = _default("apology_text")
    empty_reply_text: str = _default("empty_reply_text")

    @classmethod
    def from_settings(cls, settings: Settings) -> TurnTaking:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CallerSpeechStarted:
    """The caller started speaking (``at_ms``: media time of the first speech)."""

    at_ms: int


@dataclass(frozen=True)
class StartSpeculative:
    """The caller paused: transcribe ``audio`` now; if the caller stays silent the result
    serves the turn, so most of the transcription hides in the end-of-turn silence."""

    audio: np.ndarray


@dataclass(frozen=True)
class DropSpeculative:
    """The caller spoke again: the speculative transcript no longer covers the turn."""


@dataclass(frozen=True)
class CallerTurnEnded:
    """The caller's turn is over; ``endpoint_ms`` is the silence waited after its speech."""

    audio: np.ndarray
    speech_start_ms: int
    speech_end_ms: int
    endpoint_ms: int
    barge_in: bool
    """This turn interrupted the bot."""


@dataclass(frozen=True)
class HoldPlayback:
    """The caller talks over the bot: send silence from now on, keep the reply queued."""

    at_ms: int


@dataclass(frozen=True)
class ResumePlayback:
    """The sound died out before it was an utterance: play the held reply on."""

    at_ms: int


@dataclass(frozen=True)
class BargeIn:
    """The caller clearly speaks over the bot: cancel the reply and drop its audio."""

    speech_start_ms: int
    held_at_ms: int


Decision = (
    CallerSpeechStarted | StartSpeculative | DropSpeculative | CallerTurnEnded
    | HoldPlayback | ResumePlayback | BargeIn
)


class TurnDetector:
    """Turns 20 ms caller frames and the bot's state into :data:`Decision` s."""

    def __init__(self, endpointer: Endpointer, options: TurnTaking) -> None:
        self.endpointer = endpointer
        self.options = options
        self._speech_start_ms = 0
        self._held_at_ms: int | None = None
        self._barged_in = False

    @classmethod
    def create(cls, rate: int, detector: SpeechDetector, options: TurnTaking) -> TurnDetector:
        """A detector with an Endpointer set up from ``options``."""
        return cls(Endpointer(
            rate, detector, speech_start_ms=options.speech_start_ms,
            end_of_turn_ms=options.end_of_turn_ms,
            early_end_ms=options.early_transcribe_ms or None,
            min_utterance_ms=options.min_utterance_ms, max_utterance_s=options.max_utterance_s,
        ), options)

    def close(self) -> None:
        """Free the speech detector's model (the call, or the agent's leg, has ended)."""
        self.endpointer.close()

    @property
    def in_speech(self) -> bool:
        """The caller is in the middle of an utterance."""
        return self.endpointer.in_speech

    @property
    def holding(self) -> bool:
        """Playback is held while the caller may be barging in."""
        return self._held_at_ms is not None

    def process(
        self, frame: np.ndarray, media_ms: int, *, bot_speaking: bool, interruptible: bool
    ) -> list[Decision]:
        """Take the frame that ends at ``media_ms``; ``bot_speaking``/``interruptible`` say
        whether a bot utterance is playing and may be cut."""
        decisions = [d for event in self.endpointer.process(frame) for d in self._on_vad(event)]
        decisions += self._barge_in(media_ms, bot_speaking and interruptible)
        return decisions

    def _on_vad(self, event: VadEvent) -> list[Decision]:
        if event.kind == "speech_start":
            self._speech_start_ms = event.at_ms - self.endpointer.speech_ms
            return [CallerSpeechStarted(self._speech_start_ms)]
        if event.kind == "speech_pause" and event.audio is not None:
            return [StartSpeculative(event.audio)]
        if event.kind == "speech_resume":
            return [DropSpeculative()]
        if event.kind == "turn_end" and event.audio is not None:
            speech_end = event.speech_end_ms if event.speech_end_ms is not None else event.at_ms
            barge_in, self._barged_in = self._barged_in, False
            return [CallerTurnEnded(
                audio=event.audio, speech_start_ms=self._speech_start_ms,
                speech_end_ms=speech_end, endpoint_ms=event.at_ms - speech_end,
                barge_in=barge_in,
            )]
        return []

    def _barge_in(self, media_ms: int, interruptible_speech: bool) -> list[Decision]:
        if not (self.options.barge_in and interruptible_speech and self.endpointer.in_speech):
            if self._held_at_ms is None:
                return []
            self._held_at_ms = None
            return [ResumePlayback(media_ms)]
        decisions: list[Decision] = []
        if self._held_at_ms is None:
            self._held_at_ms = media_ms
            decisions.append(HoldPlayback(media_ms))
        if self.endpointer.speech_ms >= self.options.min_utterance_ms:
            decisions.append(BargeIn(self._speech_start_ms, self._held_at_ms))
            self._held_at_ms = None
            self._barged_in = True
        return decisions
