"""A browser calls the bot from the softphone page: headless Chromium with a fake
microphone playing Piper speech, the web app in its own process, the real Rasa bot.

What the bot said is read from the page's transcript; that it was heard is read from the
browser's inbound audio energy (``RTCPeerConnection.getStats``)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from playwright.sync_api import Browser, Page, Playwright, expect

from speech.tts import PiperTTS
from switchboard.storage.database import prepare_database
from switchboard.storage.repository import CallRepository
from tests.support.audio_tools import piper_speech, silence, write_wav
from tests.support.speech_fixtures import speech_models_mapped
from tests.telephony.webrtc.conftest import CHROMIUM, CHROMIUM_FLAGS, WebApp

pytestmark = pytest.mark.integration
MIC_RATE = 48000
GREETING_GAP_MS = 7000
TURN_TIMEOUT_MS = 30_000
STORED_TIMEOUT_S = 15.0
AUDIBLE_ENERGY = 0.001
"""Growth of the inbound ``totalAudioEnergy`` that a spoken reply clearly exceeds."""


def launch(driver: Playwright, mic_wav: Path) -> Browser:
    """Chromium whose microphone plays ``mic_wav`` once."""
    return driver.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}%noloop"],
        timeout=30_000,
    )


def inbound_energy(page: Page) -> float:
    """``totalAudioEnergy`` of the audio the browser received from the bot so far."""
    energy: float = page.evaluate("""async () => {
        let total = 0;
        (await window.softphone.pc.getStats()).forEach((r) => {
            if (r.type === "inbound-rtp" && r.kind === "audio") total += r.totalAudioEnergy || 0;
        });
        return total;
    }""")
    return energy


def ask_for_the_order_status(page: Page) -> None:
    """Press Call on the softphone page; the greeting, the caller's question (the fake
    microphone's) and the bot's spoken reply asking for the order number follow."""
    page.get_by_role("button", name="Call", exact=True).click()
    expect(page.locator("#state")).to_have_text("connected", timeout=15_000)
    bot, caller = page.locator("#transcript li.bot"), page.locator("#transcript li.caller")
    expect(bot.first).to_contain_text("Acme support", timeout=TURN_TIMEOUT_MS)
    expect(caller.first).to_contain_text("order status", timeout=TURN_TIMEOUT_MS)
    before_reply = inbound_energy(page)
    expect(bot.nth(1)).to_contain_text("order number", timeout=TURN_TIMEOUT_MS)
    assert inbound_energy(page) - before_reply > AUDIBLE_ENERGY, "the reply was not heard"


def offer_sdp(*, audio: bool) -> str:
    """A valid offer made by aiortc (no STUN), with an audio m-line or only a DataChannel.
    Made on a thread of its own: Playwright's sync API keeps a loop on this one."""

    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if audio:
            pc.addTransceiver("audio")
        else:
            pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        await pc.close()
        return sdp

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, make()).result(timeout=30)


def wait_stored(repository: CallRepository, call_id: str) -> object:
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while time.monotonic() < deadline:
        call = repository.get_call(call_id)
        if call is not None and call.ended_at is not None:
            return call
        time.sleep(0.3)
    pytest.fail(f"call {call_id} was not stored as ended within {STORED_TIMEOUT_S} s")


def test_browser_call_is_answered_and_resumes_after_a_dropped_connection(
    web_app: WebApp, playwright_driver: Playwright, tts: PiperTTS, database_url: str,
    artifacts: Path, tmp_path: Path,
) -> None:
    speech_wav, quiet_wav = tmp_path / "caller.wav", tmp_path / "quiet.wav"
    write_wav(speech_wav, np.concatenate([
        silence(GREETING_GAP_MS, MIC_RATE),
        piper_speech(tts, "Hi, I'd like to check my order status.", MIC_RATE),
        silence(40_000, MIC_RATE),
    ]), MIC_RATE)
    write_wav(quiet_wav, silence(60_000, MIC_RATE), MIC_RATE)
    repository = CallRepository(prepare_database(database_url))

    # First connection: greeting, the caller's question, the bot's spoken reply.
    first = launch(playwright_driver, speech_wav)
    page = first.new_page(viewport={"width": 1000, "height": 760})
    page.goto(f"{web_app.url}/softphone")
    ask_for_the_order_status(page)
    expect(page.locator("#transcript li.bot").nth(1)).to_contain_text("replied in")
    expect(page.locator("#latency-server")).to_contain_text("ms")
    page.screenshot(path=str(artifacts / "webrtc-softphone-reply.png"))
    first_call = page.evaluate("window.softphone.callId")
    token = page.evaluate("JSON.parse(sessionStorage.getItem('switchboard.conversation')).token")
    first.close()  # the connection drops without a hangup

    # Second connection with the token: no new greeting, the order-number form goes on.
    second = launch(playwright_driver, quiet_wav)
    page = second.new_page(viewport={"width": 1000, "height": 760})
    page.goto(f"{web_app.url}/softphone")
    page.evaluate("""(token) => sessionStorage.setItem('switchboard.conversation',
        JSON.stringify({token, alive: Date.now()}))""", token)
    page.reload()
    expect(page.locator("#notice")).to_contain_text("continue your earlier conversation")
    page.get_by_role("button", name="Call", exact=True).click()
    expect(page.locator("#transcript li.system")).to_contain_text(
        "Reconnected", timeout=15_000)
    for digit in "48213#":
        page.locator(f"#keypad button[data-digit='{digit}']").click()
    bot = page.locator("#transcript li.bot")
    expect(bot.first).to_contain_text("shipped", timeout=TURN_TIMEOUT_MS)
    expect(page.locator("#transcript li.caller").first).to_contain_text("48213")
    page.screenshot(path=str(artifacts / "webrtc-softphone-keypad.png"))
    second_call = page.evaluate("window.softphone.callId")
    page.get_by_role("button", name="Hang up").click()
    expect(page.locator("#state")).to_have_text("ended", timeout=5_000)
    expect(page.get_by_role("button", name="Call", exact=True)).to_be_enabled()
    page.screenshot(path=str(artifacts / "webrtc-softphone-ended.png"))
    second.close()

    dropped, resumed = wait_stored(repository, first_call), wait_stored(repository, second_call)
    assert dropped.transport == "webrtc" and resumed.transport == "webrtc"  # type: ignore[attr-defined]
    assert resumed.end_reason == "caller_hangup"  # type: ignore[attr-defined]
    texts = [turn.text for turn in resumed.turns]  # type: ignore[attr-defined]
    assert "[keypad] 48213" in texts and not any("Acme support" in t for t in texts)

    # The caller hung up: the conversation cannot be resumed any more.
    refused = httpx.post(f"{web_app.url}/softphone/offer", trust_env=False, timeout=10, json={
        "sdp": offer_sdp(audio=True), "type": "offer", "token": token})
    assert refused.status_code == 409, refused.text
    assert "ended" in refused.json()["error"]


