"""``switchboard bench failover``: how fast a call cut off by a dead node comes back.

The bench starts on 127.0.0.1 all that two nodes need: a Redis of its own (the installed
redis-server), the database (a SQLite file, or the PostgreSQL database given), one speech
server (unless ``speech_servers`` names some), one Rasa server keeping its trackers in that
Redis, the nodes ``node-a`` and ``node-b`` (``switchboard run``, data of their own) and
``switchboard front`` (Kamailio) in front of them. Everything it started is stopped by PID
when it ends, Ctrl-C included.

Each kill: a PJSUA2 caller in a process of its own (From ``sip:9000@127.0.0.1``, a new user
for every call) calls the front, asks about its order and says the number (the kit's first
two lines, spoken by Piper at run time). Once the bot has answered, the node holding the
call is killed (SIGSTOP, then SIGKILL, of its whole process tree, as a crashed machine).
The caller hangs up, calls again at once, hears the resumed opening and hangs up; the dead
node is started again before the next kill. With ``rejoin`` the nodes call their lost
callers back themselves (``sip_rejoin_lost_calls``: an INVITE with Replaces, RFC 3891): the
caller stays in its call, which the survivor takes over, and never redials. The kills
alternate between the nodes: the front hashes each caller to a node, so a call that reached
the node whose turn it is not is hung up during the greeting and the next user calls.

Per kill, on the monotonic clock the bench shares with its caller process, from the kill:

- detection: until the lost call's state in Redis says it ended ``node_lost`` (written by
  the survivor's reaper, before the database);
- redial answered: until the redial's 200 OK (the front first tries the dead node for up
  to its failover timeout, unless its OPTIONS pings already marked it down); with
  ``rejoin``, until the caller's call was replaced by the survivor's INVITE;
- opening heard: until the resumed call's first audible frame at the caller;
- turns lost: the turns the lost call had stored minus those the resumed call's state
  carried over; "resumed" means the redial continued the lost call and opened with the
  words the state at the kill calls for (:func:`dialog.resume.resume_opening`: the order
  number, the question the bot waited on); "slots" that every slot came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dialog.resume import resume_opening
from dialog.runtime import RasaServers, ensure_trained
from dialog.service import with_api_token
from switchboard.base.processes import free_port
from switchboard.base.settings import Settings
from switchboard.bench.kit import Report, audible, piper_lines
from switchboard.bench.local_cluster import (
    RedisServer,
    RunningNode,
    free_udp_port,
    front_process,
    kill_node,
    running_node,
)
from switchboard.bench.sip_callers import (
    RATE,
    CallerEvents,
    CallStats,
    caller_endpoint,
    converse,
)
from switchboard.cluster import LOST_REASON
from switchboard.conversation.audio import FRAME_MS
from switchboard.node import local_speech_address, rasa_config, speech_server_process
from switchboard.storage.database import prepare_database
from switchboard.storage.live import CallState, LiveState
from switchboard.storage.repository import CallRepository
from telephony.kamailio import PING_INTERVAL_S
from telephony.sip import RTP_PORTS_PER_WORKER
from telephony.sip.call import CallLeg
from telephony.sip.endpoint import SipEndpoint

T = TypeVar("T")

NODE_IDS = ("node-a", "node-b")
FIRST_USER = 9000
CALLER_LINES = 2
"""The kit's first lines: the order status, then its number."""
ORDER_SLOT = "order_number"
PLACEMENT_TRIES = 6
"""Calls placed at most per kill to reach the node whose turn it is to die."""
FIRST_CALL, REDIAL = 1, 2
REDIAL_SEARCH = 20
"""The latest calls in the database among which the bench looks for a redial."""

