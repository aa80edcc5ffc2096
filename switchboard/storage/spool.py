"""A call's writes survive a database outage: what the database cannot take is kept on
disk, in order, and written once it answers again.

:class:`SpooledCalls` makes the writes of a call (its row, turns, events, end, recording,
agent). A write that fails because the database cannot be reached (a connection refused,
cut, timed out, or a server shutting down or starting up) goes to the :class:`WriteSpool`
instead, and so does every later write of the same call, so that its rows land in the
order they happened. ``replay`` (the node runs it every few seconds while anything is
spooled) writes the spooled writes in order and tells which calls' ends it wrote, for
their analysis to be queued then.

The spool is a folder, ``data_dir/spool``, shared by a node's processes:

- each process appends to a file of its own (``NAME-PID.jsonl``), a JSON line per write,
  flushed and fsynced before the call goes on, under an exclusive ``flock``;
- a replayer claims a file by renaming it (``NAME-PID.jsonl.TIME.claimed``) under that
  lock: the writer's next write starts a new file, so no append is ever lost or raced;
- claimed files are written to the database oldest first, each under a lock of its own
  (two replayers never write the same lines), and after every line the file is cut to
  what is left, so a replayer that dies or meets the outage again goes on where it
  stopped (a line whose commit was acknowledged but not recorded can be written twice:
  at most one per interruption);
- a line that cannot be read, or that the database refuses for another reason than an
  outage, is moved to ``NAME-PID.rejected`` (kept for an operator, logged), never lost.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.exc import DBAPIError

from switchboard.storage.models import as_utc, utcnow
from switchboard.storage.repository import CallIdTaken, CallRepository, StoredTurn

log = logging.getLogger(__name__)

T = TypeVar("T")

TURN_FIELDS = ("speaker", "text", "started_at", "ended_at", "intent", "confidence",
               "barge_in", "endpoint_ms", "stt_ms", "dialog_ms", "tts_ms", "response_ms")
_TIMES = {"started_at", "ended_at", "at"}
_OUTAGE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
"""PostgreSQL SQLSTATEs of an outage: connection exceptions (class 08), the server shutting
down or crashed (57P01-02), starting up (57P03), out of connections (53300)."""
_SQLITE_BUSY = ("database is locked", "unable to open database file")


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or could not take the write
    now (a later try may succeed), rather than that the write itself is wrong."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    original = exc.orig
    state = getattr(original, "sqlstate", None)
    if state is not None:
        return str(state).startswith(_OUTAGE_STATES)
    message = str(original).lower()
    if type(original).__module__.startswith("sqlite3"):
        return any(busy in message for busy in _SQLITE_BUSY)
    # A psycopg error without SQLSTATE never reached a server (refused, reset, timed out).
    return type(original).__name__ in ("OperationalError", "InterfaceError")


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
    ended: list[str] = field(default_factory=list)
    """Calls whose end was among them (their analysis can be queued now)."""
    left: int = 0
    """Spooled writes still waiting (the database went away again, or another replayer
    holds them)."""
    rejected: int = 0
    """Lines moved to a ``.rejected`` file (unreadable, or refused by the database)."""


class _Outage(Exception):
    """The database went away while replaying."""


class WriteSpool:
    """The spool folder of one node; this process appends to its own file."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.stem = f"{name}-{os.getpid()}"
        self.path = folder / f"{self.stem}.jsonl"
        self._lock = threading.Lock()

    def append(self, op: str, call_id: str, **fields: Any) -> None:
        """Keep one write; returns once it is on disk."""
        line = json.dumps({"op": op, "call_id": call_id,
                           **{k: _encode(v) for k, v in fields.items()}}) + "\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                with self.path.open("a", encoding="utf-8") as file, _locked(file):
                    if not _still_at(file, self.path):
                        continue  # claimed by a replayer meanwhile: start a new file
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
                    return

    def pending(self) -> bool:
        """Whether any file of the spool holds writes."""
        for path in [*self.folder.glob("*.jsonl"), *self.folder.glob("*.claimed")]:
            with suppress(OSError):  # (claimed or written meanwhile)
                if path.stat().st_size:
                    return True
        return False

    def replay(self, write: Callable[[dict[str, Any]], None]) -> ReplayResult:
        """Claim every live file, then hand each claimed file's writes, oldest file first,
        to ``write``; an outage (``database_unreachable``) stops the replay where it is."""
        result = ReplayResult()
        for path in sorted(self.folder.glob("*.jsonl")):
            self._claim(path)
        for path in sorted(self.folder.glob("*.claimed"), key=_claimed_order):
            try:
                self._replay_file(path, write, result)
            except _Outage:
                break
        for path in self.folder.glob("*.claimed"):  # what is left, for the next replay
            with suppress(OSError):
                result.left += sum(1 for line in path.read_text().splitlines() if line)
        return result

    def _claim(self, path: Path) -> None:
        try:
            file = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return
        with file, _locked(file):
            if not _still_at(file, path):
                return
            if os.fstat(file.fileno()).st_size == 0:
                path.unlink()
                return
            path.rename(path.with_name(f"{path.name}.{time.time_ns()}.claimed"))

    def _replay_file(self, path: Path, write: Callable[[dict[str, Any]], None],
                     result: ReplayResult) -> None:
        try:
            file = path.open("r+", encoding="utf-8")
        except FileNotFoundError:
            return
        with file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise _Outage from exc  # another replayer is on it: leave the rest
                raise
            if not _still_at(file, path):
                return
            lines = [line for line in file.read().splitlines() if line.strip()]
            for done, line in enumerate(lines, start=1):
                self._replay_line(path, line, write, result)
                file.seek(0)
                file.truncate()
                file.write("".join(rest + "\n" for rest in lines[done:]))
                file.flush()
                os.fsync(file.fileno())
            path.unlink()

    def _replay_line(self, path: Path, line: str, write: Callable[[dict[str, Any]], None],
                     result: ReplayResult) -> None:
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or "op" not in item or "call_id" not in item:
                raise ValueError("not a spooled write")
        except ValueError as exc:
            self._reject(path, line, f"unreadable: {exc}", result)
            return
        try:
            write(item)
        except Exception as exc:
            if database_unreachable(exc):
                log.warning("the database went away again while writing the spool: %s", exc)
                raise _Outage from exc
            self._reject(path, line, f"{type(exc).__name__}: {exc}", result)
            return
        result.written += 1
        if item["op"] == "end_call":
            result.ended.append(str(item["call_id"]))

    def _reject(self, path: Path, line: str, why: str, result: ReplayResult) -> None:
        rejected = path.with_name(path.name.split(".jsonl")[0] + ".rejected")
        with rejected.open("a", encoding="utf-8") as file:
            file.write(line.rstrip("\n") + "\n")
        result.rejected += 1
        log.error("a spooled write cannot be stored (%s); kept in %s: %s", why, rejected,
                  line[:200])


