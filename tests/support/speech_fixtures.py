"""Pytest plugin: the real speech engines, loaded once for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from speech.service.protocol import Address
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from switchboard.base.children import ChildProcess
from switchboard.base.settings import Settings
from switchboard.node import speech_server_process

SERVERS_VARIABLE = "SWITCHBOARD_SPEECH_SERVERS"


@pytest.fixture(scope="session")
def stt() -> Iterator[WhisperSTT]:
    """Whisper tiny.en on the CPU, warmed up."""
    engine = WhisperSTT(model="tiny.en", device="cpu")
    engine.warm_up()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tts() -> Iterator[PiperTTS]:
    """The Piper voice en_US-joe-medium on the CPU, warmed up."""
    engine = PiperTTS(voice="en_US-joe-medium", device="cpu")
    engine.warm_up()
    yield engine
    engine.close()


@dataclass(frozen=True)
class SpeechServer:
    address: str
    process: ChildProcess


def speech_server_child(address: str, data_dir: Path, name: str) -> ChildProcess:
    """``switchboard speech-server`` on ``address`` with CPU models, as a node starts it
    (its log: ``data_dir/logs/NAME.log``)."""
    settings = Settings(_env_file=None, data_dir=data_dir,  # type: ignore[call-arg]
                        stt_device="cpu", tts_device="cpu")
    return speech_server_process(settings, Address.parse(address), name)


@pytest.fixture(scope="session")
def speech_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechServer]:
    """One speech server for the session's SIP workers, web apps and commands: it is
    named in ``SWITCHBOARD_SPEECH_SERVERS`` of this process, so every child started with
    this environment uses it instead of starting its own."""
    folder = tmp_path_factory.mktemp("speech")
    address = f"ipc://{folder / 'speech.sock'}"
    before = os.environ.get(SERVERS_VARIABLE)
    with speech_server_child(address, folder, "speech-server") as child:
        os.environ[SERVERS_VARIABLE] = address
        try:
            yield SpeechServer(address, child)
        finally:
            if before is None:
                os.environ.pop(SERVERS_VARIABLE, None)
            else:
                os.environ[SERVERS_VARIABLE] = before


MODEL_LIBRARIES = ("ctranslate2", "espeakbridge")
"""Shared libraries that Whisper (CTranslate2) and Piper (its espeak bridge) map."""


def speech_models_mapped(pid: int) -> list[str]:
    """The Whisper or Piper libraries process ``pid`` has mapped (none for a client)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if any(name in line for name in MODEL_LIBRARIES)})
