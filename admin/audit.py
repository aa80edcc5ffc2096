"""The audit log: who did what in the console, and the page where admins read it
(``/audit``, newest first, filtered by user or action, paged by id).

Console routes call :func:`log_action` (``AuditRepository.record``) after an action took effect
(user changes, passwords, API tokens, sign-ins and sign-outs; the agents' desk adds its
accepts, listens, barges and transfers). A failed write is logged and never undoes the
action.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from admin.accounts import SessionView
from admin.security import client_ip, console_of, ensure_allowed, page_session

router = APIRouter()

PAGE_SIZE = 50
MAX_FILTER = 64


def log_action(request: Request, actor: str, action: str, *, target: str | None = None,
          detail: dict[str, Any] | None = None) -> None:
    """Record an action of this request's user (from the request's address)."""
    console_of(request).audit.record(actor, action, target=target, detail=detail,
                                     ip=client_ip(request))


def _before(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, view: SessionView = Depends(page_session)) -> Response:
    ensure_allowed(view.user, "audit")
    console = console_of(request)
    params = request.query_params
    actor = params.get("actor", "")[:MAX_FILTER]
    action = params.get("action", "")[:MAX_FILTER]
    before = _before(params.get("before", ""))
    rows = console.audit.entries(limit=PAGE_SIZE + 1, before=before, actor=actor,
                                 action=action)
    older = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    return console.render(request, "console/audit.html", {
        "nav": "audit", "rows": rows[:PAGE_SIZE], "actor": actor, "action": action,
        "actions": console.audit.actions(), "older": older})
