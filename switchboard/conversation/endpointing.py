"""End-of-turn detection on the 20 ms audio path, stamped with media time.

A ``SpeechDetector`` (Silero VAD in ``speech/vad.py``; a fake in unit tests) says frame by
frame whether the caller speaks; the ``Endpointer`` turns that into turn-taking events
stamped with media time (audio processed so far), so that results do not depend on how
fast frames arrive.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from switchboard.conversation.engines import SpeechDetector

VadEventKind = Literal["speech_start", "speech_pause", "speech_resume", "turn_end"]


@dataclass(frozen=True)
class VadEvent:
    """A change in the caller's speech, at ``at_ms`` of media time.

    ``audio`` (int16 at the endpointer's rate, from a short pre-roll before the speech up to
    a short tail after ``speech_end_ms``) and ``speech_end_ms`` (media time at the end of
    the last speech frame) come with ``speech_pause`` and ``turn_end``. Two events with
    the same ``speech_end_ms`` carry the same audio.
    """

    kind: VadEventKind
    at_ms: int
    audio: np.ndarray | None = None
    speech_end_ms: int | None = None


class Endpointer:
    """Turns 20 ms int16 frames into ``VadEvent``s.

    - ``speech_start`` once speech has lasted ``speech_start_ms`` (barge-in reacts to it);
    - ``speech_pause`` after ``early_end_ms`` of silence, when set, so that transcription
      can start early; ``speech_resume`` if speech comes back before the turn ends;
    - ``turn_end`` after ``end_of_turn_ms`` of silence, or when the utterance reaches
      ``max_utterance_s`` (continued speech then opens a new turn with its own
      ``speech_start``).

    An utterance with less than ``min_utterance_ms`` of speech is dropped without a
    ``turn_end`` (nor a ``speech_pause``), and the endpointer waits for speech again.
    """

    def __init__(
        self,
        sample_rate: int,
        detector: SpeechDetector,
        *,
        speech_start_ms: int = 64,
        end_of_turn_ms: int = 500,
        early_end_ms: int | None = None,
        min_utterance_ms: int = 200,
        max_utterance_s: float = 30.0,
        pre_roll_ms: int = 200,
    ) -> None:
        if early_end_ms is not None and not 0 < early_end_ms < end_of_turn_ms:
            raise ValueError(
                f"early_end_ms ({early_end_ms}) must be positive and below "
                f"end_of_turn_ms ({end_of_turn_ms}), or None to disable speech_pause"
            )
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self._detector = detector

        def samples(ms: float) -> int:
            return round(ms * sample_rate / 1000)

        self._start_samples = samples(speech_start_ms)
        self._end_samples = samples(end_of_turn_ms)
        self._early_samples = None if early_end_ms is None else samples(early_end_ms)
        self._min_samples = samples(min_utterance_ms)
        self._max_samples = samples(max_utterance_s * 1000)
        self._pre_roll = samples(pre_roll_ms)
        self.reset()

    def close(self) -> None:
        """Free the speech detector's model (the stream has ended)."""
        self._detector.close()

    def reset(self) -> None:
        """Forget all audio and state, as for a new stream."""
        self._detector.reset()
        self._position = 0
        self._run = 0
        self._idle_frames: deque[np.ndarray] = deque()
        self._idle_samples = 0
        self._utterance: list[np.ndarray] | None = None
        self._utterance_start = 0
        self._speech = 0
        self._silence = 0
        self._speech_end = 0
        self._paused = False

    @property
    def speech_ms(self) -> int:
        """Speech heard so far in the current utterance (0 when idle)."""
        return self._ms(self._speech) if self._utterance is not None else 0

    @property
    def in_speech(self) -> bool:
        """True from ``speech_start`` until the turn ends or the utterance is dropped."""
        return self._utterance is not None

    def process(self, frame: np.ndarray) -> list[VadEvent]:
        """Take the next frame (int16 mono at ``sample_rate``); return the events it caused."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.int16 or frame.ndim != 1:
            raise ValueError(
                f"expected a 1-D numpy int16 frame, got {type(frame).__name__} "
                f"{getattr(frame, 'dtype', '')}"
            )
        size = len(frame)
        self._position += size
        speech = self._detector.is_speech(frame)
        if speech:
            self._run += size
        else:
            self._run = 0
        if self._utterance is None:
            return self._idle(frame)

        self._utterance.append(frame)
        events: list[VadEvent] = []
        if speech and (not self._paused or self._run >= self._start_samples):
            if self._paused:
                self._paused = False
                self._speech += self._run
                events.append(VadEvent("speech_resume", self._ms(self._position)))
            else:
                self._speech += size
            self._silence = 0
            self._speech_end = self._position
        else:
            self._silence += size
        if (
            self._early_samples is not None
            and not self._paused
            and self._silence >= self._early_samples
            and self._speech >= self._min_samples
        ):
            self._paused = True
            events.append(self._with_audio("speech_pause", self._utterance))
        if (
            self._silence >= self._end_samples
            or self._position - self._utterance_start >= self._max_samples
        ):
            if self._speech >= self._min_samples:
                events.append(self._with_audio("turn_end", self._utterance))
            self._utterance = None
            self._run = 0
            self._paused = False
        return events

    def _idle(self, frame: np.ndarray) -> list[VadEvent]:
        self._idle_frames.append(frame)
        self._idle_samples += len(frame)
        keep = self._pre_roll + self._run
        while self._idle_frames and self._idle_samples - len(self._idle_frames[0]) >= keep:
            self._idle_samples -= len(self._idle_frames.popleft())
        if self._run < self._start_samples:
            return []
        self._utterance = list(self._idle_frames)
        self._utterance_start = self._position - self._idle_samples
        self._idle_frames.clear()
        self._idle_samples = 0
        self._speech = self._run
        self._silence = 0
        self._speech_end = self._position
        return [VadEvent("speech_start", self._ms(self._position))]

    def _with_audio(self, kind: VadEventKind, utterance: list[np.ndarray]) -> VadEvent:
        end = min(self._position, self._speech_end + self._pre_roll)
        audio = np.concatenate(utterance)[: end - self._utterance_start]
        return VadEvent(kind, self._ms(self._position), audio, self._ms(self._speech_end))

    def _ms(self, samples: int) -> int:
        return samples * 1000 // self.sample_rate
