"""Grammar recognition for answers the dialog can predict: an order number (a digit
string), yes or no.

PocketSphinx 5 (its US English acoustic model and dictionary ship inside the wheel)
decodes the utterance against a small JSGF grammar in a few tens of milliseconds. Its
posterior probability says how sure it is: the speech server lets it win over Whisper
only above :data:`CONFIDENT` (measured with ``switchboard bench grammar``); below that,
the caller probably said something else, and Whisper's open transcription is kept.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
from pocketsphinx import Decoder

from speech.inference import InferenceQueue
from switchboard.conversation.audio import resample
from switchboard.conversation.engines import Transcript

MODEL_RATE = 16000
CONFIDENT = 0.1
"""Posterior above which a grammar hypothesis beats Whisper (see the module)."""

DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
               "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}

GRAMMARS = {
    "order_number": """#JSGF V1.0;
grammar order_number;
public <answer> = [<lead>] <digit> <digit> <digit> <digit> <digit>;
<lead> = it is | it's | my order number is | the number is | order number;
<digit> = zero | oh | one | two | three | four | five | six | seven | eight | nine;
""",
    "yes_no": """#JSGF V1.0;
grammar yes_no;
public <answer> = <yes> | <no>;
<yes> = yes | yeah | yep | yes please | yes that's right | that's right | correct
      | that's correct | sure;
<no> = no | nope | no thanks | no thank you | that's wrong | not really;
""",
}
"""What each kind of expected answer may sound like (JSGF)."""

EXPECTATIONS = tuple(GRAMMARS)


@dataclass(frozen=True)
class GrammarResult:
    text: str
    """Normalised: a digit string ("48213"), "yes" or "no"; empty when nothing fit."""
    confidence: float
    """PocketSphinx's posterior probability of the hypothesis (0..1)."""
    words: str
    elapsed_ms: float

    @property
    def confident(self) -> bool:
        return bool(self.text) and self.confidence >= CONFIDENT


class GrammarRecognizer:
    """One PocketSphinx decoder with a search per grammar, on a thread of its own."""

    def __init__(self) -> None:
        # No language model: the searches are the grammars alone (the first is active).
        self._decoder = Decoder(lm=None, loglevel="FATAL")
        for name, grammar in GRAMMARS.items():
            self._decoder.add_jsgf_string(name, grammar)
        self._lock = threading.Lock()
        self._queue = InferenceQueue("grammar")

    def warm_up(self) -> None:
        self.recognize_sync(np.zeros(MODEL_RATE // 2, dtype=np.int16), MODEL_RATE,
                            "order_number")

    def recognize_sync(self, pcm: np.ndarray, sample_rate: int, grammar: str) -> GrammarResult:
        """Decode ``pcm`` (1-D int16) against ``grammar`` (one of :data:`EXPECTATIONS`)."""
        if grammar not in GRAMMARS:
            raise ValueError(f"unknown grammar {grammar!r}; expected one of {EXPECTATIONS}")
        started = time.perf_counter()
        audio = resample(pcm, sample_rate, MODEL_RATE)  # checks pcm
        with self._lock:
            self._decoder.activate_search(grammar)
            self._decoder.start_utt()
            self._decoder.process_raw(audio.astype("<i2").tobytes(), False, True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
            words = hypothesis.hypstr if hypothesis is not None else ""
            confidence = float(self._decoder.get_prob()) if words else 0.0
        return GrammarResult(normalise(grammar, words), confidence, words,
                             (time.perf_counter() - started) * 1000)

    async def recognize(self, pcm: np.ndarray, sample_rate: int, grammar: str
                        ) -> GrammarResult:
        timed = await self._queue.run(lambda: self.recognize_sync(pcm, sample_rate, grammar))
        return timed.value

    def health(self) -> str | None:
        return None if self._queue.alive else "the grammar worker thread is not running"

    def close(self) -> None:
        self._queue.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


ORDER_DIGITS = 5
"""Digits of an order number (the bot's order-number slot)."""
YES_NO_WORDS = {"yes", "yeah", "yep", "no", "nope", "correct", "right", "wrong", "sure"}


def digits_in(text: str) -> str:
    """The longest run of digits said one after another ("4, 8, two" gives "482"); a
    lone number word is no digit string ("oh, I see", "the one I ordered" give "")."""
    runs, run = [], ""
    for token in re.findall(r"[a-z']+|\d+", text.lower()):
        digit = token if token.isdigit() else DIGIT_WORDS.get(token)
        if digit is None:
            runs.append(run)
            run = ""
        else:
            run += digit
    longest = max([*runs, run], key=len)
    return longest if len(longest) >= 2 else ""


def combine(transcript: Transcript, result: GrammarResult, expect: str) -> Transcript:
    """Whisper's ``transcript``, replaced by the grammar's answer when the grammar is
    confident and Whisper heard the same kind of answer but not a valid one: digits, but
    not the five of an order number; a yes or a no. A grammar forces any speech into its
    words, so it never overrides other speech (measured: ``switchboard bench grammar``)."""
    if not result.confident:
        return transcript
    words = set(re.findall(r"[a-z]+", transcript.text.lower()))
    heard = digits_in(transcript.text)
    if (expect == "order_number" and 0 < len(heard) != ORDER_DIGITS) or (
            expect == "yes_no" and words & YES_NO_WORDS):
        return replace(transcript, text=result.text, confidence=result.confidence,
                       recognizer=f"grammar:{expect}")
    return transcript


def normalise(grammar: str, words: str) -> str:
    """The answer in ``words``: digits for a number, "yes" or "no"."""
    tokens = words.split()
    if grammar == "order_number":
        # PocketSphinx gives its best partial path when no full match ends the utterance
        digits = "".join(DIGIT_WORDS[t] for t in tokens if t in DIGIT_WORDS)
        return digits if len(digits) == ORDER_DIGITS else ""
    if not tokens:
        return ""
    negative = {"no", "nope", "wrong", "not"}
    return "no" if negative & set(tokens) else "yes"
