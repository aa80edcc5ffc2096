"""Two whole nodes (`switchboard run`) behind `switchboard front` (Kamailio), sharing Redis,
the database, the speech server and a dialog tier: a real caller (baresip) is in the
middle of a dialog when its node is killed (-9, every process of it); they call again
and the surviving node resumes the conversation where it was. A node drained in the middle
of a call finishes it while the caller's next call goes to the other node. A softphone whose
node is killed reconnects to the other node's web app and goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Playwright, expect
from prometheus_client.parser import text_string_to_metric_families

from speech.tts import PiperTTS
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.failover import FIRST_CALL, REDIAL, Caller
from switchboard.bench.local_cluster import (
    RedisServer,
    RunningNode,
    free_udp_port,
    front_process,
    kill_node,
    running_node,
)
from switchboard.bench.sip_callers import RATE as CALLER_RATE
from switchboard.storage.live import CallState, LiveState
from switchboard.storage.models import Call
from switchboard.storage.repository import AnalysisRepository, CallRepository
from tests.analytics.test_worker import wait_for
from tests.support.audio_tools import piper_speech, silence, write_wav
from tests.support.dialog_fixtures import shared_dialog
from tests.telephony.sip.peers import Baresip, options
from tests.telephony.sip.test_sip_calls import GREETING_MS, RATE, audio
from tests.telephony.webrtc.test_softphone import (
    GREETING_GAP_MS,
    MIC_RATE,
    TURN_TIMEOUT_MS,
    launch,
)

pytestmark = pytest.mark.integration

OPENING = "Sorry, we got cut off. You were asking about order 4 8 2 1 3."


def drain_node(data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``switchboard drain --no-wait`` for the node running from ``data_dir`` (default:
    the one this environment's settings name)."""
    data = {} if data_dir is None else {"SWITCHBOARD_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "switchboard", "drain", "--no-wait"],
                          env={**os.environ, **data},
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)


Cluster = tuple[dict[str, RunningNode], int, str]


@pytest.fixture
def two_nodes(tmp_path: Path, database_url: str, rasa_server: object,
              speech_server: object) -> Iterator[Cluster]:
    """Nodes node-a and node-b, the front's SIP port, and the Redis URL."""
    with nodes_behind_front(tmp_path, database_url, rasa_server) as cluster:
        yield cluster


@pytest.fixture
def two_rejoining_nodes(tmp_path: Path, database_url: str, rasa_server: object,
                        speech_server: object) -> Iterator[Cluster]:
    """:func:`two_nodes` that call the callers of a lost node back themselves."""
    with nodes_behind_front(tmp_path, database_url, rasa_server,
                            SWITCHBOARD_SIP_REJOIN_LOST_CALLS="true") as cluster:
        yield cluster


