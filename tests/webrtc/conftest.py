"""The web app in a subprocess (``python -m switchboard web``) on a loopback port, and a
headless Chromium with a fake microphone, for the softphone's browser tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT

CHROMIUM = "/usr/bin/chromium"
WEB_START_TIMEOUT_S = 90.0
WEB_STOP_TIMEOUT_S = 20.0
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]


@dataclass
class WebApp:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def web_app(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory,
    artifacts: Path,
) -> Iterator[WebApp]:
    """``switchboard web`` offering only 127.0.0.1 to ICE; stopped with SIGTERM, which
    must make it exit cleanly."""
    port = free_port()
    log = artifacts / "webrtc-web-app.log"
    env = {
        **os.environ,
        "SWITCHBOARD_RASA_URL": rasa_server.url,  # type: ignore[attr-defined]
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_DATA_DIR": str(tmp_path_factory.mktemp("web")),
        "SWITCHBOARD_WEB_HOST": "127.0.0.1",
        "SWITCHBOARD_WEB_PORT": str(port),
        "SWITCHBOARD_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "SWITCHBOARD_STT_DEVICE": "cpu",
        "SWITCHBOARD_TTS_DEVICE": "cpu",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "web"],
            cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    app = WebApp(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + WEB_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"switchboard web exited ({process.returncode}); see {log}")
            try:
                if httpx.get(f"{app.url}/healthz", timeout=2, trust_env=False).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"switchboard web not healthy after {WEB_START_TIMEOUT_S} s; see {log}")
            time.sleep(0.5)
        yield app
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(WEB_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                pytest.fail(f"switchboard web ignored SIGTERM for {WEB_STOP_TIMEOUT_S} s")
    assert process.returncode == 0, f"switchboard web exited with {process.returncode}; see {log}"
