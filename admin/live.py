"""The live calls board (``/live``): every running call of every node, from the shared
Redis, and each call's transcript as it is spoken.

The page follows ``/live/events`` (server-sent events): first a ``snapshot`` (the calls up
and their transcripts so far, with the server's clock), then an ``update`` for every call
state the nodes write and every turn they add (``switchboard.storage.live`` publishes
both). The subscription starts before the snapshot is read, so nothing falls between; the
page ignores what it already has (turns carry their number). Transcripts are redacted as
everywhere in the console. Without Redis (one node, nothing shared) the board says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import redis
import redis.asyncio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from admin.accounts import SessionView
from admin.security import console_of, ensure_allowed, page_session
from analytics.analysis import redact
from switchboard.storage.live import (
    EVENTS_CHANNEL,
    CallState,
    LiveState,
    LiveStateUnavailable,
    TurnEvent,
    redacted,
)

log = logging.getLogger(__name__)
router = APIRouter()

WAIT_S = 1.0
"""How long one wait for a published event lasts (the disconnect check's period)."""
KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""
RETRY_MS = 2000
"""How soon a browser reconnects a dropped stream."""
SNAPSHOT_TURNS = 100
"""Turns of each call's transcript in the snapshot."""


@router.get("/live", include_in_schema=False)
def live_page(request: Request, view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "live")
    console = console_of(request)
    return console.render(request, "console/live.html", {
        "nav": "live", "shared": bool(console.settings.redis_url)})


@router.get("/live/events", include_in_schema=False)
async def live_events(request: Request, view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "live")
    url = console_of(request).settings.redis_url
    if not url:
        return JSONResponse({"error": "the live board needs SWITCHBOARD_REDIS_URL (the "
                                      "nodes' shared state)"}, status_code=503)
    return StreamingResponse(_stream(request, url), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def snapshot(url: str) -> dict[str, Any]:
    """The calls up on every node, each with its transcript so far (redacted)."""
    live = LiveState(url)
    try:
        calls = live.active_calls()
        return {"now": time.time(),
                "calls": [_board_call(state, live.transcript(state.call_id, SNAPSHOT_TURNS))
                          for state in calls]}
    finally:
        live.close()


def _board_call(state: CallState, turns: list[TurnEvent]) -> dict[str, Any]:
    return {**state.public(), "transcript": [_board_turn(asdict(t)) for t in turns]}


def _board_turn(turn: dict[str, Any]) -> dict[str, Any]:
    return {**turn, "text": redact(str(turn.get("text", "")))[0]}


def board_update(raw: str) -> dict[str, Any] | None:
    """A published event as the board shows it (a turn's text redacted); None when it is
    not one the board knows."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("kind") == "turn" and isinstance(event.get("turn"), dict):
        return {"kind": "turn", "turn": _board_turn(event["turn"])}
    if event.get("kind") == "call" and isinstance(event.get("call"), dict):
        return event
    return None


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(request: Request, url: str) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    client = redis.asyncio.Redis.from_url(url, decode_responses=True,
                                          socket_connect_timeout=2.0)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(EVENTS_CHANNEL)
        yield _event("snapshot", await asyncio.to_thread(snapshot, url))
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            message = await pubsub.get_message(timeout=WAIT_S)
            update = board_update(message["data"]) if message else None
            if update is not None:
                yield _event("update", update)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
    except (redis.RedisError, OSError, LiveStateUnavailable) as exc:
        detail = str(exc) if isinstance(exc, LiveStateUnavailable) else (
            f"Redis at {redacted(url)}: {exc}")
        log.warning("live board: %s", detail)
        yield _event("unavailable", {"error": detail})
    finally:
        try:
            await pubsub.aclose()
            await client.aclose()
        except (redis.RedisError, OSError):
            pass
