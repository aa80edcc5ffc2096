"""``switchboard web``: the web app alone, served by uvicorn until SIGTERM or Ctrl-C.

The node (``create_host``: database, speech models, dialog client) is created first, so
the port only opens once calls can be answered: ``GET /healthz`` answering means ready.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn

from admin.accounts import has_users
from admin.app import create_app
from switchboard.base.children import on_drain_signal
from switchboard.base.settings import Settings
from switchboard.conversation.host import CallHost
from telephony.webrtc.gateway import WebRTCGateway

log = logging.getLogger(__name__)


class WebServerError(RuntimeError):
    """The web app cannot start; the message says what to fix."""


def _tls_options(settings: Settings) -> dict[str, str]:
    cert, key = settings.web_tls_cert, settings.web_tls_key
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise WebServerError(
            "HTTPS needs both SWITCHBOARD_WEB_TLS_CERT and SWITCHBOARD_WEB_TLS_KEY (PEM files)"
        )
    for path in (cert, key):
        if not path.is_file():
            raise WebServerError(f"{path}: no such file; expected a PEM certificate or key")
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _ignore_repeated_signal(signum: int, frame: FrameType | None) -> None:
    """After uvicorn's graceful stop it re-raises the signal it caught; by then the
    server is down and the node is closing, so there is nothing left to interrupt."""


async def _serve(settings: Settings, create_host: Callable[[Settings], CallHost]) -> None:
    for noisy in ("aioice", "aiortc"):  # one line per ICE check otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tls = _tls_options(settings)
    node = await asyncio.to_thread(create_host, settings)
    try:
        app = create_app(node)
        config = uvicorn.Config(
            app,
            host=settings.web_host,
            port=settings.web_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            lifespan="on",
            **tls,  # type: ignore[arg-type]
        )
        server = uvicorn.Server(config)
        scheme = "https" if tls else "http"
        log.info("console at %s://%s:%d/ and softphone at /softphone", scheme,
                 settings.web_host, settings.web_port)
        if not await asyncio.to_thread(has_users, node.sessions):
            log.warning("the console has no users yet: create the first admin with "
                        "`switchboard users create NAME --role admin`")
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _ignore_repeated_signal)
        gateway: WebRTCGateway = app.state.gateway
        on_drain_signal(gateway.drain, lambda: setattr(server, "should_exit", True))
        await server.serve()
    finally:
        await node.aclose()


def serve(settings: Settings, create_host: Callable[[Settings], CallHost]) -> None:
    """Run the web app in this process until SIGTERM/SIGINT; calls are hung up cleanly.

    ``create_host`` builds the node (database, speech models, dialog client) the calls of
    this process share; it runs before the port opens."""
    asyncio.run(_serve(settings, create_host))
