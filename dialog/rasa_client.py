"""Talks to the Rasa server over its REST channel; sender = conversation id."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from dialog.text_normalizer import normalize_caller_text
from switchboard.conversation.engines import BotMessage, DialogReply, DialogUnavailable

log = logging.getLogger(__name__)

KEYPAD_ENTITY = "order_number"
INTENT_TIMEOUT_S = 1.0
DOWN_S = 5.0
"""How long a Rasa server that failed is passed over (tried last)."""
INTERNAL_SLOTS = frozenset({"requested_slot", "session_started_metadata"})
"""Rasa's own slots, not the conversation's."""


@dataclass(frozen=True)
class TrackerReading:
    """What a reply carries from the conversation's tracker."""

    intent: str | None = None
    confidence: float | None = None
    expects: str | None = None
    slots: dict[str, Any] | None = None


class RasaClient:
    """Async client of Rasa's REST channel (``/webhooks/rest/webhook``).

    ``base_url`` may name several Rasa servers (a comma list) sharing their trackers (a
    Redis tracker and lock store): a message goes to the first that takes the connection
    (a dead server's turn goes to the next), and a server that failed is passed over for
    ``DOWN_S`` while the others take the conversation on where it was. With ``api_token``
    (Rasa started with ``--enable-api --auth-token``), each reply also carries the intent
    Rasa recognised, read from the conversation's tracker."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, api_token: str = "") -> None:
        urls = [url.strip().rstrip("/") for url in base_url.split(",") if url.strip()]
        if not urls:
            raise ValueError("no Rasa server URL given")
        self._base_url = ", ".join(urls)
        self._api_token = api_token
        self._servers = [httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            limits=httpx.Limits(max_keepalive_connections=16),
        ) for url in urls]
        self._down_until = [0.0] * len(urls)

    async def send(
        self, conversation_id: str, text: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply:
        """Send what the caller said (normalised: spoken digits become digits)."""
        return await self._post(conversation_id, normalize_caller_text(text), metadata,
                                with_intent=True)

    async def send_event(
        self,
        conversation_id: str,
        intent: str,
        metadata: dict[str, Any] | None = None,
        entities: dict[str, str] | None = None,
    ) -> DialogReply:
        """Trigger an intent directly (call start, no input, keypad entry)."""
        message = f"/{intent}"
        if entities:
            message += json.dumps(entities, separators=(",", ":"))
        # the intent is the one sent: no tracker round trip before the reply is spoken,
        # but for an entity (keypad entry), which may fill slots
        return await self._post(conversation_id, message, metadata, with_intent=bool(entities))

    async def send_keypad(
        self, conversation_id: str, digits: str, metadata: dict[str, Any] | None = None
    ) -> DialogReply:
        return await self.send_event(conversation_id, "inform", metadata, {KEYPAD_ENTITY: digits})

    async def healthy(self) -> bool:
        """Whether one of the servers answers."""
        for server in self._servers:
            try:
                if (await server.get("/")).status_code == 200:
                    return True
            except httpx.HTTPError:
                continue
        return False

    async def aclose(self) -> None:
        for server in self._servers:
            await server.aclose()

    def _in_turn(self) -> list[int]:
        """The servers to try, those not passed over first (in their configured order)."""
        now = time.monotonic()
        return sorted(range(len(self._servers)), key=lambda i: self._down_until[i] > now)

    async def _deliver(self, payload: dict[str, Any]) -> tuple[httpx.AsyncClient, Any]:
        """POST to the first server that takes the connection; the server and its reply.

        Only a server that could not be reached at all is passed for another: one that
        took the message may have handled it (the shared tracker holds it), and a second
        server would handle it again. Any other failure ends the turn (the server is
        passed over for the next ones)."""
        failures = []
        for index in self._in_turn():
            server = self._servers[index]
            try:
                response = await server.post("/webhooks/rest/webhook", json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                failures.append(f"{server.base_url} is not reachable: {exc!r}")
                self._pass_over(index, retried=True)
                continue
            except httpx.HTTPError as exc:
                self._pass_over(index, retried=False)
                raise DialogUnavailable(f"Rasa {server.base_url} failed: {exc!r}") from exc
            if response.status_code >= 500:
                self._pass_over(index, retried=False)
            try:
                response.raise_for_status()
                return server, response.json()
            except httpx.HTTPStatusError as exc:
                raise DialogUnavailable(f"Rasa {server.base_url} answered HTTP "
                                        f"{exc.response.status_code}") from exc
            except ValueError as exc:
                raise DialogUnavailable(f"Rasa {server.base_url} sent no JSON: {exc!r}") from exc
        raise DialogUnavailable("Rasa " + "; ".join(failures))

    def _pass_over(self, index: int, *, retried: bool) -> None:
        self._down_until[index] = time.monotonic() + DOWN_S
        if len(self._servers) > 1:
            log.warning("Rasa %s failed; %s", self._servers[index].base_url,
                        "trying another server" if retried else "the next turns go to another")

    async def _post(
        self, conversation_id: str, message: str, metadata: dict[str, Any] | None, *,
        with_intent: bool,
    ) -> DialogReply:
        payload = {"sender": conversation_id, "message": message, "metadata": metadata or {}}
        started = time.perf_counter()
        server, body = await self._deliver(payload)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if not isinstance(body, list):
            raise DialogUnavailable(f"Rasa at {self._base_url} sent an unexpected reply: {body!r}")
        messages = [
            BotMessage(text=item.get("text") or None, custom=item.get("custom") or None)
            for item in body
            if isinstance(item, dict)
        ]
        reading = (await self._tracker_reading(server, conversation_id) if with_intent
                   else TrackerReading())
        return DialogReply(messages=messages, elapsed_ms=elapsed_ms, sent_text=message,
                           intent=reading.intent, confidence=reading.confidence,
                           expects=reading.expects, slots=reading.slots)

    async def _tracker_reading(self, server: httpx.AsyncClient,
                               conversation_id: str) -> TrackerReading:
        """The intent of the conversation's latest user message, the latest value of
        each slot and the slot the bot now asks for; empty when the API is off or does
        not answer in time (intents are for the record, slots for the call's live state,
        the requested slot a hint to speech recognition: the call goes on)."""
        if not self._api_token:
            return TrackerReading()
        try:
            response = await server.get(
                f"/conversations/{conversation_id}/tracker",
                params={"include_events": "AFTER_RESTART", "token": self._api_token},
                timeout=INTENT_TIMEOUT_S,
            )
            response.raise_for_status()
            # The last user event, not ``latest_message``: while a form fills a slot Rasa
            # leaves ``latest_message`` on the message that started the form.
            tracker = response.json()
            events = [e for e in tracker.get("events") or [] if isinstance(e, dict)]
            users = [e for e in events if e.get("event") == "user"]
            intent = (users[-1].get("parse_data") or {}).get("intent", {}) if users else {}
            requested = (tracker.get("slots") or {}).get("requested_slot")
            # The latest value each slot held: an action may clear a slot in the same
            # round trip that filled it (the order status clears the order number).
            slots = {e.get("name"): e.get("value") for e in events
                     if e.get("event") == "slot" and e.get("value") is not None}
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("conversation %s: no intent from Rasa's tracker: %r", conversation_id, exc)
            return TrackerReading()
        name = intent.get("name") if isinstance(intent, dict) else None
        confidence = intent.get("confidence") if isinstance(intent, dict) else None
        return TrackerReading(
            str(name) if name else None,
            float(confidence) if isinstance(confidence, int | float) else None,
            str(requested) if isinstance(requested, str) and requested else None,
            {key: value for key, value in slots.items()
             if isinstance(key, str) and key not in INTERNAL_SLOTS})
