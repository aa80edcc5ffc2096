"""The console in a real browser, fed by the real product: ``switchboard simulate`` places a
call through Whisper, the Rasa bot and Piper; a real Celery worker on a real Redis analyses
it; ``switchboard web`` serves the console; headless Debian Chromium signs in, finds the call,
reads its transcript and analysis, filters the list, and an agent is kept out of user
management. Screenshots go to ``test-artifacts/console-*.png``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.children import ChildProcess, http_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from switchboard.bench.local_cluster import RedisServer, free_udp_port
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository
from tests.analytics.test_worker import Workers
from tests.support.audio_tools import piper_speech, silence, squeeze_silences, write_wav
from tests.support.dialog_fixtures import TEST_API_TOKEN
from tests.telephony.sip.peers import Baresip
from tests.telephony.sip.workers import worker_process
from tests.telephony.webrtc.conftest import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.integration
ADMIN_PASSWORD = "console admin password"
AGENT_PASSWORD = "console agent password"
WEB_START_TIMEOUT_S = 90.0
SIMULATE_TIMEOUT_S = 180.0
ANALYSIS_TIMEOUT_S = 20.0
UI_TIMEOUT_MS = 15_000


@dataclass
class Stack:
    url: str
    call_id: str
    env: dict[str, str]
    artifacts: Path


def _switchboard(env: dict[str, str], *args: str, stdin: str | None = None,
                 timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", *args], cwd=PROJECT_ROOT, env=env,
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert result.returncode == 0, f"switchboard {' '.join(args)}: {result.stderr}"
    return result


def _web_app(env: dict[str, str], log: Path) -> ChildProcess:
    url = f"http://127.0.0.1:{env['SWITCHBOARD_WEB_PORT']}/healthz"
    return ChildProcess(
        "web app", [sys.executable, "-m", "switchboard", "web"], log_path=log,
        healthy=http_probe(url, timeout_s=2.0), base_env=env, cwd=PROJECT_ROOT,
        start_timeout_s=WEB_START_TIMEOUT_S, stop_grace_s=20.0,
    )


@pytest.fixture(scope="module")
def stack(rasa_server: object, tts: PiperTTS, tmp_path_factory: pytest.TempPathFactory,
          artifacts: Path, speech_server: object) -> Iterator[Stack]:
    """Worker, web app and users on one database and Redis broker, and one simulated call
    (the caller asks for a human: the bot hands off); shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("console")
    with RedisServer(tmp_path) as redis_server:
        workers = Workers(tmp_path, redis_server.url)
        try:
            yield from _stack(workers, redis_server.url, rasa_server, tts, tmp_path, artifacts)
        finally:
            workers.close()


def _stack(workers: Workers, redis_url: str, rasa_server: object, tts: PiperTTS,
           tmp_path: Path, artifacts: Path) -> Iterator[Stack]:
    workers.start("analytics")
    env = {
        **os.environ,
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "SWITCHBOARD_DATABASE_URL": workers.database_url,
        "SWITCHBOARD_CELERY_BROKER_URL": redis_url,
        "SWITCHBOARD_REDIS_URL": redis_url,  # the live board's shared state, too
        "SWITCHBOARD_RASA_URL": rasa_server.url,  # type: ignore[attr-defined]
        "SWITCHBOARD_RASA_API_TOKEN": TEST_API_TOKEN,
        "SWITCHBOARD_WEB_HOST": "127.0.0.1",
        "SWITCHBOARD_WEB_PORT": str(free_port()),
        "SWITCHBOARD_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "SWITCHBOARD_STT_DEVICE": "cpu",
        "SWITCHBOARD_TTS_DEVICE": "cpu",
    }
    _switchboard(env, "users", "create", "ada", "--role", "admin", "--password-stdin",
                 stdin=ADMIN_PASSWORD + "\n")
    _switchboard(env, "users", "create", "bob", "--role", "agent", "--password-stdin",
                 stdin=AGENT_PASSWORD + "\n")

    caller = tmp_path / "caller.wav"
    write_wav(caller, np.concatenate([
        silence(7000), piper_speech(tts, "I want to talk to an agent, please."),
        silence(500)]), 16000)
    simulated = _switchboard({**env, "SWITCHBOARD_DESK_ENABLED": "false"}, "simulate",
                             str(caller), timeout=SIMULATE_TIMEOUT_S)  # no agent waits
    found = re.search(r"call ([0-9a-f]{32}) ended", simulated.stdout)
    assert found, simulated.stdout
    # simulate records nothing; give the call a 2 s recording as a SIP call would have
    recording = tmp_path / "recording.wav"
    write_wav(recording, (np.sin(np.arange(16000) / 8000 * 2 * np.pi * 440) * 8000)
              .astype(np.int16), 8000, channels=2)
    CallRepository(workers.sessions).set_recording(found.group(1), str(recording))
    with _web_app(env, artifacts / "console-web-app.log"):
        yield Stack(f"http://127.0.0.1:{env['SWITCHBOARD_WEB_PORT']}", found.group(1), env,
                    artifacts)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        yield _launch(driver)


