"""OpenTelemetry traces of calls: one span per call, one per bot reply, one per stage.

Off by default. With ``SWITCHBOARD_OTLP_ENDPOINT`` set (an OTLP/HTTP collector, e.g.
``http://127.0.0.1:4318``), every process that runs calls exports them in batches, off
the call's path. A reply's span runs from the end of the caller's speech to the bot's first
audio; its children are the stages in their order (endpoint, stt, dialog, tts), each as
long as the pipeline measured it. Spans carry the call's id, transport, node and intents,
never what was said or who called.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from switchboard.base.settings import Settings
from switchboard.conversation.turns import TurnRecord

log = logging.getLogger(__name__)

SERVICE_NAME = "switchboard"
STAGES = ("endpoint", "stt", "dialog", "tts")
FAILED_ENDS = frozenset({"failed", "dialog_unavailable", "worker_died", "node_lost"})


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly (a float timestamp would round)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


class CallTracing:
    """The process's tracer, or nothing when tracing is off."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        """``exporter``: where spans go (default: OTLP/HTTP to ``otlp_endpoint``)."""
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if exporter is None and not settings.otlp_endpoint:
            return
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/traces", timeout=5)
        self.provider = TracerProvider(resource=Resource.create({
            "service.name": SERVICE_NAME,
            "service.instance.id": settings.effective_node_id,
            "switchboard.worker": settings.worker_name or "",
        }))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("switchboard.calls")
        log.info("tracing calls to %s", settings.otlp_endpoint or "a local exporter")

    def start(self, call_id: str, began_ns: int | None = None,
              **attributes: str) -> CallSpan | None:
        """A call's span, from ``began_ns`` (default: now); None when tracing is off."""
        if self.tracer is None:
            return None
        span = self.tracer.start_span("call", start_time=began_ns, attributes={
            "switchboard.call_id": call_id,
            **{f"switchboard.{name}": value for name, value in attributes.items() if value}})
        return CallSpan(self.tracer, span)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = self.tracer = None


class CallSpan:
    """One call's span and the spans of its replies."""

    def __init__(self, tracer: Tracer, span: Span) -> None:
        self.tracer = tracer
        self.span = span
        self.replies = 0
        self.context = trace.set_span_in_context(span)
        self.latest_ns = 0
        """The end of the latest reply: turn times follow the call's media clock, which a
        simulation runs ahead of the wall clock."""

    def turn(self, record: TurnRecord) -> None:
        """A stored turn: a reply's span (bot turns with timings), else an event."""
        if record.speaker != "bot" or record.response_ms is None:
            if record.speaker != "bot":
                self.span.add_event("caller turn", {
                    "switchboard.intent": record.intent or "",
                    "switchboard.barge_in": record.barge_in}, _ns(record.started_at))
            return
        self.replies += 1
        end = record.started_at
        start = end - timedelta(milliseconds=record.response_ms)
        reply = self.tracer.start_span("reply", context=self.context, start_time=_ns(start),
                                       attributes={"switchboard.reply": self.replies,
                                                   "switchboard.response_ms": record.response_ms})
        stages = trace.set_span_in_context(reply)
        moment = start
        for stage in STAGES:
            ms = getattr(record, f"{stage}_ms")
            if ms is None:
                continue
            stage_end = min(moment + timedelta(milliseconds=ms), end)
            self.tracer.start_span(stage, context=stages, start_time=_ns(moment),
                                   attributes={"switchboard.stage_ms": ms}).end(_ns(stage_end))
            moment = stage_end
        reply.end(_ns(end))
        self.latest_ns = max(self.latest_ns, _ns(end))

    def end(self, reason: str) -> None:
        self.span.set_attribute("switchboard.end_reason", reason)
        self.span.set_attribute("switchboard.replies", self.replies)
        if reason in FAILED_ENDS:
            self.span.set_status(Status(StatusCode.ERROR, reason))
        self.span.end(max(time.time_ns(), self.latest_ns))
