"""The web app over HTTPS with a certificate made for the test (a throwaway CA): Chromium,
trusting that certificate only, calls the bot from the softphone (a secure context: the
microphone is allowed) and signs in to the console, whose session cookie is Secure."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Playwright, expect

from speech.tts import PiperTTS
from switchboard.base.children import ChildProcess, http_probe
from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from tests.support.audio_tools import piper_speech, silence, write_wav
from tests.support.certs import ServerCertificate, make_certificate
from tests.telephony.webrtc.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.telephony.webrtc.test_softphone import (
    GREETING_GAP_MS,
    MIC_RATE,
    ask_for_the_order_status,
)

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "https admin password"


@dataclass
class SecureWebApp:
    url: str
    certificate: ServerCertificate


@pytest.fixture(scope="module")
def secure_web_app(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory,
    artifacts: Path, speech_server: object,
) -> Iterator[SecureWebApp]:
    """``switchboard web`` serving HTTPS only, with an admin user."""
    data_dir = tmp_path_factory.mktemp("https")
    certificate = make_certificate(data_dir / "tls")
    port = free_port()
    env = {
        **os.environ,
        "SWITCHBOARD_RASA_URL": rasa_server.url,  # type: ignore[attr-defined]
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(data_dir),
        "SWITCHBOARD_WEB_HOST": "127.0.0.1",
        "SWITCHBOARD_WEB_PORT": str(port),
        "SWITCHBOARD_WEB_TLS_CERT": str(certificate.cert),
        "SWITCHBOARD_WEB_TLS_KEY": str(certificate.key),
        "SWITCHBOARD_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "SWITCHBOARD_STT_DEVICE": "cpu",
        "SWITCHBOARD_TTS_DEVICE": "cpu",
    }
    created = subprocess.run(
        [sys.executable, "-m", "switchboard", "users", "create", "tls-admin", "--role", "admin",
         "--password-stdin"], cwd=PROJECT_ROOT, env=env, input=ADMIN_PASSWORD + "\n",
        capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    url = f"https://127.0.0.1:{port}"
    child = ChildProcess(
        "web app", [sys.executable, "-m", "switchboard", "web"],
        log_path=artifacts / "https-web-app.log", healthy=http_probe(f"{url}/healthz"),
        base_env=env, cwd=PROJECT_ROOT, start_timeout_s=90.0, stop_grace_s=20.0,
    )
    with child:
        yield SecureWebApp(url, certificate)


def test_the_certificate_is_served_and_plain_http_is_not(secure_web_app: SecureWebApp) -> None:
    trusting = ssl.create_default_context(cafile=str(secure_web_app.certificate.ca))
    checked = httpx.get(f"{secure_web_app.url}/healthz", verify=trusting, trust_env=False,
                        timeout=10)
    assert checked.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(secure_web_app.url.replace("https:", "http:") + "/healthz", trust_env=False,
                  timeout=10)


def test_softphone_and_console_work_over_https_in_chromium(
    secure_web_app: SecureWebApp, playwright_driver: Playwright, tts: PiperTTS,
    artifacts: Path, tmp_path: Path,
) -> None:
    url = secure_web_app.url
    mic = tmp_path / "caller.wav"
    write_wav(mic, np.concatenate([
        silence(GREETING_GAP_MS, MIC_RATE),
        piper_speech(tts, "Hi, I'd like to check my order status.", MIC_RATE),
        silence(30_000, MIC_RATE),
    ]), MIC_RATE)
    browser = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, headless=True, timeout=30_000, args=[
            *CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}%noloop",
            # trust the test's certificate, and nothing else it would not trust anyway
            f"--ignore-certificate-errors-spki-list={secure_web_app.certificate.spki_sha256()}",
        ])
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        page.goto(f"{url}/softphone")
        assert page.evaluate("window.isSecureContext") is True
        ask_for_the_order_status(page)
        page.screenshot(path=str(artifacts / "https-softphone.png"))
        page.get_by_role("button", name="Hang up").click()
        expect(page.locator("#state")).to_have_text("ended", timeout=5_000)

        console = browser.new_page(viewport={"width": 1200, "height": 800})
        console.goto(f"{url}/calls")
        console.fill("input[name=username]", "tls-admin")
        console.fill("input[name=password]", ADMIN_PASSWORD)
        console.click("button[type=submit]")
        expect(console).to_have_url(f"{url}/calls")
        cookies = console.context.cookies(url)
        assert cookies and all(c["secure"] for c in cookies), cookies
        console.goto(f"{url}/")
        expect(console.locator("body")).to_contain_text("Calls", timeout=15_000)
        console.screenshot(path=str(artifacts / "https-console.png"))
    finally:
        browser.close()
