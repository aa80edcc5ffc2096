"""Live state shared by the nodes, in Redis: which nodes are alive, which calls run where,
and where each conversation stands, so that a caller cut off by a lost node resumes on
another one.

Keys, under ``switchboard:live:``:

- ``node:{id}``: the node's heartbeat (JSON), expiring after the heartbeat TTL;
- ``nodes``: every node id seen (survivors check each one's heartbeat);
- ``node-calls:{id}``: the ids of the calls the node runs;
- ``call:{id}``: one call's :class:`CallState` (JSON), kept for the recovery window after
  its last write;
- ``caller:{transport}:{caller}``: the id of the caller's latest call, for the window;
- ``lost:{call id}``: set once, by the survivor that ends a lost node's call (so the call's
  end is stored and its analysis queued exactly once);
- ``rejoin:{node id}``: lost calls the node's SIP workers are to take back from their
  callers (a list of JSON jobs, :class:`RejoinJob`);
- ``turns:{call id}``: the call's transcript so far (a stream of :class:`TurnEvent`), kept
  as long as the call's state.

Every state written and every turn added is also published on ``events`` (pub/sub, JSON
``{"kind": "call", "call": {...}}`` or ``{"kind": "turn", "turn": {...}}``) for the
console's live board.

:class:`LiveState` does one Redis round trip per method and raises
:class:`LiveStateUnavailable` when Redis cannot be reached. :class:`LiveWriter` writes call
states from a thread of its own, so that no call ever waits on Redis, and keeps them while
Redis is away.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self
from urllib.parse import urlsplit

import redis

log = logging.getLogger(__name__)

PREFIX = "switchboard:live:"
ACTIVE_STATES = frozenset({"bot", "queued", "agent"})
"""States of a call still running: with the bot, waiting in the desk's queue, with an
agent."""
LONGEST_CALL_S = 4 * 3600
"""A running call's state outlives its last write by this much plus the recovery window
(a node that vanished without a survivor to reap it leaves nothing forever)."""
EVENTS_CHANNEL = f"{PREFIX}events"
TRANSCRIPT_MAX = 500
"""Turns kept per call in its live transcript (the database has them all)."""


class LiveStateUnavailable(RuntimeError):
    """Redis did not answer; the message names it (without a password)."""


class _Record:
    """A dataclass kept in Redis as JSON; fields it does not know (written by a newer
    node) are ignored, missing ones raise TypeError."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, raw: str | bytes) -> Self:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class CallState(_Record):
    """Where one call stands, written after every turn."""

    call_id: str
    node: str
    transport: str
    conversation_id: str
    caller: str | None = None
    sip_call_id: str | None = None
    state: str = "bot"
    """``bot``, ``queued`` (waiting for an agent), ``agent`` (an agent has it) while the
    call runs; ``ended`` once it ended (see ``end_reason``)."""
    turns: int = 0
    last_bot_text: str = ""
    last_intent: str | None = None
    slots: dict[str, Any] = field(default_factory=dict)
    """The latest value of each slot the dialog filled during the conversation."""
    expects: str | None = None
    """The slot the bot asked for last (Rasa's requested slot)."""
    handoff: dict[str, Any] | None = None
    rejoin: dict[str, str] | None = None
    """How another node can take the call back from the caller (the transport's
    ``CallRequest.rejoin``)."""
    end_reason: str | None = None
    resumed_from: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    caller_label: str = ""
    """Who calls, as the console shows them (a SIP From URI, a browser's address); never
    the softphone's conversation token that ``caller`` may hold."""
    owner: str = ""
    """The process holding the call's audio (agents' browser legs are answered there)."""
    queue: dict[str, Any] | None = None
    """While waiting for an agent: what the agents see (summary so far, intents,
    sentiment, when it joined the queue)."""
    agent: str | None = None
    """The agent who has the call (or had it last)."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def public(self) -> dict[str, Any]:
        """What the console's live board may show of the call (no resume token, no SIP
        dialog)."""
        return {"call_id": self.call_id, "node": self.node, "transport": self.transport,
                "caller": self.caller_label, "state": self.state, "turns": self.turns,
                "last_intent": self.last_intent, "slots": self.slots,
                "expects": self.expects, "handoff": self.handoff,
                "queue": self.queue, "agent": self.agent,
                "end_reason": self.end_reason, "resumed_from": self.resumed_from,
                "started_at": self.started_at, "updated_at": self.updated_at}



@dataclass
class TurnEvent(_Record):
    """One turn of a call's live transcript."""

    call_id: str
    seq: int
    """The turn's number in the conversation (resumed calls go on counting)."""
    speaker: str
    text: str
    at: float
    """When the turn began (epoch seconds)."""
    intent: str | None = None
    emitted_at: float = field(default_factory=time.time)
    """When the node had the turn (its end): the board's update delay counts from here."""



