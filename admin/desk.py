"""The agents' desk (``/desk``): presence, the handoff queue, taking a call, listening in.

The page follows the live board's event stream (``/live/events``): waiting calls are the
calls in state ``queued``, with the context the node wrote when the caller joined the
queue. An agent sets their presence (only *available* agents see and take waiting calls),
accepts a call (an atomic claim in Redis: of two agents accepting at once, one wins and
the other is told who), then connects their browser's audio: the page posts its WebRTC
offer here, the web app relays it through Redis to the process that holds the call's
audio, and returns that process's answer. Supervisors (and admins) also listen in
(receive only) or barge in on any live call. Every accept, listen and barge is written to
the audit log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from admin.accounts import SessionView
from admin.audit import log_action
from admin.security import allowed, check_csrf, console_of, ensure_allowed, page_session
from switchboard.storage.desk import (
    MAX_WAIT_S,
    PRESENCE_STATES,
    AgentOffer,
    ClaimLost,
    DeskQueue,
)
from switchboard.storage.live import LiveState, LiveStateUnavailable

log = logging.getLogger(__name__)
router = APIRouter()

CONNECT_WAIT_S = 15.0
"""How long the page's offer waits for the call's owner to answer."""
MAX_SDP = 20_000


class PresenceChange(BaseModel):
    status: str = Field(max_length=16)


DISPOSITIONS = {"resolved": "resolved", "follow_up": "follow-up needed",
                "escalated": "escalated", "callback": "call back", "wrong_number": "wrong number",
                "other": "other"}


class WrapUp(BaseModel):
    disposition: str = Field(max_length=32)
    notes: str = Field(default="", max_length=4000)


class Offer(BaseModel):
    sdp: str = Field(max_length=MAX_SDP)
    type: str = Field(max_length=16)
    mode: str = Field(default="talk", max_length=16)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _csrf(request: Request, view: SessionView) -> None:
    check_csrf(view, request.headers.get("x-csrf-token", ""))


def _acting(request: Request, view: SessionView) -> DeskQueue | JSONResponse:
    """The desk's queue for a desk action (signed in, allowed, with the page's CSRF
    token), or the error to answer with when there is no Redis."""
    ensure_allowed(view.user, "desk")
    _csrf(request, view)
    queue = _queue(request)
    return _error(503, NO_REDIS) if queue is None else queue


def _queue(request: Request) -> DeskQueue | None:
    url = console_of(request).settings.redis_url
    if not url:
        return None
    queue: DeskQueue | None = getattr(request.app.state, "desk_queue", None)
    if queue is None:
        queue = request.app.state.desk_queue = DeskQueue(url)
    return queue


NO_REDIS = ("the agents' desk needs SWITCHBOARD_REDIS_URL (the nodes' shared state)")


@router.get("/desk", include_in_schema=False)
def desk_page(request: Request, view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "desk")
    console = console_of(request)
    queue = _queue(request)
    presence = None
    if queue is not None:
        try:
            presence = queue.seen(view.user.username)
        except LiveStateUnavailable as exc:
            log.warning("desk: %s", exc)
    return console.render(request, "console/desk.html", {
        "nav": "desk", "shared": queue is not None,
        "presence": presence.effective() if presence else "away",
        "statuses": PRESENCE_STATES, "dispositions": DISPOSITIONS,
        "can_monitor": allowed(view.user, "monitor")})


@router.post("/desk/presence", include_in_schema=False)
def set_presence(change: PresenceChange, request: Request,
                 view: SessionView = Depends(page_session)) -> Response:
    """Set the agent's presence (``available``, ``wrap_up``, ``away``; ``on_call`` is set
    by taking a call). Posting the current one keeps the page's presence fresh."""
    queue = _acting(request, view)
    if isinstance(queue, JSONResponse):
        return queue
    if change.status not in PRESENCE_STATES:
        return _error(400, f"presence must be one of {', '.join(PRESENCE_STATES)}")
    try:
        presence = queue.set_presence(view.user.username, change.status)
    except LiveStateUnavailable as exc:
        return _error(503, str(exc))
    return JSONResponse({"user": presence.user, "status": presence.status})


