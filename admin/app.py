"""The web app of a node: the admin console (sign-in, dashboard, calls, users, REST API),
the softphone page with its WebRTC signalling, and a health probe.

``create_app(node)`` builds it around a node that every call of the process shares; the
lifespan closes the WebRTC gateway (hanging up its calls) when the server stops. The
softphone (``/softphone``, ``POST /softphone/offer``) is public on purpose: it is the bot's
phone line for browsers, like the SIP number. Everything else but ``/healthz`` and the static
files needs a console sign-in or an API token.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from admin.console import install_console, problems_of, validation_error
from admin.load import share_with_live_calls
from admin.security import page_session
from switchboard.base.metrics import exposition
from switchboard.conversation.host import CallHost
from switchboard.storage.live import LiveState, LiveStateUnavailable
from telephony.webrtc.gateway import OfferError, WebRTCGateway
from telephony.webrtc.ice import rtc_configuration

HERE = Path(__file__).resolve().parent
OFFER_PATH = "/softphone/offer"
CROSS_ORIGIN = {"Access-Control-Allow-Origin": "*"}
"""A public softphone page may post its offer to another node's web app (its own node is
lost): the offer carries no credential, so any origin may."""
PREFLIGHT = {**CROSS_ORIGIN, "Access-Control-Allow-Methods": "POST",
             "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600"}


class Offer(BaseModel):
    """The page's offer, with every ICE candidate, and its conversation token if any."""

    sdp: str = Field(max_length=100_000)
    type: str
    token: str | None = Field(default=None, max_length=200)


def _browser_ice_servers(node: CallHost) -> list[dict[str, Any]]:
    servers = []
    for server in rtc_configuration(node.settings).iceServers or []:
        entry: dict[str, Any] = {"urls": server.urls}
        if server.username:
            entry["username"] = server.username
            entry["credential"] = server.credential
        servers.append(entry)
    return servers


def create_app(node: CallHost) -> FastAPI:
    """The FastAPI app serving ``node``'s browser calls."""
    gateway = WebRTCGateway(node)
    templates = Jinja2Templates(directory=HERE / "templates")
    settings = node.settings
    live = LiveState(settings.redis_url) if settings.redis_url else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        share_with_live_calls()
        node.replay_spooled()  # calls' writes an earlier process left on disk
        yield
        await gateway.close()
        if live is not None:
            live.close()

    def other_nodes() -> list[str]:
        """The web apps of the other live nodes that take calls, for a page whose own node
        is lost to reconnect to (none without Redis, or while it does not answer)."""
        if live is None:
            return []
        try:
            nodes = live.live_nodes()
        except LiveStateUnavailable:
            return []
        return [str(info["web"]) for name, info in nodes.items()
                if name != settings.effective_node_id and info.get("web")
                and not info.get("draining")]

    app = FastAPI(title="Switchboard", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # the API's own document is behind sign-in
    app.state.gateway = gateway
    install_console(app, node.settings, node.sessions)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path != OFFER_PATH:
            return validation_error(request, exc)
        return JSONResponse({"error": "expected JSON {\"sdp\": ..., \"type\": \"offer\"}: "
                                      + problems_of(exc)}, status_code=422)


    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format: the whole node's figures (no phone numbers, no call
        ids), for a scraper; public like /healthz."""
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "webrtc_calls": gateway.active_calls, "pid": os.getpid()}

    def softphone_caller(request: Request) -> None:
        """The softphone is public unless SWITCHBOARD_SOFTPHONE_PUBLIC=false."""
        if not node.settings.softphone_public:
            page_session(request)

    @app.get("/softphone", response_class=HTMLResponse, include_in_schema=False,
             dependencies=[Depends(softphone_caller)])
    async def softphone(request: Request) -> HTMLResponse:
        config = {
            "iceServers": _browser_ice_servers(node),
            "reconnectWindowS": node.settings.webrtc_reconnect_window_s,
        }
        return templates.TemplateResponse(
            request, "softphone.html", {"config": json.dumps(config)}
        )

    @app.post(OFFER_PATH, include_in_schema=False, dependencies=[Depends(softphone_caller)])
    async def offer(body: Offer, request: Request) -> JSONResponse:
        caller = request.client.host if request.client else None
        headers = CROSS_ORIGIN if settings.softphone_public else None
        try:
            answer = await gateway.answer(body.sdp, body.type, token=body.token, caller=caller)
        except OfferError as exc:
            retry = ({} if exc.retry_after_s is None
                     else {"Retry-After": str(exc.retry_after_s)})
            return JSONResponse({"error": exc.message}, status_code=exc.status,
                                headers={**(headers or {}), **retry})
        answer["nodes"] = await asyncio.to_thread(other_nodes)
        return JSONResponse(answer, headers=headers)

    @app.options(OFFER_PATH, include_in_schema=False, dependencies=[Depends(softphone_caller)])
    async def offer_preflight() -> Response:
        if not settings.softphone_public:  # signed-in pages post to their own origin only
            return Response(status_code=405)
        return Response(status_code=204, headers=PREFLIGHT)

    return app
