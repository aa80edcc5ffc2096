"""Smoke tests of the latency benches: each runs end to end at its smallest size against
real parts (models, Rasa, a SIP worker, the web app) and reports the kit's figures.
Their numbers are not judged here: benches print figures, tests check behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from switchboard.base.processes import free_port
from switchboard.base.settings import PROJECT_ROOT
from tests.support.dialog_fixtures import TEST_API_TOKEN, shared_dialog
from tests.telephony.sip.workers import worker_process

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("speech_server")]
BENCH_TIMEOUT_S = 300


def bench(tmp_path: Path, rasa_server: Any, database_url: str, *args: str,
          **settings: str) -> dict[str, Any]:
    """Run ``switchboard bench ARGS --json`` (``settings``: more environment); its figures."""
    out = tmp_path / "figures.json"
    env = {**os.environ, **settings, "SWITCHBOARD_DATA_DIR": str(tmp_path),
           "SWITCHBOARD_DATABASE_URL": database_url,
           "SWITCHBOARD_RASA_URL": rasa_server.url, "SWITCHBOARD_RASA_API_TOKEN": TEST_API_TOKEN,
           "SWITCHBOARD_STT_DEVICE": "cpu", "SWITCHBOARD_TTS_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "switchboard", "bench", *args, "--json",
                           str(out)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=BENCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "voice_to_voice" in done.stdout
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def test_bench_pipeline_times_every_turn(tmp_path: Path, rasa_server: Any,
                                         database_url: str) -> None:
    figures = bench(tmp_path, rasa_server, database_url, "pipeline", "--utterances", "2",
                    "--rate", "8000")
    series = figures["series_ms"]
    assert series["voice_to_voice"]["n"] == 2
    assert series["response_ms"]["n"] == 2 and series["stt_ms"]["n"] == 2
    assert figures["figures"]["unanswered_turns"] == 0


def test_bench_sip_calls_a_worker_and_times_the_answers(tmp_path: Path, rasa_server: Any,
                                                        database_url: str) -> None:
    with worker_process(tmp_path / "worker", rasa_server.url, database_url) as worker:
        figures = bench(tmp_path, rasa_server, database_url, "sip", "--calls", "1",
                        "--turns", "2", "--target", f"sip:bot@127.0.0.1:{worker.port}")
    assert figures["series_ms"]["voice_to_voice"]["n"] == 2
    assert figures["series_ms"]["call_setup"]["n"] == 1
    assert figures["figures"]["failed_calls"] == 0
    assert figures["figures"]["unanswered_turns"] == 0


def test_bench_webrtc_starts_a_web_app_and_times_the_answers(tmp_path: Path, rasa_server: Any,
                                                             database_url: str) -> None:
    figures = bench(tmp_path, rasa_server, database_url, "webrtc", "--calls", "1",
                    "--console-load", "1",
                    SWITCHBOARD_WEB_HOST="127.0.0.1", SWITCHBOARD_WEB_PORT=str(free_port()),
                    SWITCHBOARD_WEBRTC_ICE_ADDRESSES="127.0.0.1")
    assert figures["series_ms"]["voice_to_voice"]["n"] == 2
    assert figures["series_ms"]["connect"]["n"] == 1
    assert figures["figures"]["calls_completed"] == "1 of 1"
    # the web app's tracks counted their frames; the console load was served meanwhile
    assert figures["figures"]["server_frames_sent"] > 100
    assert 0 <= figures["figures"]["server_frames_late_per_1000"] <= 1000
    assert figures["series_ms"]["console_request"]["n"] > 0
    assert figures["figures"]["console_requests_failed"] == 0


def test_bench_turn_scores_finished_and_paused_callers(tmp_path: Path) -> None:
    out = tmp_path / "turn.json"
    done = subprocess.run([sys.executable, "-m", "switchboard", "bench", "turn", "--json",
                           str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=BENCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["piper samples finished/paused"].startswith("13/")
    assert 0 <= figures["espeak >= 0.5: paused cut off %"] <= 100


def test_bench_grammar_compares_whisper_and_the_digit_grammar(tmp_path: Path) -> None:
    out = tmp_path / "grammar.json"
    done = subprocess.run([sys.executable, "-m", "switchboard", "bench", "grammar",
                           "--numbers", "2", "--json", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    for voice in ("piper", "espeak"):
        for condition in ("clean", "noisy"):
            for method in ("whisper", "grammar", "combined"):
                assert 0 <= figures[f"{voice} {condition} {method} %"] <= 100


def test_bench_soak_cycles_calls_and_samples_the_node(tmp_path: Path, rasa_server: Any,
                                                      database_url: str) -> None:
    """The smallest soak: one round of one call through a node the bench starts (on the
    session's bot); the node's resources are sampled before and after, and no call is left
    open."""
    figures = bench(tmp_path, rasa_server, database_url, "soak", "--minutes", "0.1",
                    "--concurrency", "1", "--turns", "1", **shared_dialog(rasa_server))
    numbers = figures["figures"]
    assert numbers["calls"] >= 1 and numbers["failed_calls"] == 0
    assert numbers["stuck_calls (open after the last one ended)"] == 0
    assert numbers["call rows per call"] == 1.0
    first, last = (int(n) for n in numbers["fds first round / last"].split(" / "))
    assert first > 0 and last > 0
