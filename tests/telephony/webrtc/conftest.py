"""The web app in a subprocess (``python -m switchboard web``) on a loopback port, and a
headless Chromium with a fake microphone, for the softphone's browser tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchboard.base.children import ChildProcess, http_probe
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
    child: ChildProcess
    log: Path


@pytest.fixture(scope="module")
def web_app(
    rasa_server: object, database_url: str, tmp_path_factory: pytest.TempPathFactory,
    artifacts: Path, speech_server: object,
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
    child = ChildProcess(
        "web app", [sys.executable, "-m", "switchboard", "web"], log_path=log,
        healthy=http_probe(f"http://127.0.0.1:{port}/healthz", timeout_s=2.0), base_env=env,
        cwd=PROJECT_ROOT, start_timeout_s=WEB_START_TIMEOUT_S,
    )
    with child:
        yield WebApp(f"http://127.0.0.1:{port}", child, log)
        code = child.stop(WEB_STOP_TIMEOUT_S)
    assert code == 0, (f"switchboard web exited with {code} after SIGTERM (-9: it ignored "
                       f"SIGTERM for {WEB_STOP_TIMEOUT_S:.0f} s); see {log}")
