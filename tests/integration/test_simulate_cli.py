"""`switchboard simulate` as a user runs it: a subprocess, files in, files out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from tests.support.audio_tools import normalize_digits, piper_speech, silence

SWITCHBOARD = [sys.executable, "-m", "switchboard"]


def simulate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWITCHBOARD, "simulate", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.txt", b"this is not audio at all\n"), ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")],
)
def test_a_non_audio_file_is_a_one_line_error_with_exit_code_2(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    done = simulate(str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and "expected" in lines[0]


def test_a_missing_file_is_an_error_with_exit_code_2(tmp_path: Path) -> None:
    done = simulate(str(tmp_path / "nowhere.wav"))
    assert done.returncode == 2
    assert "nowhere.wav" in done.stderr


def test_an_empty_wav_is_an_error_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    soundfile.write(str(path), np.zeros(0, dtype=np.int16), 16000)
    done = simulate(str(path))
    assert done.returncode == 2 and "no samples" in done.stderr


@pytest.mark.integration
@pytest.mark.usefixtures("speech_server")
def test_stereo_44k_caller_is_converted_and_the_call_logged(
    tmp_path: Path, tts: PiperTTS, stt: WhisperSTT, rasa_server: object, database_url: str,
    artifacts: Path,
) -> None:
    rate = 44100
    speech = piper_speech(tts, "I'd like to check my order status.", rate)
    mono = np.concatenate([silence(7000, rate), speech, silence(6000, rate),
                           piper_speech(tts, "four eight two one three", rate),
                           silence(1000, rate)])
    stereo = np.stack([mono, (mono * 0.5).astype(np.int16)], axis=1)
    caller = tmp_path / "caller-stereo-44k.wav"
    soundfile.write(str(caller), stereo, rate, subtype="PCM_16")
    heard, turns = artifacts / "cli-heard.wav", artifacts / "cli-turns.json"

    done = simulate(
        str(caller), "--fast", "--rate", "8000", "--reply-wav", str(heard), "--json", str(turns),
        "--rasa-url", rasa_server.url,  # type: ignore[attr-defined]
        env={"SWITCHBOARD_DATABASE_URL": database_url},
    )
    assert done.returncode == 0, done.stderr
    assert "caller: " in done.stdout and "response_ms" in done.stdout

    log = json.loads(turns.read_text())
    said = [t["text"].lower() for t in log["turns"] if t["speaker"] == "caller"]
    assert any("order status" in s for s in said)
    pcm, heard_rate = soundfile.read(str(heard), dtype="int16")
    assert heard_rate == 8000 and pcm.ndim == 1
    assert "48213" in normalize_digits(stt.transcribe_sync(pcm, heard_rate).text)