def post_offer(web_app: WebApp, body: object) -> httpx.Response:
    return httpx.post(f"{web_app.url}/softphone/offer", json=body, timeout=10, trust_env=False)


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"sdp": "hello", "type": "offer"}, 400, "no SDP offer"),
    ({"sdp": "v=0\r\n", "type": "answer"}, 400, "expected an SDP offer"),
    ({"type": "offer"}, 422, "sdp"),
    ("not an object", 422, "expected JSON"),
])
def test_malformed_offers_are_refused_with_a_reason(
    web_app: WebApp, body: object, status: int, says: str
) -> None:
    response = post_offer(web_app, body)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_offer_without_audio_is_refused(web_app: WebApp) -> None:
    response = post_offer(web_app, {"sdp": offer_sdp(audio=False), "type": "offer"})
    assert response.status_code == 400
    assert "no audio m-line" in response.json()["error"]


def test_offer_with_an_unknown_token_is_refused(web_app: WebApp) -> None:
    response = post_offer(web_app, {"sdp": offer_sdp(audio=True), "type": "offer",
                                    "token": "no-such-conversation"})
    assert response.status_code == 410
    assert "without a token" in response.json()["error"]


def test_the_web_app_holds_no_speech_model(web_app: WebApp) -> None:
    assert web_app.child.pid is not None
    assert speech_models_mapped(web_app.child.pid) == []


def test_server_stays_healthy_after_bad_offers(web_app: WebApp) -> None:
    refused = post_offer(web_app, {"sdp": "m=audio 9 RTP/AVP 0\r\nnonsense", "type": "offer"})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error.startswith("cannot answer this offer: ") and "ICE" in error, error
    health = httpx.get(f"{web_app.url}/healthz", timeout=5, trust_env=False)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["webrtc_calls"] == 0


def test_one_address_gets_two_browser_calls_at_once_and_others_still_get_theirs(
    web_app: WebApp,
) -> None:
    """Per-address limits on the public softphone (defaults: two calls at once, ten a
    minute; 127.0.0.1 is trusted): a third offer from one address is refused with 429 and
    Retry-After, another address is answered. The offers are never connected, so the web
    app drops them after its connect timeout."""
    offer: dict[str, str] = {"sdp": offer_sdp(audio=True), "type": "offer"}

    def post_from(address: str) -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(transport=transport, trust_env=False, timeout=10) as client:
            return client.post(f"{web_app.url}/softphone/offer", json=offer)

    first, second = post_from("127.0.0.2"), post_from("127.0.0.2")
    assert (first.status_code, second.status_code) == (200, 200)
    refused = post_from("127.0.0.2")
    assert refused.status_code == 429, refused.text
    assert "too many calls from your address" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) > 0
    offer["token"] = first.json()["token"]  # the first page reconnects: its own line
    assert post_from("127.0.0.2").status_code == 200
    del offer["token"]
    assert post_from("127.0.0.2").status_code == 429  # and still two at once
    assert post_from("127.0.0.3").status_code == 200
    assert post_offer(web_app, offer).status_code == 200  # trusted: the node's own address
    deadline = time.monotonic() + 40
    while httpx.get(f"{web_app.url}/healthz", timeout=5,
                    trust_env=False).json()["webrtc_calls"] and time.monotonic() < deadline:
        time.sleep(0.5)  # unconnected offers are dropped: the lines come back
    assert post_from("127.0.0.2").status_code == 200