CALLER_START_TIMEOUT_S = 60.0
DIAL_TIMEOUT_S = 20.0
STATE_TIMEOUT_S = 5.0
CONVERSATION_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 60.0
OPENING_TIMEOUT_S = 30.0
END_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 900.0
"""A caller process with no word from the bench this long hangs up and exits."""
CALLER_STOP_TIMEOUT_S = 15.0
ENDPOINT_STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
DB_POLL_S = 0.2
FRONT_SEES_NODE_S = PING_INTERVAL_S + 1.0
"""After a node restarts, the front's next OPTIONS ping marks it usable again."""
TARGET_DETECTION_MS = 3000.0


class FailoverError(RuntimeError):
    """One step of a kill did not happen in time; the message says which."""


# ---------------------------------------------------------------------- figures


@dataclass
class KillFigures:
    """What one kill measured (seconds from the kill; None: not reached)."""

    kill: int
    user: str = ""
    node: str = ""
    """The node killed."""
    detection_s: float | None = None
    answered_s: float | None = None
    heard_s: float | None = None
    turns_before: int | None = None
    """Turns the lost call had stored in the database."""
    turns_carried: int | None = None
    """Turns the resumed call's state started from."""
    slots_restored: bool = False
    resumed: bool = False
    note: str = ""

    def add_note(self, note: str) -> None:
        self.note = f"{self.note}; {note}" if self.note else note

    @property
    def turns_lost(self) -> int | None:
        if self.turns_before is None or self.turns_carried is None:
            return None
        return max(0, self.turns_before - self.turns_carried)


@dataclass
class FailoverReport(Report):
    """The kit's report, with every kill's figures in its JSON."""

    kills: list[KillFigures] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        kills = [{name: round(value, 3) if isinstance(value, float) else value
                  for name, value in {**asdict(k), "turns_lost": k.turns_lost}.items()}
                 for k in self.kills]
        return {**super().summary(), "kills": kills}


KILL_COLUMNS = (("kill", 4), ("user", 6), ("node", 8), ("detect", 8), ("answered", 9),
                ("heard", 7), ("turns", 6), ("carried", 8), ("lost", 5), ("slots", 6),
                ("resumed", 8))


def kill_table(kills: list[KillFigures]) -> list[str]:
    """One line per kill (times in seconds from the kill), under a header."""
    lines = ["".join(f"{name:>{width}}" for name, width in KILL_COLUMNS) + "  note"]
    for k in kills:
        cells = (k.kill, k.user, k.node or "-", _seconds(k.detection_s),
                 _seconds(k.answered_s), _seconds(k.heard_s), _count(k.turns_before),
                 _count(k.turns_carried), _count(k.turns_lost), _yes(k.slots_restored),
                 _yes(k.resumed))
        row = "".join(f"{cell!s:>{width}}" for cell, (_, width) in zip(cells, KILL_COLUMNS,
                                                                        strict=True))
        lines.append(f"{row}  {k.note}".rstrip())
    return lines


def failover_report(kills: list[KillFigures], wall_s: float, *, rejoin: bool = False
                    ) -> FailoverReport:
    """The per-kill table, the series (ms) and the summary figures of a run."""
    series = {
        "detection": _ms([k.detection_s for k in kills]),
        "rejoined" if rejoin else "redial_answered": _ms([k.answered_s for k in kills]),
        "opening_heard": _ms([k.heard_s for k in kills]),
    }
    lost = [k.turns_lost for k in kills]
    known_lost = [n for n in lost if n is not None]
    figures: dict[str, Any] = {
        f"{name}_ms_max": max(values) if values else None for name, values in series.items()
    }
    figures.update({
        "turns_lost": sum(known_lost),
        "turns_lost_unknown": len(lost) - len(known_lost),
        "slots_restored": f"{sum(k.slots_restored for k in kills)}/{len(kills)}",
        "resumed": f"{sum(k.resumed for k in kills)}/{len(kills)}",
        "kills_per_node": ", ".join(f"{node}: {count}" for node, count in
                                    sorted(Counter(k.node for k in kills if k.node).items())),
        "targets_met": targets_met(kills),
        "wall_s": wall_s,
    })
    return FailoverReport(
        title=f"bench failover: {len(kills)} kills of a whole node (SIGKILL of its process "
              "tree) mid-call, two nodes behind `switchboard front`"
              + (", the survivor calling the caller back (Replaces)" if rejoin else ""),
        series=series, figures=figures, kills=kills,
        notes=[*kill_table(kills), "",
               "times from the kill: detection = the lost call ended node_lost in Redis; "
               + ("answered = the caller's call replaced by the survivor's INVITE; "
                  if rejoin else "answered = the redial's 200 OK; ")
               + "heard = the first audible frame after it.",
               f"targets: detection <= {TARGET_DETECTION_MS / 1000:.0f} s, 0 turns lost, "
               "every kill resumed."],
    )


