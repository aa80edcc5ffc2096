"""What a transport needs from the node that hosts its calls.

The SIP worker and the WebRTC gateway (``telephony/``) and the web app (``admin/``) are
given an object with this shape (``switchboard.node.Node``); they never build one, so they
need neither the engines nor the analytics wiring.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from switchboard.base.settings import Settings
from switchboard.conversation.call import CallHandle, CallRequest
from switchboard.storage.spool import SpooledCalls


class CallHost(Protocol):
    """Stores calls and runs the conversation on a transport's media."""

    settings: Settings
    sessions: sessionmaker[Session]
    calls: SpooledCalls
    """A call's writes (kept on disk while the database cannot be reached)."""

    def start_call(self, request: CallRequest) -> CallHandle:
        """Store a new call and run it on the request's media; returns at once."""
        ...

    def replay_spooled(self) -> None:
        """Write the calls' writes an earlier process spooled (the database was away);
        called from the running event loop as the process starts."""
        ...

    async def aclose(self) -> None:
        """Wait for background work of ended calls, close the engines the host owns."""
        ...