def _claimed_order(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 2)[-2])
    except (IndexError, ValueError):
        return 0


def _still_at(file: IO[str], path: Path) -> bool:
    """Whether ``path`` still names the open ``file`` (not claimed, renamed or removed)."""
    try:
        return os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
    except FileNotFoundError:
        return False


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
        """Spooled calls stored under another id (theirs was taken meanwhile)."""
        self._lock = threading.Lock()

    def spooled(self, call_id: str) -> bool:
        """Whether some of the call's writes wait in the spool."""
        with self._lock:
            return call_id in self._spooled

    def _write(self, call_id: str, op: str, fields: dict[str, Any],
               direct: Callable[[str], T]) -> T | None:
        with self._lock:
            call_id = self._renamed.get(call_id, call_id)
            spooled = call_id in self._spooled
        if not spooled:
            try:
                return direct(call_id)
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
                             lambda cid: self.calls.create_call(call_id=cid, **fields))
        return stored or call_id

    def add_turn(self, call_id: str, turn: StoredTurn) -> None:
        fields = {name: getattr(turn, name) for name in TURN_FIELDS}
        self._write(call_id, "add_turn", fields, lambda cid: self.calls.add_turn(cid, turn))

    def add_event(self, call_id: str, kind: str, data: dict[str, Any] | None = None,
                  *, at: datetime | None = None) -> None:
        at = at or utcnow()
        self._write(call_id, "add_event", {"kind": kind, "data": data, "at": at},
                    lambda cid: self.calls.add_event(cid, kind, data, at=at))

    def end_call(self, call_id: str, *, reason: str, status: str = "ended",
                 handoff_target: str | None = None, ended_at: datetime | None = None) -> bool:
        """Store the call's end; True when it is in the database now (False: spooled,
        written, and its analysis queued, by a later replay)."""
        fields: dict[str, Any] = {"reason": reason, "status": status,
                                  "handoff_target": handoff_target,
                                  "ended_at": ended_at or utcnow()}

        def direct(cid: str) -> bool:
            self.calls.end_call(cid, **fields)
            return True

        return bool(self._write(call_id, "end_call", fields, direct))

    def set_recording(self, call_id: str, path: str) -> None:
        self._write(call_id, "set_recording", {"path": path},
                    lambda cid: self.calls.set_recording(cid, path))

    def set_agent(self, call_id: str, agent: str) -> None:
        self._write(call_id, "set_agent", {"agent": agent},
                    lambda cid: self.calls.set_agent(cid, agent))

    def replay(self) -> ReplayResult:
        """Write what is spooled (this process's and any other's) to the database."""
        result = self.spool.replay(self._replay_one)
        with self._lock:
            result.ended = [self._renamed.get(call_id, call_id) for call_id in result.ended]
            if not result.left and not self.spool.pending():
                self._spooled.clear()  # (appends after this re-add their call)
        if result.written or result.rejected:
            log.info("wrote %d spooled write(s) to the database (%d call end(s)); %d left, "
                     "%d rejected", result.written, len(result.ended), result.left,
                     result.rejected)
        return result

    def _replay_one(self, item: dict[str, Any]) -> None:
        op, spooled_id = item["op"], str(item["call_id"])
        with self._lock:
            call_id = self._renamed.get(spooled_id, spooled_id)
        fields = _decode({k: v for k, v in item.items() if k not in ("op", "call_id")})
        calls = self.calls
        if op == "create_call":
            try:
                calls.create_call(call_id=call_id, **fields)
            except CallIdTaken:  # written already (a commit whose answer was lost)?
                stored = calls.get_call(call_id)
                if stored is None or as_utc(stored.started_at) != as_utc(fields["started_at"]):
                    new_id = calls.create_call(call_id=uuid.uuid4().hex, **fields)
                    log.warning("spooled call %s is stored as %s (the id was taken)",
                                call_id, new_id)
                    with self._lock:
                        self._renamed[spooled_id] = new_id
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