def targets_met(kills: list[KillFigures]) -> bool:
    """Every kill detected in time, resumed, and without a turn lost."""
    return bool(kills) and all(
        k.detection_s is not None and 1000 * k.detection_s <= TARGET_DETECTION_MS
        and k.resumed and k.turns_lost == 0 for k in kills)


def _ms(values: list[float | None]) -> list[float]:
    return [1000 * value for value in values if value is not None]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


# ---------------------------------------------------------------------- the bench


@dataclass
class Cluster:
    """Two nodes behind a front, and what the bench reads their state from."""

    nodes: dict[str, RunningNode]
    uri: str
    """The front, as callers dial it."""
    live: LiveState
    calls: CallRepository
    caller_log: Path
    """Where the callers' processes write (PJSIP's own lines)."""


def bench_failover(settings: Settings, kills: int = 20, *, database_url: str | None = None,
                   redial_after_s: float = 0.0, rejoin: bool = False) -> Report:
    """Kill the node holding a call ``kills`` times (alternating between two nodes) and
    time its recovery. ``database_url``: an empty database (e.g. PostgreSQL) for the nodes;
    default a SQLite file. ``redial_after_s``: how long the cut-off caller waits between
    the kill and calling again. ``rejoin``: the survivor calls the caller back instead.
    Its files and logs stay in ``data_dir/bench-failover``."""
    workdir = settings.data_dir / "bench-failover"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    database_url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    lines = piper_lines(settings, CALLER_LINES, RATE)
    started = time.monotonic()
    results: list[KillFigures] = []
    users = itertools.count(FIRST_USER)
    with two_nodes(settings, workdir, database_url, rejoin=rejoin) as cluster:
        print(kill_table([])[0], flush=True)
        for index in range(kills):
            _check_running(cluster)
            figures = _kill_once(index, cluster, lines, users, redial_after_s, rejoin)
            results.append(figures)
            print(kill_table([figures])[1], flush=True)
            if figures.node and index + 1 < kills:  # two nodes up for the next kill
                print(f"restarting {figures.node}...", flush=True)
                cluster.nodes[figures.node].restart()
                time.sleep(FRONT_SEES_NODE_S)
    return failover_report(results, time.monotonic() - started, rejoin=rejoin)


