"""The agents' desk in Redis: the handoff queue, who claimed each waiting call, the agents'
presence, and the signalling that brings an agent's browser leg to the process that owns
the call.

Keys, under ``switchboard:desk:``:

- ``queue``: the waiting calls (a sorted set: call id → when it joined);
- ``claim:{call id}``: who took the call out of the queue (an agent's user name, or
  :data:`FALLBACK` when the wait ran out); set in the same atomic step that removes the
  call from the queue, so two agents accepting at once cannot both win;
- ``agents``: each agent's :class:`Presence` (a hash: user name → JSON);
- ``offers:{owner}``: agents' WebRTC offers for the process that owns their calls' audio
  (a list; the owner is named in the call's live state);
- ``answer:{id}``: the owner's answer to one offer (a list of one, read with BLPOP).

Every change is published on the live state's events channel (``{"kind": "desk", ...}``)
so that the console's pages follow it. Each method is one Redis round trip (or one wait)
and raises :class:`LiveStateUnavailable` when Redis cannot be reached.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from switchboard.storage.live import EVENTS_CHANNEL, _Record, _text, _Translate

log = logging.getLogger(__name__)

PREFIX = "switchboard:desk:"
FALLBACK = "~fallback"
"""The claimer of a call whose wait ran out (no user name starts with "~")."""
CLAIM_TTL_S = 6 * 3600
PRESENCE_STATES = ("available", "on_call", "wrap_up", "away")
MAX_WAIT_S = 25.0
"""The longest a blocking read (an offer, an answer) waits."""
SEEN_TIMEOUT_S = 60.0
"""An agent whose page has not been seen this long counts as away."""

_CLAIM = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class ClaimLost(Exception):
    """Someone else took the call first (``by``), or it is not waiting any more."""

    def __init__(self, call_id: str, by: str | None) -> None:
        super().__init__(f"call {call_id} was taken by {by}" if by else
                         f"call {call_id} is not waiting in the queue")
        self.call_id = call_id
        self.by = by


@dataclass
class Presence(_Record):
    """Where one agent stands."""

    user: str
    status: str = "away"
    since: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.time)
    call_id: str | None = None

    def effective(self, now: float | None = None) -> str:
        """The status, or ``away`` when the agent's page has not been seen for a while."""
        if (now or time.time()) - self.seen > SEEN_TIMEOUT_S:
            return "away"
        return self.status


@dataclass
class AgentOffer(_Record):
    """An agent's WebRTC offer for the call's owner, and where the answer goes."""

    call_id: str
    agent: str
    sdp: str
    type: str
    owner: str
    """The process that holds the call's audio (``CallState.owner``)."""
    mode: str = "talk"
    """``talk`` (the agent who took the call), ``listen`` (receive only) or ``barge``."""
    reply_to: str = field(default_factory=lambda: uuid.uuid4().hex)


