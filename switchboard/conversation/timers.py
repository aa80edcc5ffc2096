"""The call's clocks, all in media time: waits for frames to go out, the call's maximum
length, the no-input reprompts and the keypad entry's timeout.

Media time is the audio processed so far (20 ms a frame), so a call simulated faster than
real time keeps every timer in step with what the caller heard.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from switchboard.conversation.audio import FRAME_MS
from switchboard.conversation.turn_detector import TurnTaking

KEYPAD_KEYS = "0123456789*#"
KEYPAD_SUBMIT = "#"


@dataclass(frozen=True)
class MaxDurationReached:
    """The call has lasted ``max_call_s``."""


@dataclass(frozen=True)
class NoInput:
    """The caller has been silent for ``no_input_timeout_s``; ``final``: the reprompts
    are used up, the bot says goodbye."""

    final: bool


@dataclass(frozen=True)
class KeypadEntered:
    """A keypad entry is complete ('#' or ``dtmf_timeout_s`` after the last digit)."""

    digits: str
    started_ms: int


TimerEvent = MaxDurationReached | NoInput | KeypadEntered


class KeypadEntry:
    """Collects keypad digits until '#' or a pause; '#' alone submits nothing."""

    def __init__(self) -> None:
        self.digits = ""
        self.last_ms = 0

    def press(self, key: str, media_ms: int) -> KeypadEntered | None:
        """One key, already checked to be in ``KEYPAD_KEYS``."""
        if key == KEYPAD_SUBMIT:
            return self.take()
        self.digits += key
        self.last_ms = media_ms
        return None

    def take(self) -> KeypadEntered | None:
        digits, self.digits = self.digits, ""
        return KeypadEntered(digits, self.last_ms) if digits else None


class CallTimers:
    """Ticked once per frame by the media loop; returns the timers that fired."""

    def __init__(self, options: TurnTaking) -> None:
        self.options = options
        self.keypad = KeypadEntry()
        self._silence_ms = 0
        self._reprompts = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def waiting(self) -> bool:
        """Someone waits for media time to pass (frames must keep going out)."""
        return bool(self._waiters)

    def wait(self, now_ms: int, ms: int) -> asyncio.Future[None]:
        """A future done once ``ms`` more of media time has gone out."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((now_ms + ms, waiter))
        self._waiters.sort(key=lambda item: item[0])
        return waiter

    def heard_caller(self) -> None:
        """The caller spoke or pressed keys: reprompts start over."""
        self._reprompts = 0

    def activity(self) -> None:
        """Something happened on the call: the no-input silence starts over."""
        self._silence_ms = 0

    def tick(self, media_ms: int, *, idle: bool) -> list[TimerEvent]:
        """One frame went out at ``media_ms``; ``idle``: nobody spoke or computed in it."""
        while self._waiters and self._waiters[0][0] <= media_ms:
            _, waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
        if media_ms >= self.options.max_call_s * 1000:
            return [MaxDurationReached()]
        fired: list[TimerEvent] = []
        if (self.keypad.digits
                and media_ms - self.keypad.last_ms >= self.options.dtmf_timeout_s * 1000):
            entered = self.keypad.take()
            if entered is not None:
                fired.append(entered)
        self._silence_ms = self._silence_ms + FRAME_MS if idle else 0
        if self._silence_ms >= self.options.no_input_timeout_s * 1000:
            self._silence_ms = 0
            final = self._reprompts >= self.options.max_reprompts
            self._reprompts += 1
            fired.append(NoInput(final))
        return fired

    def cancel(self) -> None:
        for _, waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