@contextmanager
def two_nodes(settings: Settings, workdir: Path, database_url: str, *, rejoin: bool = False
              ) -> Iterator[Cluster]:
    """Redis, speech, Rasa, two nodes and the front, all stopped (by PID) on exit."""
    with ExitStack() as stack:
        sessions = prepare_database(database_url, demo_data=True)  # the orders callers ask
        print(f"starting Redis, a speech server and Rasa (logs in {workdir})...", flush=True)
        redis = stack.enter_context(RedisServer(workdir))
        local = settings.model_copy(update={
            "data_dir": workdir, "redis_url": redis.url, "database_url": database_url})
        speech = settings.speech_servers
        if not speech:
            address = local_speech_address(local, "speech")
            stack.enter_context(speech_server_process(local, address, "speech"))
            speech = str(address)
        rasa = with_api_token(rasa_config(local))
        dialog = stack.enter_context(RasaServers(
            rasa, ensure_trained(rasa_config(settings)), rasa_port=free_port(),
            action_port=free_port()))
        nodes: dict[str, RunningNode] = {}
        for name in NODE_IDS:
            print(f"starting {name}...", flush=True)
            data_dir = workdir / name
            data_dir.mkdir()
            nodes[name] = stack.enter_context(running_node(
                data_dir, database_url, SWITCHBOARD_DATA_DIR=str(data_dir),
                SWITCHBOARD_NODE_ID=name, SWITCHBOARD_REDIS_URL=redis.url,
                SWITCHBOARD_RASA_MANAGED="false", SWITCHBOARD_RASA_URL=dialog.url,
                SWITCHBOARD_RASA_API_TOKEN=rasa.api_token, SWITCHBOARD_SPEECH_SERVERS=speech,
                SWITCHBOARD_SIP_REJOIN_LOST_CALLS=str(rejoin).lower()))
        front_port = free_udp_port()
        stack.enter_context(front_process(front_port, [n.sip_port for n in nodes.values()],
                                          workdir))
        live = LiveState(redis.url, recovery_window_s=settings.recovery_window_s)
        stack.callback(live.close)
        yield Cluster(nodes, f"sip:bot@127.0.0.1:{front_port}", live,
                      CallRepository(sessions), workdir / "callers.log")


def _check_running(cluster: Cluster) -> None:
    for name, node in cluster.nodes.items():
        if node.child.poll() is not None:
            raise FailoverError(f"{name} exited by itself; see {node.log_path}")


def _kill_once(index: int, cluster: Cluster, lines: list[np.ndarray],
               users: Iterator[int], redial_after_s: float, rejoin: bool) -> KillFigures:
    figures = KillFigures(kill=index + 1)
    caller: Caller | None = None
    try:
        caller, state = _place(cluster, NODE_IDS[index % len(NODE_IDS)], lines, users, figures)
        _kill_and_redial(cluster, caller, state, figures, redial_after_s, rejoin)
    except FailoverError as exc:
        figures.add_note(str(exc))
    finally:
        if caller is not None:
            caller.close()
    return figures


def _place(cluster: Cluster, wanted: str, lines: list[np.ndarray], users: Iterator[int],
           figures: KillFigures) -> tuple[Caller, CallState]:
    """A caller in a call on ``wanted`` (or, after ``PLACEMENT_TRIES`` calls, wherever the
    last one landed), talking."""
    caller, state = _call(cluster, lines, users, figures)
    for _ in range(PLACEMENT_TRIES - 1):
        if state.node == wanted:
            break
        caller.close()
        caller, state = _call(cluster, lines, users, figures)
    return caller, state


def _call(cluster: Cluster, lines: list[np.ndarray], users: Iterator[int],
          figures: KillFigures) -> tuple[Caller, CallState]:
    """A new user's caller in an answered call that says ``lines``, and the call's state."""
    user = figures.user = str(next(users))
    caller = Caller(cluster.uri, user, lines, cluster.caller_log)
    try:
        caller.dial(FIRST_CALL, talk=True)
        caller.expect("answered", FIRST_CALL, DIAL_TIMEOUT_S + 5)
        state = _poll(partial(cluster.live.latest_call, "sip", user), STATE_TIMEOUT_S)
        if state is None:
            raise FailoverError(f"the call of {user} has no state in Redis")
    except BaseException:
        caller.close()
        raise
    return caller, state


