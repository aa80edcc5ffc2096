"""Each call's trace (OpenTelemetry): exported over OTLP/HTTP to a collector when one is
configured, with a span per call, per bot reply and per stage; nothing without one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from switchboard.base.settings import Settings
from switchboard.conversation.tracing import CallTracing
from switchboard.conversation.turns import TurnRecord
from switchboard.node import Node
from switchboard.simulate import simulate_call
from switchboard.storage.repository import CallRepository
from tests.support.audio_tools import espeak, silence
from tests.support.fakes import FakeDialog, FakeSTT, FakeTTS
from tests.switchboard.test_recovery import script

RATE = 16000


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: the spans of every export it got."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list[tuple[str, object]] = []  # (service name, span)
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.paths.append(self.path)
        for resource in request.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes
                           if a.key == "service.name")
            for scope in resource.scope_spans:
                self.server.spans += [(service, span) for span in scope.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def attributes(span: object) -> dict[str, object]:
    values = {}
    for item in span.attributes:  # type: ignore[attr-defined]
        value = item.value
        values[item.key] = getattr(value, value.WhichOneof("value"))
    return values


async def test_a_call_is_traced_to_the_configured_collector(
        database_url: str, calls: CallRepository, collector: Collector) -> None:
    settings = Settings(database_url=database_url, otlp_endpoint=collector.url,
                        node_id="node-t")  # type: ignore[call-arg]
    lines = ["I want to check my order", "It's 48213"]
    node = Node.create(settings, stt=FakeSTT(lines), tts=FakeTTS(),
                       dialog=FakeDialog(script), analytics=False)
    audio = [silence(3000)]
    for line in lines:
        audio += [espeak(line), silence(2500)]
    try:
        sim = await simulate_call(node, np.concatenate(audio), RATE, caller="sip:1001@pbx")
    finally:
        await node.aclose()  # flushes the spans

    assert collector.paths and set(collector.paths) == {"/v1/traces"}
    spans = {}
    for service, span in collector.spans:
        assert service == "switchboard"
        spans.setdefault(span.name, []).append(span)  # type: ignore[attr-defined]
    [call] = spans["call"]
    call_attributes = attributes(call)
    assert call_attributes["switchboard.call_id"] == sim.result.call_id
    assert call_attributes["switchboard.node"] == "node-t"
    assert call_attributes["switchboard.end_reason"] == sim.result.reason
    replies = spans["reply"]
    stored = calls.get_call(sim.result.call_id)
    assert stored is not None
    timed = [t for t in stored.turns if t.speaker == "bot" and t.response_ms is not None]
    assert call_attributes["switchboard.replies"] == len(replies) == len(timed) >= 2
    assert sorted(r.end_time_unix_nano - r.start_time_unix_nano for r in replies) == sorted(
        round(t.response_ms * 1_000_000) for t in timed)
    for reply in replies:
        assert reply.trace_id == call.trace_id and reply.parent_span_id == call.span_id
        assert call.start_time_unix_nano <= reply.start_time_unix_nano
        assert reply.end_time_unix_nano <= call.end_time_unix_nano
    stages = [s for name in ("endpoint", "stt", "dialog", "tts") for s in spans.get(name, [])]
    assert {s.name for s in stages} >= {"endpoint", "dialog", "tts"}
    reply_ids = {r.span_id for r in replies}
    assert all(s.parent_span_id in reply_ids for s in stages)
    said = " ".join(str(value) for s in [call, *replies, *stages]
                    for value in attributes(s).values())
    assert "48213" not in said and "1001" not in said  # no words, no caller


def test_stages_follow_each_other_inside_their_reply() -> None:
    exporter = InMemorySpanExporter()
    tracing = CallTracing(Settings(node_id="n"), exporter=exporter)  # type: ignore[call-arg]
    span = tracing.start("c1", transport="sip")
    assert span is not None
    heard = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
    span.turn(TurnRecord(speaker="caller", text="my order is 48213", started_at=heard,
                         intent="order_status"))
    span.turn(TurnRecord(speaker="bot", text="Order 48213 is on its way.",
                         started_at=heard + timedelta(seconds=3), endpoint_ms=400,
                         stt_ms=100, dialog_ms=90, tts_ms=70, response_ms=700))
    span.end("caller_hangup")
    tracing.close()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    reply = by_name["reply"]
    assert reply.end_time - reply.start_time == 700_000_000
    previous_end = reply.start_time
    for stage, ms in (("endpoint", 400), ("stt", 100), ("dialog", 90), ("tts", 70)):
        assert by_name[stage].start_time == previous_end
        assert by_name[stage].end_time - by_name[stage].start_time == ms * 1_000_000
        assert by_name[stage].parent.span_id == reply.context.span_id
        previous_end = by_name[stage].end_time
    [event] = by_name["call"].events
    assert event.attributes["switchboard.intent"] == "order_status"


def test_tracing_is_off_without_a_collector() -> None:
    tracing = CallTracing(Settings())  # type: ignore[call-arg]
    assert tracing.start("c1") is None