@contextmanager
def nodes_behind_front(tmp_path: Path, database_url: str, rasa_server: object,
                       **env: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        nodes: dict[str, RunningNode] = {}
        web_ports: dict[str, int] = {}
        for name in ("node-a", "node-b"):
            web_ports[name] = free_port()
            data_dir = tmp_path / name
            data_dir.mkdir()
            nodes[name] = stack.enter_context(running_node(
                data_dir, database_url,
                SWITCHBOARD_DATA_DIR=str(data_dir), SWITCHBOARD_NODE_ID=name,
                SWITCHBOARD_REDIS_URL=redis.url, **shared_dialog(rasa_server),
                SWITCHBOARD_WEB_PORT=str(web_ports[name]),
                SWITCHBOARD_WEBRTC_ICE_ADDRESSES="127.0.0.1",
                SWITCHBOARD_DRAIN_TIMEOUT_S="150",  # the drained call lasts a minute
                **env))
            nodes[name].web_port = web_ports[name]  # type: ignore[attr-defined]
        front_port = free_udp_port()
        stack.enter_context(
            front_process(front_port, [n.sip_port for n in nodes.values()], tmp_path))
        yield nodes, front_port, redis.url


def caller(tts: PiperTTS, workdir: Path, parts: list) -> Baresip:  # type: ignore[type-arg]
    workdir.mkdir()
    wav = workdir / "caller.wav"
    write_wav(wav, audio(parts), RATE)
    phone = Baresip(workdir, wav, sip_port=free_udp_port(3), ctrl_port=free_port())
    phone.start()
    return phone


def order_caller(tts: PiperTTS, tmp_path: Path, front_port: int) -> Baresip:
    """A caller who asks about their order, connected through the front."""
    first = caller(tts, tmp_path / "first", [
        GREETING_MS, piper_speech(tts, "Hi, I'd like to check my order status.", RATE), 60000])
    try:
        first.command("dial", f"sip:bot@127.0.0.1:{front_port}")
        assert first.wait_for_log("Call established", 15), first.log()
    except BaseException:
        first.stop()
        raise
    return first


def sip_calls(calls: CallRepository) -> list[Call]:
    return [c for c in calls.list_calls(limit=200) if "caller@127.0.0.1" in (c.caller or "")]


def test_a_caller_cut_off_by_a_killed_node_resumes_on_the_other(
        two_nodes: tuple[dict[str, RunningNode], int, str], tts: PiperTTS,
        calls: CallRepository, sessions: object, tmp_path: Path) -> None:
    nodes, front_port, redis_url = two_nodes
    live = LiveState(redis_url)
    earlier = {c.id for c in sip_calls(calls)}  # the database is the session's
    first = order_caller(tts, tmp_path, front_port)
    try:
        time.sleep(GREETING_MS / 1000 + 7)  # the question, then "what's your order number?"
        for digit in "48213#":
            first.command("sndcode", digit)
            time.sleep(0.3)

        def answered() -> CallState | None:
            state = live.latest_call("sip", "caller")
            return state if state and "4 8 2 1 3" in state.last_bot_text else None

        state = wait_for(answered, 40, "the order status, in the call's live state")
        assert state.slots.get("order_number") == "48213" and state.active
        doomed, survivor = state.node, ({"node-a", "node-b"} - {state.node}).pop()
        kill_node(nodes[doomed])
        killed_at = time.monotonic()
        first.command("hangup")
    finally:
        first.stop()

    second = caller(tts, tmp_path / "second", [
        14000, piper_speech(tts, "No, that's all. Thank you, goodbye.", RATE), 12000])
    try:
        second.command("dial", f"sip:bot@127.0.0.1:{front_port}")
        assert second.wait_for_log("Call established", 20), second.log()
        answered_after_s = time.monotonic() - killed_at
        assert second.wait_for_log("terminated", 60), second.log()
    finally:
        second.stop()

    lost = wait_for(lambda: (c := calls.get_call(state.call_id)) and c.ended_at and c,
                    20, "the lost call's end")
    assert (lost.node, lost.end_reason) == (doomed, "node_lost")
    [resumed] = [c for c in sip_calls(calls) if c.id not in {state.call_id, *earlier}]
    resumed = wait_for(lambda: (c := calls.get_call(resumed.id)) and c.ended_at and c, 30,
                       "the second call's end")
    assert resumed.node == survivor
    assert resumed.call_metadata["resumed_from"] == state.call_id
    bot = [t.text for t in resumed.turns if t.speaker == "bot"]
    assert bot[0].startswith(OPENING), bot
    assert resumed.end_reason == "bot_hangup", [t.text for t in resumed.turns]
    # the lost call's analysis runs once, on the survivor's analytics worker
    analyses = AnalysisRepository(sessions)  # type: ignore[arg-type]
    wait_for(lambda: analyses.get(state.call_id), 60, "the lost call's analysis")
    assert analyses.count(state.call_id) == 1
    print(f"redial answered {answered_after_s:.1f} s after the kill")
    live.close()

    # the survivor's /metrics: the sum of its processes (supervisor, SIP worker, web app)
    text, samples = node_metrics(nodes[survivor])
    assert samples[("switchboard_recoveries_total", (("mode", "redial"),))] == 1
    assert samples[("switchboard_recoveries_total", (("mode", "node_lost"),))] == 1
    assert samples[("switchboard_calls_ended_total",
                    (("reason", "bot_hangup"), ("transport", "sip")))] == 1
    assert samples[("switchboard_calls_active", (("transport", "sip"),))] == 0
    assert samples[("switchboard_turn_stage_seconds_count", (("stage", "tts"),))] >= 2
    assert ("switchboard_heartbeat_age_seconds", ()) in samples
    assert "caller@" not in text and state.call_id not in text  # no numbers, no call ids


def node_metrics(node: RunningNode) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]],
                                                    float]]:
    """A node's /metrics (the sum of its processes), as text and as parsed samples."""
    port = node.web_port  # type: ignore[attr-defined]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_killed_nodes_caller_is_called_back_by_the_other_without_redialling(
        two_rejoining_nodes: Cluster, tts: PiperTTS, calls: CallRepository,
        tmp_path: Path) -> None:
    """The stretch goal: the survivor takes the cut-off SIP call back itself, with an
    INVITE that replaces the lost dialog at the caller (RFC 3891), a PJSUA2 caller in a
    process of its own; the caller never hangs up and hears where they were."""
    nodes, front_port, redis_url = two_rejoining_nodes
    live = LiveState(redis_url)
    lines = [piper_speech(tts, text, CALLER_RATE) for text in (
        "Hi, I'd like to check my order status.", "four eight two one three")]
    caller = Caller(f"sip:bot@127.0.0.1:{front_port}", "7001", lines, tmp_path / "caller.log")
    try:
        caller.dial(FIRST_CALL, talk=True)
        caller.expect("answered", FIRST_CALL, 20)
        caller.expect("talked", FIRST_CALL, 90)

        def answered() -> CallState | None:
            state = live.latest_call("sip", "7001")
            return state if state and "4 8 2 1 3" in state.last_bot_text else None

        state = wait_for(answered, 30, "the order status, in the call's live state")
        doomed, survivor = state.node, ({"node-a", "node-b"} - {state.node}).pop()
        kill_node(nodes[doomed])
        killed_at = time.monotonic()
        taken_back = caller.expect("answered", REDIAL, 30) - killed_at  # replaced, not redialled
        heard = caller.expect("heard", REDIAL, 30) - killed_at
        rejoined = wait_for(lambda: next((c for c in calls.list_calls(limit=50)
                                          if "sip:7001@" in (c.caller or "")
                                          and c.id != state.call_id), None),
                            20, "the call taken back, in the database")
        opening = wait_for(lambda: next((t.text for t in (calls.get_call(rejoined.id) or
                                                           rejoined).turns
                                         if t.speaker == "bot"), None), 20, "its opening")
        caller.hang_up(REDIAL)
    finally:
        caller.close()
    rejoined = wait_for(lambda: (c := calls.get_call(rejoined.id)) and c.ended_at and c, 30,
                        "the call's end")
    assert opening.startswith(OPENING), opening
    assert rejoined.node == survivor
    assert rejoined.call_metadata["resumed_from"] == state.call_id
    assert rejoined.call_metadata["direction"] == "rejoin"
    assert "sip:7001@127.0.0.1" in (rejoined.caller or "")
    lost = calls.get_call(state.call_id)
    assert lost is not None and lost.end_reason == "node_lost"
    after = live.call(rejoined.id)
    assert after is not None and after.slots.get("order_number") == "48213"
    assert after.rejoin and after.rejoin["uri"].startswith("sip:7001@127.0.0.1:")  # again
    live.close()
    _, samples = node_metrics(nodes[survivor])
    assert samples[("switchboard_recoveries_total", (("mode", "rejoin"),))] == 1
    assert ("switchboard_recoveries_total", (("mode", "redial"),)) not in samples or samples[
        ("switchboard_recoveries_total", (("mode", "redial"),))] == 0
    print(f"taken back {taken_back:.1f} s after the kill, opening heard at {heard:.1f} s")