def _launch(driver: Playwright) -> Browser:
    return driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                  args=CHROMIUM_FLAGS, timeout=30_000)


def _sign_in(page: Page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/calls")
    expect(page).to_have_url(re.compile(r"/login\?next=/calls$"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/calls")


def test_a_simulated_call_shows_in_the_console_with_its_analysis(
    stack: Stack, browser: Browser,
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(UI_TIMEOUT_MS)

    page.goto(f"{stack.url}/login")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("Wrong user name or password")

    _sign_in(page, stack.url, "ada", ADMIN_PASSWORD)
    cookie = next(c for c in page.context.cookies() if c["name"] == "switchboard_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    row = page.locator(f"tr[data-call-id='{stack.call_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("simulate")

    # The analysis comes from the Celery worker within seconds of the call's end; until
    # then the page reloads itself.
    page.click(f"tr[data-call-id='{stack.call_id}'] a")
    expect(page.locator("#outcome")).to_have_text("handed off",
                                                  timeout=ANALYSIS_TIMEOUT_S * 1000)
    expect(page.locator("#summary")).not_to_be_empty()
    expect(page.locator("#sentiment")).to_be_visible()
    transcript = page.locator("#transcript")
    expect(transcript.locator("li.caller")).to_contain_text(re.compile("agent", re.I))
    expect(transcript.locator("li.bot").first).to_be_visible()
    expect(transcript.locator(".latency").first).to_contain_text("response")
    expect(page.locator("#events")).to_contain_text("ended")
    seconds = page.evaluate("""() => new Promise((resolve, reject) => {
        const audio = document.querySelector('#recording');
        audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
        audio.addEventListener('error', () => reject(new Error('audio error ' + audio.error.code)));
        audio.preload = 'auto';
        audio.load();
    })""")
    assert abs(seconds - 2.0) < 0.05, seconds
    page.screenshot(path=str(stack.artifacts / "console-call.png"), full_page=True)

    # Filters: by outcome and intent the call is found; by another outcome it is not.
    page.goto(f"{stack.url}/calls")
    page.select_option("select[name=outcome]", "handed_off")
    page.click("#call-filters button[type=submit]")
    expect(page.locator(f"tr[data-call-id='{stack.call_id}']")).to_be_visible()
    page.select_option("select[name=outcome]", "resolved")
    page.click("#call-filters button[type=submit]")
    expect(page.locator("#no-calls")).to_be_visible()
    page.goto(f"{stack.url}/calls?intent=request_agent")
    expect(page.locator(f"tr[data-call-id='{stack.call_id}']")).to_be_visible()
    page.goto(f"{stack.url}/calls?since=2020-02-30")
    expect(page.locator(".flash.error")).to_contain_text("not a date")
    page.screenshot(path=str(stack.artifacts / "console-calls.png"), full_page=True)

    page.goto(f"{stack.url}/")
    expect(page.locator("#dashboard")).to_be_visible()
    calls = CallRepository(prepare_database(stack.env["SWITCHBOARD_DATABASE_URL"]))
    expect(page.locator("#figure-calls .value")).to_have_text(str(len(calls.list_calls())))
    page.screenshot(path=str(stack.artifacts / "console-dashboard.png"), full_page=True)

    page.goto(f"{stack.url}/users")
    expect(page.locator("#users")).to_contain_text("bob")
    page.screenshot(path=str(stack.artifacts / "console-users.png"), full_page=True)

    page.click("#logout")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(f"{stack.url}/calls/{stack.call_id}")
    expect(page).to_have_url(re.compile(r"/login\?next="))

    # An agent sees calls but not user management, and is told why.
    agent = browser.new_page(viewport={"width": 1280, "height": 800})
    agent.set_default_timeout(UI_TIMEOUT_MS)
    _sign_in(agent, stack.url, "bob", AGENT_PASSWORD)
    expect(agent.locator(f"tr[data-call-id='{stack.call_id}']")).to_be_visible()
    agent.click(f"tr[data-call-id='{stack.call_id}'] a")
    expect(agent.locator("#recording-restricted")).to_be_visible()
    expect(agent.locator("#recording")).to_have_count(0)
    expect(agent.locator("nav.topbar")).not_to_contain_text("Users")
    response = agent.goto(f"{stack.url}/users")
    assert response is not None and response.status == 403
    expect(agent.locator("main")).to_contain_text("cannot open user management")
    agent.screenshot(path=str(stack.artifacts / "console-agent-refused.png"), full_page=True)


def _open_as_agent(page: Page, url: str, path: str) -> None:
    """Open ``path`` signed out, sign in as the agent on the way, land on it."""
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{url}{path}")
    page.fill("input[name=username]", "bob")
    page.fill("input[name=password]", AGENT_PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}{path}")


def test_the_live_board_follows_a_call_as_it_is_spoken(
        stack: Stack, browser: Browser, tts: PiperTTS, tmp_path: Path) -> None:
    """An agent watches /live while `switchboard simulate` places a call: its row appears,
    its transcript grows turn by turn, then it ends (redaction: test_live_board)."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    _open_as_agent(page, stack.url, "/live")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.locator("#live-empty")).to_be_visible()  # the fixture's call has ended

    caller = tmp_path / "live-caller.wav"
    write_wav(caller, np.concatenate([
        silence(7000), piper_speech(tts, "Hi, you can reach me at 415 555 0123."),
        silence(7000), piper_speech(tts, "I'd like to check my order status."),
        silence(8000)]), 16000)
    call = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "simulate", str(caller)], cwd=PROJECT_ROOT,
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        row = page.locator("#live-calls tbody tr").first
        expect(row).to_contain_text("simulate", timeout=60_000)
        expect(row).to_contain_text("with the bot")
        transcript = page.locator("#live-transcript")
        expect(transcript.locator("li.bot").first).to_contain_text("Acme", timeout=30_000)
        expect(transcript.locator("li.caller").first).to_contain_text(
            re.compile("reach me", re.I), timeout=30_000)
        expect(transcript.locator("li.caller").nth(1)).to_contain_text(
            re.compile("order", re.I), timeout=30_000)
        expect(transcript.locator("li.bot", has_text=re.compile("order number", re.I))
               ).to_be_visible(timeout=30_000)
        page.screenshot(path=str(stack.artifacts / "console-live.png"), full_page=True)
        assert call.wait(SIMULATE_TIMEOUT_S) == 0, call.stdout.read() if call.stdout else ""
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
    expect(row).to_contain_text("ended", timeout=10_000)
    expect(page.locator("#live-empty")).to_be_visible(timeout=20_000)
    delays = page.evaluate("window.liveTurnDelays || []")
    assert len(delays) >= 4, delays
    print("board update delay after a turn (s):", " ".join(f"{d:.3f}" for d in delays))


AGENT_LINE = "Hello, this is Ann from customer support."
DESK_CALLER_LINES = [7000, "I'd like to check my order status.", 7000, "It's 4 8 2 1 3.", 13000,
                     "I want to talk to an agent, please.", 24000,
                     "My parcel has not arrived yet."]
"""What the desk's caller says (and waits, ms): an order, then a person (after the bot's
answer about the order, some 8 s of speech, has ended); later, to the agent."""


def _desk_caller(tts: PiperTTS, path: Path, rate: int, tail_ms: int) -> Path:
    write_wav(path, np.concatenate([
        silence(part, rate) if isinstance(part, int) else piper_speech(tts, part, rate)
        for part in [*DESK_CALLER_LINES, tail_ms]]), rate)
    return path


@dataclass
class AgentSide:
    received_bytes: int
    received_energy: float


def _agent_takes_the_call(stack: Stack, agent_voice: Path, shots: str) -> AgentSide:
    """Bob, in Chromium with a fake microphone playing ``agent_voice``, waits on /desk for
    the queued call, checks its context (the order number), accepts, talks until the
    caller's answer shows in the live transcript, hangs up and wraps up. Screenshots:
    ``console-{shots}-queue/call/wrap-up.png``."""
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, timeout=30_000,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={agent_voice}"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        _open_as_agent(page, stack.url, "/desk")
        expect(page.locator("#desk-status")).to_have_text("live")
        page.check("input[name=presence][value=available]")
        card = page.locator("#queue li").first
        expect(card).to_contain_text("48213", timeout=120_000)  # the order number
        expect(card).to_contain_text("request agent")
        page.screenshot(path=str(stack.artifacts / f"console-{shots}-queue.png"),
                        full_page=True)
        card.locator("button.accept").click()
        expect(page.locator("#in-call-state")).to_contain_text("connected", timeout=30_000)
        transcript = page.locator("#in-call-transcript")
        expect(transcript.locator("li.agent").first).to_contain_text(
            re.compile("customer support", re.I), timeout=40_000)
        expect(transcript.locator("li.caller", has_text=re.compile("parcel", re.I))
               ).to_be_visible(timeout=40_000)  # the caller, heard while with the agent
        received = page.evaluate("""async () => {
            const stats = await window.deskLeg.pc.getStats();
            let bytes = 0, energy = 0;
            stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") {
                bytes = s.bytesReceived; energy = s.totalAudioEnergy || 0; } });
            return {bytes, energy};
        }""")
        page.screenshot(path=str(stack.artifacts / f"console-{shots}-call.png"),
                        full_page=True)
        page.click("#hangup")
        expect(page.locator("#in-call-state")).to_contain_text("ended", timeout=20_000)
        expect(page.locator("#presence-now")).to_have_text("wrap up")
        page.select_option("#disposition", "follow_up")
        page.fill("#notes", "Parcel not delivered: resend.")
        page.screenshot(path=str(stack.artifacts / f"console-{shots}-wrap-up.png"),
                        full_page=True)
        page.click("#save-wrap-up")
        expect(page.locator("#presence-now")).to_have_text("available")
        browser.close()
    return AgentSide(received["bytes"], received["energy"])


def _stored_as_taken_by_bob(stack: Stack, call_id: str) -> None:
    """The stored call: bot turns, then Bob's (transcribed), and his wrap-up."""
    stored = CallRepository(prepare_database(stack.env["SWITCHBOARD_DATABASE_URL"])
                            ).get_call(call_id)
    assert stored is not None
    assert (stored.agent, stored.disposition, stored.agent_notes) == (
        "bob", "follow_up", "Parcel not delivered: resend.")
    turns = sorted(stored.turns, key=lambda t: t.started_at)
    speakers = [t.speaker for t in turns]
    assert "agent" in speakers and speakers.index("agent") > speakers.index("bot")
    assert any("support" in t.text.lower() for t in turns if t.speaker == "agent")
    assert any("parcel" in t.text.lower() for t in turns if t.speaker == "caller")


def _agent_voice(tts: PiperTTS, tmp_path: Path) -> Path:
    path = tmp_path / "agent.wav"
    write_wav(path, np.concatenate([silence(2500), piper_speech(tts, AGENT_LINE),
                                    silence(6000)]), 16000)
    return path


def test_an_agent_takes_a_sip_call_in_the_browser(
        stack: Stack, tts: PiperTTS, stt: WhisperSTT, tmp_path: Path,
        rasa_server: object) -> None:
    """A baresip caller (PCMU, a SIP worker process with the desk on the console's Redis
    and database) asks about an order, then for a person: the call waits in the queue
    (hold prompt, music); Bob, in Chromium with a fake microphone playing a Piper voice,
    sees it with its order number, accepts and talks with the caller: the phone hears his
    words, the page receives the caller's audio, both sides are transcribed; he hangs up
    (the phone gets his BYE) and wraps up; the call is stored as his."""
    caller = _desk_caller(tts, tmp_path / "sip-caller.wav", 8000, 20000)
    shared = {name: stack.env[name] for name in (
        "SWITCHBOARD_REDIS_URL", "SWITCHBOARD_CELERY_BROKER_URL", "SWITCHBOARD_RASA_API_TOKEN")}
    with worker_process(tmp_path / "worker", rasa_server.url,  # type: ignore[attr-defined]
                        stack.env["SWITCHBOARD_DATABASE_URL"], **shared,
                        SWITCHBOARD_DESK_QUEUE_TIMEOUT_S="90") as worker:
        phone = Baresip(tmp_path / "baresip", caller, sip_port=free_udp_port(3),
                        ctrl_port=free_port())
        phone.start()
        try:
            phone.command("dial", f"sip:bot@127.0.0.1:{worker.port}")
            assert phone.wait_for_log("Call established", 10), phone.log()
            agent = _agent_takes_the_call(stack, _agent_voice(tts, tmp_path), "desk")
            assert phone.wait_for_log("terminated", 20), phone.log()
            pcm, rate = phone.heard()
        finally:
            phone.stop()
            print("caller:", phone.log()[-3000:], "\nworker:", worker.log()[-8000:])
        calls = CallRepository(prepare_database(stack.env["SWITCHBOARD_DATABASE_URL"]))
        ended = [c for c in calls.list_calls(limit=20)
                 if c.transport == "sip" and c.ended_at is not None]
        assert ended, worker.log()[-3000:]
    assert agent.received_bytes > 10_000 and agent.received_energy > 0, agent
    assert ended[0].end_reason == "agent_hangup", ended[0].end_reason
    _stored_as_taken_by_bob(stack, ended[0].id)
    heard = stt.transcribe_sync(squeeze_silences(pcm, rate)[-rate * 25:], rate).text.lower()
    assert "support" in heard, heard
