"""A call's writes survive a database outage: what the database cannot take is kept on
disk, in order, and written once it answers again.

:class:`SpooledCalls` makes the writes of a call (its row, turns, events, end, recording,
agent). A write that fails because the database cannot be reached (a connection refused,
cut or timed out) goes to the :class:`WriteSpool` instead, and so does every later write of
the same call, so that its rows land in the order they happened. ``replay`` (the node runs
it every few seconds while anything is spooled) writes the spooled writes in order and
tells which calls' ends it wrote, for their analysis to be queued then.

The spool is one JSON-lines file per process in ``data_dir/spool``, each line flushed and
fsynced before the call goes on; any process of the node replays any file (a dead
process's too), under an exclusive ``flock`` that appends also take.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from switchboard.storage.models import utcnow
from switchboard.storage.repository import CallIdTaken, CallRepository, StoredTurn

log = logging.getLogger(__name__)

T = TypeVar("T")

TURN_FIELDS = ("speaker", "text", "started_at", "ended_at", "intent", "confidence",
               "barge_in", "endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")
_TIMES = {"started_at", "ended_at", "at"}


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (so the write may succeed
    later), rather than that the write itself is wrong."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass(frozen=True)
class SpooledTurn:
    """A turn read back from the spool (the fields :class:`StoredTurn` names)."""

    speaker: str
    text: str
    started_at: datetime
    ended_at: datetime | None
    intent: str | None
    confidence: float | None
    barge_in: bool
    endpoint_ms: float | None
    stt_ms: float | None
    dialog_ms: float | None
    tts_ms: float | None
    response_ms: float | None


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: (datetime.fromisoformat(value) if name in _TIMES and value else value)
            for name, value in fields.items()}


@dataclass
class ReplayResult:
    written: int = 0
    """Spooled writes now in the database."""
    ended: tuple[str, ...] = ()
    """Calls whose end was among them (their analysis can be queued now)."""
    left: int = 0
    """Spooled writes still waiting (the database went away again)."""


class WriteSpool:
    """The spool files of one node (a folder); this process appends to its own file."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.path = folder / f"{name}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()

    def append(self, op: str, call_id: str, **fields: Any) -> None:
        """Keep one write; returns once it is on disk."""
        line = json.dumps({"op": op, "call_id": call_id,
                           **{k: _encode(v) for k, v in fields.items()}}) + "\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                with self.path.open("a", encoding="utf-8") as file, _locked(file):
                    if os.fstat(file.fileno()).st_nlink == 0:
                        continue  # replayed and removed meanwhile: write to a new file
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
                    return

    def pending(self) -> bool:
        """Whether any file of the node's spool holds writes."""
        try:
            return any(path.stat().st_size for path in self.folder.glob("*.jsonl"))
        except OSError:
            return False

    def replay(self, write: Callable[[dict[str, Any]], None]) -> ReplayResult:
        """Hand each spooled write, oldest first per file, to ``write``; a write that
        raises an unreachable-database error stops the replay (it and the rest stay
        spooled), any other error is logged and the write dropped (it cannot succeed)."""
        result = ReplayResult()
        ended: list[str] = []
        for path in sorted(self.folder.glob("*.jsonl")):
            try:
                file = path.open("r+", encoding="utf-8")
            except FileNotFoundError:
                continue
            with file, _locked(file):
                lines = [line for line in file.read().splitlines() if line.strip()]
                done = 0
                try:
                    for line in lines:
                        item = json.loads(line)
                        op, call_id = item.get("op"), str(item.get("call_id"))
                        try:
                            write(item)
                        except Exception as exc:
                            if database_unreachable(exc):
                                raise
                            log.error("call %s: spooled %s dropped, it cannot be stored: %s",
                                      call_id, op, exc)
                        else:
                            if op == "end_call":
                                ended.append(call_id)
                        done += 1
                except Exception as exc:
                    if not database_unreachable(exc):
                        raise
                    result.left += len(lines) - done
                    log.warning("the database went away again while replaying %s: %d "
                                "write(s) left", path.name, len(lines) - done)
                result.written += done
                file.seek(0)
                file.truncate()
                if done < len(lines):
                    file.write("".join(line + "\n" for line in lines[done:]))
                    file.flush()
                    os.fsync(file.fileno())
                else:
                    path.unlink()
            if result.left:
                break
        result.ended = tuple(ended)
        return result


@contextmanager
def _locked(file: IO[str]) -> Iterator[None]:
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