def test_a_draining_node_finishes_its_call_while_new_calls_go_to_the_other(
        two_nodes: tuple[dict[str, RunningNode], int, str], tts: PiperTTS,
        calls: CallRepository, tmp_path: Path) -> None:
    nodes, front_port, redis_url = two_nodes
    live = LiveState(redis_url)
    earlier = {c.id for c in sip_calls(calls)}  # the database is the session's
    first = order_caller(tts, tmp_path, front_port)
    try:
        up = wait_for(lambda: live.latest_call("sip", "caller"), 20, "the call's live state")
        draining, other = up.node, ({"node-a", "node-b"} - {up.node}).pop()
        node = nodes[draining]
        # its lone PJSUA2 worker answers OPTIONS 200 until it drains, then 503
        assert (options(node.sip_port) or "").startswith("SIP/2.0 200")
        asked = drain_node(tmp_path / draining)
        assert asked.returncode == 0, asked.stderr
        wait_for(lambda: (options(node.sip_port) or "").startswith("SIP/2.0 503"), 15,
                 "the draining node answering OPTIONS 503")

        # the same caller calls again: Kamailio sends the call to the other node
        second = caller(tts, tmp_path / "second", [
            14000, piper_speech(tts, "No, that's all. Thank you, goodbye.", RATE), 12000])
        try:
            second.command("dial", f"sip:bot@127.0.0.1:{front_port}")
            assert second.wait_for_log("Call established", 20), second.log()
            assert second.wait_for_log("terminated", 60), second.log()
        finally:
            second.stop()

        # meanwhile the first call goes on on the draining node, turn after turn
        for digit in "48213#":
            first.command("sndcode", digit)
            time.sleep(0.3)
        wait_for(lambda: (c := live.call(up.call_id)) and "4 8 2 1 3" in c.last_bot_text, 40,
                 "the order status, answered by the draining node")
        assert node.child.poll() is None  # still up while its call is
        first.command("hangup")
    finally:
        first.stop()
        live.close()

    wait_for(lambda: node.child.poll() is not None, 60, "the drained node's exit")
    assert node.child.poll() == 0, node.log()[-3000:]
    assert "drained: no call left on this node" in node.log()
    drained_call = wait_for(lambda: (c := calls.get_call(up.call_id)) and c.ended_at and c, 20,
                            "the first call's end")
    assert (drained_call.node, drained_call.end_reason) == (draining, "caller_hangup")
    [new] = [c for c in sip_calls(calls) if c.id not in {up.call_id, *earlier}]
    assert new.node == other