@router.post("/desk/calls/{call_id}/accept", include_in_schema=False)
def accept(call_id: str, request: Request,
           view: SessionView = Depends(page_session)) -> Response:
    """Take a waiting call: one agent wins; the others get 409 with who took it."""
    queue = _acting(request, view)
    if isinstance(queue, JSONResponse):
        return queue
    me = view.user.username
    try:
        presence = queue.presence(me)
        if presence is None or presence.effective() != "available":
            return _error(409, "set yourself available to take calls")
        queue.claim(call_id, me)
        queue.set_presence(me, "on_call", call_id=call_id)
    except ClaimLost as lost:
        by = "the fallback (the wait ran out)" if lost.by and lost.by.startswith("~") else lost.by
        return _error(409, f"this call was already taken by {by}" if by else
                      "this call is not waiting any more")
    except LiveStateUnavailable as exc:
        return _error(503, str(exc))
    log_action(request, me, "desk.accept", target=call_id)
    return JSONResponse({"call_id": call_id, "agent": me})


@router.post("/desk/calls/{call_id}/connect", include_in_schema=False)
async def connect(call_id: str, offer: Offer, request: Request,
                  view: SessionView = Depends(page_session)) -> Response:
    """Relay the page's WebRTC offer (ICE gathered) to the process holding the call's
    audio and return its answer. ``talk``: the agent who took the call; ``listen`` and
    ``barge``: supervisors and admins, on any live call."""
    queue = _acting(request, view)
    if isinstance(queue, JSONResponse):
        return queue
    me = view.user.username
    if offer.mode not in ("talk", "listen", "barge"):
        return _error(400, "mode must be talk, listen or barge")
    if offer.mode != "talk" and not allowed(view.user, "monitor"):
        return _error(403, f"your role ({view.user.role}) cannot listen in or barge in")
    if offer.type != "offer" or "m=audio" not in offer.sdp:
        return _error(400, "expected an SDP offer with an audio m-line")
    try:
        state = await asyncio.to_thread(_call_state, queue.url, call_id)
        if state is None or not state.active:
            return _error(404, "this call is not up")
        if not state.owner:
            return _error(409, "this call's node takes no agents (its desk is off)")
        if offer.mode == "talk" and await asyncio.to_thread(queue.claimed_by, call_id) != me:
            return _error(403, "only the agent who took this call can talk on it")
        answer = await asyncio.to_thread(
            queue.send_offer, AgentOffer(call_id=call_id, agent=me, sdp=offer.sdp,
                                         type=offer.type, owner=state.owner, mode=offer.mode),
            min(CONNECT_WAIT_S, MAX_WAIT_S))
    except LiveStateUnavailable as exc:
        return _error(503, str(exc))
    if answer is None:
        return _error(504, "the call's node did not answer in time")
    if "error" in answer:
        return _error(409, str(answer["error"]))
    if offer.mode != "talk":
        log_action(request, me, f"desk.{offer.mode}", target=call_id)
    return JSONResponse({"sdp": answer.get("sdp"), "type": answer.get("type")})


def _call_state(url: str, call_id: str) -> Any:
    live = LiveState(url)
    try:
        return live.call(call_id)
    finally:
        live.close()


@router.post("/desk/calls/{call_id}/wrapup", include_in_schema=False)
def wrap_up(call_id: str, body: WrapUp, request: Request,
            view: SessionView = Depends(page_session)) -> Response:
    """The agent who took the call records its disposition and notes (saved with the
    call); they are available again."""
    queue = _acting(request, view)
    if isinstance(queue, JSONResponse):
        return queue
    me = view.user.username
    if body.disposition not in DISPOSITIONS:
        return _error(400, f"disposition must be one of {', '.join(DISPOSITIONS)}")
    try:
        if queue.claimed_by(call_id) != me:
            return _error(403, "only the agent who took this call can wrap it up")
        console_of(request).calls.wrap_up(call_id, agent=me, disposition=body.disposition,
                                          notes=body.notes.strip())
        queue.set_presence(me, "available")
    except KeyError:
        return _error(404, "no such call")
    except LiveStateUnavailable as exc:
        return _error(503, str(exc))
    log_action(request, me, "desk.wrapup", target=call_id,
               detail={"disposition": body.disposition})
    return JSONResponse({"call_id": call_id, "disposition": body.disposition})