@dataclass
class RejoinJob(_Record):
    """A lost call for a survivor's SIP worker to take back from its caller."""

    call_id: str
    """The lost call."""
    caller: str | None
    rejoin: dict[str, str]
    queued_at: float = field(default_factory=time.time)



def redacted(url: str) -> str:
    """``url`` without its password, for log lines and errors."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path}"


class LiveState:
    """The shared state in one Redis (``url``), read and written synchronously."""

    def __init__(self, url: str, *, recovery_window_s: float = 600.0,
                 timeout_s: float = 0.5) -> None:
        self.url = url
        self.recovery_window_s = recovery_window_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            decode_responses=True)

    def close(self) -> None:
        self._redis.close()

    # ------------------------------------------------------------------ nodes

    def beat(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Renew the node's heartbeat for ``ttl_s``."""
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.set(f"{PREFIX}node:{node_id}", json.dumps(info), px=max(1, int(ttl_s * 1000)))
            pipe.sadd(f"{PREFIX}nodes", node_id)
            pipe.execute()

    def heartbeat_left(self, node_id: str) -> float | None:
        """Seconds until the node's heartbeat expires (None: expired)."""
        with self._errors():
            left_ms = int(self._redis.pttl(f"{PREFIX}node:{node_id}"))
        return None if left_ms < 0 else left_ms / 1000

    def nodes(self) -> dict[str, bool]:
        """Every node seen, and whether its heartbeat is current."""
        with self._errors():
            names = sorted(_text(name) for name in self._redis.smembers(f"{PREFIX}nodes"))
            if not names:
                return {}
            pipe = self._redis.pipeline()
            for name in names:
                pipe.exists(f"{PREFIX}node:{name}")
            return {name: bool(up) for name, up in zip(names, pipe.execute(), strict=True)}

    def live_nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes whose heartbeat is current, with what each says of itself."""
        with self._errors():
            names = sorted(_text(name) for name in self._redis.smembers(f"{PREFIX}nodes"))
            infos = self._redis.mget([f"{PREFIX}node:{name}" for name in names]) if names else []
        return {name: json.loads(info) for name, info in zip(names, infos, strict=True)
                if info is not None}

    def forget_node(self, node_id: str) -> None:
        """A lost node with no calls left is no longer checked."""
        with self._errors():
            self._redis.srem(f"{PREFIX}nodes", node_id)

    def node_calls(self, node_id: str) -> list[str]:
        with self._errors():
            return sorted(_text(call) for call in
                          self._redis.smembers(f"{PREFIX}node-calls:{node_id}"))

    # ------------------------------------------------------------------ calls

    def write_calls(self, states: list[CallState], *, index_callers: bool = True,
                    turns: list[TurnEvent] | None = None) -> None:
        """Store each state and add each turn to its call's transcript (in one round trip),
        index the states by node and, from the call's own node (``index_callers``), by
        caller: another node ending a lost call must not point its caller back at it while
        their redial is already up. Each is published on ``events``."""
        window = int(self.recovery_window_s) + 1
        with self._errors():
            pipe = self._redis.pipeline()
            for turn in turns or []:
                key = f"{PREFIX}turns:{turn.call_id}"
                pipe.xadd(key, {"turn": turn.to_json()}, maxlen=TRANSCRIPT_MAX,
                          approximate=True)
                pipe.expire(key, window + LONGEST_CALL_S)
                pipe.publish(EVENTS_CHANNEL, json.dumps({"kind": "turn", "turn": asdict(turn)},
                                                        separators=(",", ":")))
            for state in states:
                pipe.publish(EVENTS_CHANNEL, json.dumps(
                    {"kind": "call", "call": state.public()}, separators=(",", ":")))
                running = state.active
                pipe.set(f"{PREFIX}call:{state.call_id}", state.to_json(),
                         ex=window + (LONGEST_CALL_S if running else 0))
                calls = f"{PREFIX}node-calls:{state.node}"
                if running:
                    pipe.sadd(calls, state.call_id)
                else:
                    pipe.srem(calls, state.call_id)
                if state.caller and index_callers:
                    pipe.set(self._caller_key(state.transport, state.caller), state.call_id,
                             ex=window)
            pipe.execute()

    def call(self, call_id: str) -> CallState | None:
        with self._errors():
            raw = self._redis.get(f"{PREFIX}call:{call_id}")
        return None if raw is None else CallState.from_json(raw)

    def active_calls(self) -> list[CallState]:
        """Every running call of every node (lost nodes' calls until they are reaped),
        oldest first."""
        with self._errors():
            nodes = sorted(_text(name) for name in self._redis.smembers(f"{PREFIX}nodes"))
            pipe = self._redis.pipeline()
            for node in nodes:
                pipe.smembers(f"{PREFIX}node-calls:{node}")
            ids = sorted({_text(call) for members in pipe.execute() for call in members})
            raws = self._redis.mget([f"{PREFIX}call:{call}" for call in ids]) if ids else []
        states = [CallState.from_json(raw) for raw in raws if raw is not None]
        return sorted((s for s in states if s.active), key=lambda s: s.started_at)

    def transcript(self, call_id: str, count: int = TRANSCRIPT_MAX) -> list[TurnEvent]:
        """The call's latest ``count`` turns, oldest first."""
        with self._errors():
            entries = self._redis.xrevrange(f"{PREFIX}turns:{call_id}", count=count)
        return [TurnEvent.from_json(data["turn"])
                for _, data in reversed(list(entries or [])) if data and "turn" in data]

    def latest_call(self, transport: str, caller: str) -> CallState | None:
        """The caller's latest call within the recovery window, if any."""
        with self._errors():
            call_id = self._redis.get(self._caller_key(transport, caller))
        return None if call_id is None else self.call(_text(call_id))

    def drop_from_node(self, node_id: str, call_id: str) -> None:
        with self._errors():
            self._redis.srem(f"{PREFIX}node-calls:{node_id}", call_id)

    def claim_lost(self, call_id: str, claimer: str) -> bool:
        """True for exactly one claimer of a lost call."""
        with self._errors():
            return bool(self._redis.set(f"{PREFIX}lost:{call_id}", claimer, nx=True,
                                        ex=int(self.recovery_window_s) + LONGEST_CALL_S))

    def queue_rejoin(self, node_id: str, job: RejoinJob, ttl_s: float) -> None:
        """Give ``job`` to the SIP workers of ``node_id`` (kept ``ttl_s`` at most)."""
        key = f"{PREFIX}rejoin:{node_id}"
        with self._errors():
            pipe = self._redis.pipeline()
            pipe.rpush(key, job.to_json())
            pipe.expire(key, max(1, int(ttl_s)))
            pipe.execute()

    def next_rejoin(self, node_id: str, wait_s: float) -> RejoinJob | None:
        """The next job for ``node_id``'s SIP workers, waiting up to ``wait_s`` (less than
        the connection's timeout) for one; a malformed job is dropped."""
        with self._errors():
            found = self._redis.blpop([f"{PREFIX}rejoin:{node_id}"], timeout=wait_s)
        if found is None:
            return None
        try:
            return RejoinJob.from_json(found[1])
        except (ValueError, KeyError, TypeError):
            log.warning("dropped a malformed rejoin job: %.200r", found[1])
            return None

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _caller_key(transport: str, caller: str) -> str:
        return f"{PREFIX}caller:{transport}:{caller}"

    def _errors(self) -> _Translate:
        return _Translate(self.url)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Translate:
    """Turns redis-py's errors into :class:`LiveStateUnavailable`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        if exc is not None and isinstance(exc, redis.RedisError):
            raise LiveStateUnavailable(f"Redis at {redacted(self.url)}: {exc}") from exc


class LiveWriter:
    """Writes call states to Redis on a thread of its own.

    ``put`` never blocks; a newer state of a call replaces one not written yet. While
    Redis is unreachable the latest state of every call is kept and retried every
    ``retry_s``; one log line says Redis went away, one that it came back and how many
    states were written then. Turns for the live transcripts are kept too, the latest
    ``MAX_KEPT_TURNS`` of them."""

    MAX_KEPT_TURNS = 5000

    def __init__(self, live: LiveState, *, retry_s: float = 0.5) -> None:
        self.live = live
        self.retry_s = retry_s
        self._pending: dict[str, CallState] = {}
        self._turns: list[TurnEvent] = []
        self._changed = threading.Condition()
        self._writing = 0
        self._closed = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)
        self._thread.start()

    def put(self, state: CallState, turn: TurnEvent | None = None) -> None:
        """Queue a copy of ``state`` (and the turn that changed it) for writing."""
        copy = replace(state, slots=dict(state.slots), updated_at=time.time())
        with self._changed:
            self._pending.pop(copy.call_id, None)
            self._pending[copy.call_id] = copy
            if turn is not None:
                self._turns.append(turn)
                del self._turns[:-self.MAX_KEPT_TURNS]
            self._changed.notify_all()

    @property
    def unwritten(self) -> int:
        with self._changed:
            return len(self._pending) + len(self._turns) + self._writing

    @property
    def redis_down(self) -> bool:
        return self._down_since is not None

    def unavailable(self, exc: LiveStateUnavailable) -> None:
        """Redis failed (here, or a read elsewhere): said once until it is back."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s; keeping call state in memory and retrying until it returns "
                        "(calls go on, without resuming earlier ones)", exc)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued state is written; False when time ran out."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._pending or self._turns or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (for up to ``timeout_s``) and stop."""
        self.flush(timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)
        if self._pending:
            log.error("%d call states were never written to Redis at %s", len(self._pending),
                      redacted(self.live.url))

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._turns and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                batch, self._pending = list(self._pending.values()), {}
                turns, self._turns = self._turns, []
                self._writing = len(batch) + len(turns)
            try:
                self.live.write_calls(batch, turns=turns)
            except LiveStateUnavailable as exc:
                self._keep(batch, turns)
                self.unavailable(exc)
                with self._changed:
                    self._changed.wait_for(lambda: self._closed, self.retry_s)
                continue
            except Exception:  # a bug must not stop the writer: the calls go on
                log.exception("writing %d call states failed; dropped", len(batch))
            else:
                if self._down_since is not None:  # said before flush() returns
                    log.warning("Redis at %s is back after %.1f s: call state written",
                                redacted(self.live.url), time.monotonic() - self._down_since)
                    self._down_since = None
            with self._changed:
                self._writing = 0
                self._changed.notify_all()

    def _keep(self, batch: list[CallState], turns: list[TurnEvent]) -> None:
        """Put back what failed, unless a newer state of the call came meanwhile."""
        with self._changed:
            newer = self._pending
            self._pending = {s.call_id: s for s in batch if s.call_id not in newer}
            self._pending.update(newer)
            self._turns = [*turns, *self._turns][-self.MAX_KEPT_TURNS:]
            self._writing = 0
            self._changed.notify_all()