def _kill_and_redial(cluster: Cluster, caller: Caller, state: CallState,
                     figures: KillFigures, redial_after_s: float, rejoin: bool) -> None:
    live, calls = cluster.live, cluster.calls
    caller.expect("talked", FIRST_CALL, CONVERSATION_TIMEOUT_S)
    answered = _poll(lambda: _order_answered(live, state.call_id), ANSWER_TIMEOUT_S)
    before = answered or live.call(state.call_id)
    if before is None or not before.active:
        raise FailoverError("the call ended before the kill")
    if answered is None:
        figures.add_note("the bot did not get the order number")
    expected = resume_opening(before.slots, before.last_intent, before.last_bot_text)
    figures.node = before.node
    kill_node(cluster.nodes[before.node])
    killed_at = time.monotonic()
    if not rejoin:  # else the caller stays in the call until a survivor replaces it
        caller.hang_up(FIRST_CALL)
        if redial_after_s:
            time.sleep(redial_after_s)
        caller.dial(REDIAL, talk=False)

    deadline = killed_at + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline and (figures.detection_s is None
                                           or caller.at("heard", REDIAL) is None):
        if figures.detection_s is None and _lost(live, before.call_id):
            figures.detection_s = time.monotonic() - killed_at
        caller.collect()
        caller.check(REDIAL)
        time.sleep(POLL_S)
    answered_at, heard_at = caller.at("answered", REDIAL), caller.at("heard", REDIAL)
    figures.answered_s = None if answered_at is None else answered_at - killed_at
    figures.heard_s = None if heard_at is None else heard_at - killed_at
    if figures.detection_s is None:
        raise FailoverError(f"the lost call was not ended {LOST_REASON} within "
                            f"{RECOVERY_TIMEOUT_S:.0f} s")
    if heard_at is None:
        raise FailoverError(f"the redial was {'' if answered_at else 'not answered, '}"
                            f"not heard within {RECOVERY_TIMEOUT_S:.0f} s")

    redial = _poll(lambda: _redial_state(live, calls, figures.user, before.call_id),
                   STATE_TIMEOUT_S, DB_POLL_S)
    if redial is None:
        raise FailoverError("the redial has no state in Redis")
    opening = _poll(lambda: _first_bot_line(calls, redial.call_id), OPENING_TIMEOUT_S,
                    DB_POLL_S)
    caller.hang_up(REDIAL)
    figures.resumed = (redial.resumed_from == before.call_id and opening is not None
                       and opening.startswith(expected))
    if not figures.resumed:
        figures.add_note(f"opened with {opening!r}, expected {expected!r}")
    ended = _poll(lambda: _ended(live, calls, redial.call_id), END_TIMEOUT_S, DB_POLL_S)
    lost_call = calls.get_call(before.call_id)
    if ended is None or lost_call is None:
        raise FailoverError("the redial's end was not stored")
    final, stored_turns = ended
    figures.turns_before = len(lost_call.turns)
    figures.turns_carried = final.turns - stored_turns
    figures.slots_restored = all(final.slots.get(name) == value
                                 for name, value in before.slots.items())