def test_a_softphone_call_cut_off_by_a_killed_node_reconnects_to_the_other(
        two_nodes: tuple[dict[str, RunningNode], int, str], tts: PiperTTS,
        calls: CallRepository, playwright_driver: Playwright, artifacts: Path,
        tmp_path: Path) -> None:
    nodes, _, _ = two_nodes
    mic = tmp_path / "caller.wav"
    write_wav(mic, np.concatenate([
        silence(GREETING_GAP_MS, MIC_RATE),
        piper_speech(tts, "Hi, I'd like to check my order status.", MIC_RATE),
        silence(90_000, MIC_RATE),
    ]), MIC_RATE)
    web = {name: f"http://127.0.0.1:{node.web_port}"  # type: ignore[attr-defined]
           for name, node in nodes.items()}
    browser = launch(playwright_driver, mic)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(f"{web['node-a']}/softphone")
        page.get_by_role("button", name="Call", exact=True).click()
        expect(page.locator("#state")).to_have_text("connected", timeout=15_000)
        bot = page.locator("#transcript li.bot")
        expect(bot.nth(1)).to_contain_text("order number", timeout=TURN_TIMEOUT_MS)
        first_call = page.evaluate("window.softphone.callId")
        assert page.evaluate("window.softphone.otherNodes") == [web["node-b"]]

        kill_node(nodes["node-a"])  # the page's own server, with its call, is gone
        expect(bot.filter(has_text="we got cut off")).to_have_count(1, timeout=60_000)
        expect(page.locator("#state")).to_have_text("connected")
        page.screenshot(path=str(artifacts / "softphone-reconnected-to-another-node.png"))
        resumed_call = page.evaluate("window.softphone.callId")
        for digit in "48213#":
            page.locator(f"#keypad button[data-digit='{digit}']").click()
        expect(bot.filter(has_text="shipped")).to_have_count(1, timeout=TURN_TIMEOUT_MS)
        page.get_by_role("button", name="Hang up").click()
        expect(page.locator("#state")).to_have_text("ended", timeout=5_000)
    finally:
        browser.close()

    lost = wait_for(lambda: (c := calls.get_call(first_call)) and c.ended_at and c, 20,
                    "the lost browser call's end")
    assert (lost.node, lost.end_reason) == ("node-a", "node_lost")
    resumed = wait_for(lambda: (c := calls.get_call(resumed_call)) and c.ended_at and c, 20,
                       "the resumed browser call's end")
    assert (resumed.node, resumed.transport) == ("node-b", "webrtc")
    assert resumed.call_metadata["resumed_from"] == first_call
    texts = [t.text for t in resumed.turns]
    assert "[keypad] 48213" in texts and not any("Acme support" in t for t in texts)