class SpooledCalls:
    """The writes a call makes, to the database or, while it cannot be reached, to the
    spool (and every later write of a call that has spooled ones, to keep their order)."""

    def __init__(self, calls: CallRepository, spool: WriteSpool) -> None:
        self.calls = calls
        self.spool = spool
        self._spooled: set[str] = set()
        self._renamed: dict[str, str] = {}
        self._lock = threading.Lock()

    def spooled(self, call_id: str) -> bool:
        """Whether some of the call's writes wait in the spool."""
        with self._lock:
            return call_id in self._spooled

    def _write(self, call_id: str, op: str, fields: dict[str, Any],
               direct: Callable[[], T]) -> T | None:
        with self._lock:
            spooled = call_id in self._spooled
        if not spooled:
            try:
                return direct()
            except Exception as exc:
                if not database_unreachable(exc):
                    raise
                log.warning("call %s: the database cannot be reached (%s); its %s is "
                            "spooled to %s", call_id, type(exc).__name__, op, self.spool.path)
        with self._lock:
            self._spooled.add(call_id)
            self.spool.append(op, call_id, **fields)
        return None

    def create_call(self, *, call_id: str | None = None, transport: str,
                    caller: str | None = None, callee: str | None = None,
                    metadata: dict[str, Any] | None = None, worker: str | None = None,
                    node: str | None = None) -> str:
        """Store a new call (:class:`CallIdTaken` when an earlier call has ``call_id``);
        its id, also when it is spooled."""
        call_id = call_id or uuid.uuid4().hex
        fields: dict[str, Any] = {
            "transport": transport, "caller": caller, "callee": callee, "metadata": metadata,
            "worker": worker, "node": node, "started_at": utcnow()}
        stored = self._write(call_id, "create_call", fields,
                             lambda: self.calls.create_call(call_id=call_id, **fields))
        return stored or call_id

    def add_turn(self, call_id: str, turn: StoredTurn) -> None:
        fields = {name: getattr(turn, name) for name in TURN_FIELDS}
        self._write(call_id, "add_turn", fields, lambda: self.calls.add_turn(call_id, turn))

    def add_event(self, call_id: str, kind: str, data: dict[str, Any] | None = None,
                  *, at: datetime | None = None) -> None:
        at = at or utcnow()
        self._write(call_id, "add_event", {"kind": kind, "data": data, "at": at},
                    lambda: self.calls.add_event(call_id, kind, data, at=at))

    def end_call(self, call_id: str, *, reason: str, status: str = "ended",
                 handoff_target: str | None = None, ended_at: datetime | None = None) -> bool:
        """Store the call's end; True when it is in the database now (False: spooled,
        written by a later replay)."""
        fields: dict[str, Any] = {"reason": reason, "status": status,
                                  "handoff_target": handoff_target,
                  "ended_at": ended_at or utcnow()}

        def direct() -> bool:
            self.calls.end_call(call_id, **fields)
            return True

        return bool(self._write(call_id, "end_call", fields, direct))

    def set_recording(self, call_id: str, path: str) -> None:
        self._write(call_id, "set_recording", {"path": path},
                    lambda: self.calls.set_recording(call_id, path))

    def set_agent(self, call_id: str, agent: str) -> None:
        self._write(call_id, "set_agent", {"agent": agent},
                    lambda: self.calls.set_agent(call_id, agent))

    def replay(self) -> ReplayResult:
        """Write what is spooled (this process's and any other's) to the database."""
        result = self.spool.replay(self._replay_one)
        result.ended = tuple(self._renamed.get(call_id, call_id) for call_id in result.ended)
        with self._lock:  # (appends take this lock: nothing is spooled while it is held)
            if not self.spool.pending():
                self._spooled.clear()
        if result.written:
            log.info("wrote %d spooled write(s) to the database (%d call end(s))",
                     result.written, len(result.ended))
        return result

    def _replay_one(self, item: dict[str, Any]) -> None:
        op, call_id = item["op"], item["call_id"]
        call_id = self._renamed.get(call_id, call_id)
        fields = _decode({k: v for k, v in item.items() if k not in ("op", "call_id")})
        calls = self.calls
        if op == "create_call":
            try:
                calls.create_call(call_id=call_id, **fields)
            except CallIdTaken:  # written already (a commit whose answer was lost)?
                stored = calls.get_call(call_id)
                if stored is None or (stored.node, stored.caller, stored.transport) != (
                        fields["node"], fields["caller"], fields["transport"]):
                    new_id = calls.create_call(call_id=uuid.uuid4().hex, **fields)
                    log.warning("spooled call %s is stored as %s (the id was taken)",
                                call_id, new_id)
                    self._renamed[call_id] = new_id
        elif op == "add_turn":
            calls.add_turn(call_id, SpooledTurn(**fields))
        elif op == "add_event":
            calls.add_event(call_id, fields["kind"], fields["data"], at=fields["at"])
        elif op == "end_call":
            calls.end_call(call_id, **fields)
        elif op == "set_recording":
            calls.set_recording(call_id, fields["path"])
        elif op == "set_agent":
            calls.set_agent(call_id, fields["agent"])
        else:
            raise ValueError(f"unknown spooled write {op!r}")