class DeskQueue:
    """The desk's shared state in one Redis (``url``)."""

    def __init__(self, url: str, *, timeout_s: float = 0.5) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            decode_responses=True)
        self._claim = self._redis.register_script(_CLAIM)
        self._waiting = redis.Redis.from_url(  # reads that wait longer (BLPOP)
            url, socket_timeout=MAX_WAIT_S + 5, socket_connect_timeout=timeout_s,
            decode_responses=True)

    def close(self) -> None:
        self._redis.close()
        self._waiting.close()

    # ------------------------------------------------------------------ the queue

    def enqueue(self, call_id: str, at: float | None = None) -> int:
        """Put the call in the queue; its position (1 = next)."""
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.zadd(f"{PREFIX}queue", {call_id: at or time.time()}, nx=True)
            pipe.zrank(f"{PREFIX}queue", call_id)
            pipe.publish(EVENTS_CHANNEL, _event("queued", call_id=call_id))
            _, rank, _ = pipe.execute()
        return int(rank) + 1

    def status(self, call_id: str) -> tuple[int | None, str | None]:
        """The call's position in the queue (None once it left) and who claimed it."""
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.zrank(f"{PREFIX}queue", call_id)
            pipe.get(f"{PREFIX}claim:{call_id}")
            rank, claimer = pipe.execute()
        return (None if rank is None else int(rank) + 1), claimer

    def waiting(self) -> list[tuple[str, float]]:
        """Every waiting call and when it joined, first in line first."""
        with self._errors():
            entries: list[tuple[str, float]] = self._redis.zrange(  # type: ignore[assignment]
                f"{PREFIX}queue", 0, -1, withscores=True)
        return [(_text(call), float(at)) for call, at in entries]

    def claim(self, call_id: str, claimer: str) -> None:
        """Take the call out of the queue for ``claimer``; raises :class:`ClaimLost` when
        someone else did first (or the call is not waiting)."""
        with self._errors():
            won = self._claim(keys=[f"{PREFIX}queue", f"{PREFIX}claim:{call_id}"],
                              args=[call_id, claimer, CLAIM_TTL_S])
            if not won:
                raise ClaimLost(call_id, self.claimed_by(call_id))
            self._redis.publish(EVENTS_CHANNEL, _event("claimed", call_id=call_id,
                                                       by=claimer))

    def claimed_by(self, call_id: str) -> str | None:
        with self._errors():
            claimer = self._redis.get(f"{PREFIX}claim:{call_id}")
        return None if claimer is None else _text(claimer)

    def leave(self, call_id: str) -> None:
        """The call left the queue without being claimed (the caller hung up)."""
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.zrem(f"{PREFIX}queue", call_id)
            pipe.publish(EVENTS_CHANNEL, _event("left", call_id=call_id))
            pipe.execute()

    # ------------------------------------------------------------------ presence

    def set_presence(self, user: str, status: str, call_id: str | None = None) -> Presence:
        if status not in PRESENCE_STATES:
            raise ValueError(f"presence must be one of {', '.join(PRESENCE_STATES)}")
        presence = Presence(user, status, call_id=call_id)
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.hset(f"{PREFIX}agents", user, presence.to_json())
            pipe.publish(EVENTS_CHANNEL, _event("presence", user=user, status=status,
                                                call_id=call_id))
            pipe.execute()
        return presence

    def seen(self, user: str) -> Presence:
        """The agent's page is open: keep their presence current (away when new)."""
        presence = self.presence(user) or Presence(user)
        presence.seen = time.time()
        with self._errors():
            self._redis.hset(f"{PREFIX}agents", user, presence.to_json())
        return presence

    def presence(self, user: str) -> Presence | None:
        with self._errors():
            raw = self._redis.hget(f"{PREFIX}agents", user)
        return None if raw is None else Presence.from_json(raw)

    def agents(self) -> list[Presence]:
        with self._errors():
            raws = self._redis.hvals(f"{PREFIX}agents")
        return sorted((Presence.from_json(raw) for raw in raws), key=lambda p: p.user)

    # ------------------------------------------------------------------ signalling

    def send_offer(self, offer: AgentOffer, wait_s: float) -> dict[str, Any] | None:
        """Give the call's owner ``offer`` and wait up to ``wait_s`` for its answer
        (``{"sdp", "type"}`` or ``{"error"}``); None when the owner did not answer."""
        key = f"{PREFIX}offers:{offer.owner}"
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.rpush(key, offer.to_json())
            pipe.expire(key, max(1, int(wait_s) + 1))
            pipe.execute()
            found = self._waiting.blpop([f"{PREFIX}answer:{offer.reply_to}"],
                                           timeout=min(wait_s, MAX_WAIT_S))
        if found is None:
            with self._errors():  # not taken: the owner must not answer it later
                self._redis.lrem(key, 0, offer.to_json())
            return None
        answer = json.loads(found[1])
        return answer if isinstance(answer, dict) else None

    def next_offer(self, owner: str, wait_s: float) -> AgentOffer | None:
        """The next agent offer for the calls of ``owner``, waiting up to ``wait_s``."""
        with self._errors():
            found = self._waiting.blpop([f"{PREFIX}offers:{owner}"],
                                           timeout=min(wait_s, MAX_WAIT_S))
        if found is None:
            return None
        try:
            return AgentOffer.from_json(found[1])
        except (ValueError, TypeError):
            log.warning("dropped a malformed agent offer: %.200r", found[1])
            return None

    def answer(self, offer: AgentOffer, answer: dict[str, Any]) -> None:
        key = f"{PREFIX}answer:{offer.reply_to}"
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.rpush(key, json.dumps(answer))
            pipe.expire(key, 60)
            pipe.execute()

    # ------------------------------------------------------------------ helpers

    def _errors(self) -> _Translate:
        return _Translate(self.url)


def _event(what: str, **data: Any) -> str:
    return json.dumps({"kind": "desk", "what": what, **data}, separators=(",", ":"))