def _poll(check: Callable[[], T | None], timeout_s: float, interval_s: float = POLL_S
          ) -> T | None:
    """``check()`` until it returns something, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (found := check()) is None and time.monotonic() < deadline:
        time.sleep(interval_s)
    return found


def _order_answered(live: LiveState, call_id: str) -> CallState | None:
    """The call's state once the bot has told the order's status."""
    state = live.call(call_id)
    number = state.slots.get(ORDER_SLOT) if state else None
    if state is None or not number or " ".join(str(number)) not in state.last_bot_text:
        return None
    return state


def _lost(live: LiveState, call_id: str) -> bool:
    state = live.call(call_id)
    return state is not None and state.end_reason == LOST_REASON


def _redial_state(live: LiveState, calls: CallRepository, user: str, lost_id: str
                  ) -> CallState | None:
    """The state of the caller's call after ``lost_id``, found in the database: the
    caller's latest-call key in Redis names the lost call again when the survivor reaps
    it after the redial began (until the redial's next state write)."""
    redial = next((call.id for call in calls.list_calls(limit=REDIAL_SEARCH)
                   if call.id != lost_id and f"sip:{user}@" in (call.caller or "")), None)
    return None if redial is None else live.call(redial)


def _first_bot_line(calls: CallRepository, call_id: str) -> str | None:
    call = calls.get_call(call_id)
    return next((t.text for t in call.turns if t.speaker == "bot"), None) if call else None


def _ended(live: LiveState, calls: CallRepository, call_id: str
           ) -> tuple[CallState, int] | None:
    """The call's last state and its stored turns, once both say it ended."""
    state, call = live.call(call_id), calls.get_call(call_id)
    if state is None or state.active or call is None or call.ended_at is None:
        return None
    return state, len(call.turns)


# ---------------------------------------------------------------------- the caller


class Caller:
    """A PJSUA2 caller in a process of its own, From ``sip:USER@127.0.0.1``: it places and
    hangs up calls when told (over a pipe) and reports, on the monotonic clock, when each
    was answered, when it had said its lines, and when it first heard the bot."""

    def __init__(self, uri: str, user: str, lines: list[np.ndarray], log_path: Path) -> None:
        self.user = user
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._events: dict[tuple[str, int], float | str] = {}
        self._process = context.Process(
            target=_caller_process, name=f"bench caller {user}", daemon=True,
            args=(theirs, uri, user, lines, free_udp_port(RTP_PORTS_PER_WORKER), log_path))
        self._process.start()
        theirs.close()
        try:
            self.expect("ready", 0, CALLER_START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def dial(self, call: int, *, talk: bool) -> None:
        """Place call number ``call``; with ``talk``, say the lines once the bot is quiet."""
        self._send("dial", call, talk)

    def hang_up(self, call: int) -> None:
        self._send("hangup", call)

    def collect(self, timeout_s: float = 0.0) -> None:
        """Take what the caller reported (waiting up to ``timeout_s`` for the first)."""
        try:
            while self._pipe.poll(timeout_s):
                kind, call, value = self._pipe.recv()
                self._events.setdefault((kind, call), value)
                timeout_s = 0.0
        except (EOFError, OSError):
            self._events.setdefault(("failed", 0), "the caller process exited")

    def at(self, kind: str, call: int) -> float | None:
        """When ``kind`` happened to call ``call`` (None: not yet)."""
        value = self._events.get((kind, call))
        return value if isinstance(value, float) else None

    def check(self, call: int) -> None:
        """Raise if call ``call`` (or the caller) failed."""
        for key in (("failed", call), ("failed", 0)):
            if key in self._events:
                raise FailoverError(f"caller {self.user}, call {call}: {self._events[key]}")

    def expect(self, kind: str, call: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while (value := self.at(kind, call)) is None:
            self.check(call)
            left = deadline - time.monotonic()
            if left <= 0:
                raise FailoverError(f"caller {self.user}: call {call} not {kind} within "
                                    f"{timeout_s:.0f} s")
            self.collect(min(left, 0.5))
        return value

    def close(self) -> None:
        """Hang up and stop the caller process (by PID, SIGKILL if it does not exit)."""
        with contextlib.suppress(FailoverError):  # the caller process is gone already
            self._send("quit", 0)
        self._process.join(CALLER_STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()

    def _send(self, *command: object) -> None:
        try:
            self._pipe.send(command)
        except OSError as exc:
            raise FailoverError(f"caller {self.user} is gone: {exc}") from exc


def _caller_process(pipe: Connection, uri: str, user: str, lines: list[np.ndarray],
                    rtp_port: int, log_path: Path) -> None:
    """The caller process (spawned), its output (PJSIP's included) appended to
    ``log_path``. Ctrl-C reaches it too: the bench then closes it."""
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_caller(pipe, uri, user, lines, rtp_port))


async def _caller(pipe: Connection, uri: str, user: str, lines: list[np.ndarray],
                  rtp_port: int) -> None:
    loop = asyncio.get_running_loop()
    endpoint, events = caller_endpoint(rtp_port, user)
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), _read_command, pipe, commands)
    calls: dict[int, tuple[CallLeg, asyncio.Task[None], _Listening]] = {}

    def replaced(leg: CallLeg) -> None:  # a survivor took the first call back: the redial
        placed = calls.get(FIRST_CALL)
        if placed is not None and placed[0].key == leg.key and REDIAL not in calls:
            calls[REDIAL] = calls.pop(FIRST_CALL)
            placed[2].number, placed[2].heard = REDIAL, False
            pipe.send(("answered", REDIAL, time.monotonic()))

    events.on_replaced = replaced
    try:
        await asyncio.wrap_future(endpoint.start())
        pipe.send(("ready", 0, time.monotonic()))
        while True:
            kind, number, *rest = await asyncio.wait_for(commands.get(), COMMAND_TIMEOUT_S)
            if kind == "quit":
                break
            if kind == "dial":
                placed = await _dial(endpoint, events, pipe, uri, number,
                                     lines if rest[0] else [])
                if placed is not None:
                    calls[number] = placed
            elif kind == "hangup" and number in calls:
                _hang_up(endpoint, *calls.pop(number)[:2])
    except Exception as exc:  # told to the bench, which gives up this kill
        with contextlib.suppress(OSError):
            pipe.send(("failed", 0, f"{type(exc).__name__}: {exc}"))
    finally:
        loop.remove_reader(pipe.fileno())
        for leg, media, _ in calls.values():
            _hang_up(endpoint, leg, media)
        endpoint.stop()
        await asyncio.to_thread(endpoint.join, ENDPOINT_STOP_TIMEOUT_S)


def _read_command(pipe: Connection, commands: asyncio.Queue[tuple[Any, ...]]) -> None:
    try:
        command = pipe.recv()
    except (EOFError, OSError):  # the bench is gone
        command = ("quit", 0)
    commands.put_nowait(command)


@dataclass
class _Listening:
    """Which call a caller's media reports its first audible frame for (a call the
    survivor replaced goes on as the redial)."""

    number: int
    heard: bool = False


async def _dial(endpoint: SipEndpoint, events: CallerEvents, pipe: Connection, uri: str,
                number: int, lines: list[np.ndarray]
                ) -> tuple[CallLeg, asyncio.Task[None], _Listening] | None:
    try:
        leg = await asyncio.wrap_future(endpoint.submit(lambda: endpoint.dial(uri)))
    except Exception as exc:
        pipe.send(("failed", number, f"dial: {exc}"))
        return None
    gone = events.gone_event(leg.key)
    if not await events.answered_in_time(leg.key, DIAL_TIMEOUT_S):
        pipe.send(("failed", number, f"setup: {events.status.get(leg.key, 'timeout')}"))
        key = leg.key
        endpoint.submit(lambda: endpoint.hangup(key))
        return None
    pipe.send(("answered", number, time.monotonic()))
    listening = _Listening(number)
    return leg, asyncio.create_task(_media(leg, lines, pipe, listening, gone)), listening


async def _media(leg: CallLeg, lines: list[np.ndarray], pipe: Connection,
                 listening: _Listening, gone: asyncio.Event) -> None:
    """Say ``lines`` as the kit's SIP callers do, then listen (sending silence) and report
    the first audible frame heard after them (and after the call was replaced)."""
    if lines:
        await converse(leg, lines, CallStats())
        if not gone.is_set():
            pipe.send(("talked", listening.number, time.monotonic()))
    silence = np.zeros(RATE * FRAME_MS // 1000, dtype=np.int16)
    while (frame := await leg.source.read()) is not None:
        if not listening.heard and audible(frame):
            listening.heard = True
            pipe.send(("heard", listening.number, time.monotonic()))
        await leg.sink.write(silence)


def _hang_up(endpoint: SipEndpoint, leg: CallLeg, media: asyncio.Task[None]) -> None:
    media.cancel()
    key = leg.key
    endpoint.submit(lambda: endpoint.hangup(key))
