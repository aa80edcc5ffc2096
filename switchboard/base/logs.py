"""Log lines of the node's processes; each line written while a call runs names the call.

The call id (the same id as in the database, on the SIP REFER and in the analysis task) is
a context variable: the node sets it when a call starts, and every task and thread started
from the call inherits it (asyncio tasks and ``asyncio.to_thread`` copy the context).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

CALL_ID: ContextVar[str | None] = ContextVar("call_id", default=None)
FORMAT = "%(asctime)s %(levelname)-7s %(name)s:%(call)s %(message)s"


class CallContext(logging.Filter):
    """Adds ``call`` (`` [call ID]``, or nothing outside a call) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call_id = CALL_ID.get()
        record.call = f" [call {call_id}]" if call_id else ""
        return True


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``, each line of a call naming it."""
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, CallContext) for f in handler.filters):
            handler.addFilter(CallContext())
    logging.getLogger("httpx").setLevel(logging.WARNING)
