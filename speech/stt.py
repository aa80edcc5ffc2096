"""Speech to text: Whisper through faster-whisper (CTranslate2), local model files only."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ctranslate2.models import WhisperGenerationResult
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from speech.config import WHISPER_TINY_EN, SttConfig
from speech.inference import InferenceQueue
from speech.models import pick_compute_type, pick_device, resolve_whisper_model
from switchboard.conversation.audio import check_pcm, int16_to_float32, resample
from switchboard.conversation.engines import Priority, Transcript

logger = logging.getLogger(__name__)

WHISPER_RATE = 16000
"""Whisper's input rate; other rates are resampled first."""

NO_SPEECH_PROB = 0.6
"""A segment this likely to hold no speech..."""
MIN_AVG_LOGPROB = -1.0
"""...and decoded with less confidence than this is dropped as a hallucination."""
MAX_COMPRESSION_RATIO = 2.4
"""Segments more repetitive than this (gzip ratio) are dropped as hallucinations."""
SILENT_PEAK = 64
"""Audio whose peak stays below this (about -54 dBFS) is not sent to the model."""


GPU_BATCH = 8
"""Utterances one pass of the model takes on a GPU (``batch_size`` 0 = this on CUDA, 1 on
the CPU)."""
GATHER_MS = 2.0
"""How long a short batch waits for stragglers once the GPU is free."""


def _check(pcm: np.ndarray, sample_rate: int) -> None:
    check_pcm(pcm)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")


class WhisperSTT:
    """A Whisper model; transcriptions run one at a time on a thread owned by the instance."""

    def __init__(
        self,
        model: str = WHISPER_TINY_EN,
        device: str = "auto",
        compute_type: str = "auto",
        language: str = "en",
        beam_size: int = 1,
        cpu_threads: int = 2,
        cache_dir: Path = SttConfig.cache_dir,
        batch_size: int = 0,
    ) -> None:
        path = resolve_whisper_model(model, cache_dir)
        self.language = language
        self.beam_size = beam_size
        self.device = pick_device(device)
        self._model = self._load(path, compute_type, cpu_threads)
        self.batch_size = batch_size or (GPU_BATCH if self.device == "cuda" else 1)
        self._queue = InferenceQueue(
            "whisper-stt", batch=self._decode_batch if self.batch_size > 1 else None,
            max_batch=self.batch_size, gather_ms=GATHER_MS)
        self._tokenizer = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual,
                                    task="transcribe", language=language)

    @classmethod
    def from_config(cls, config: SttConfig) -> WhisperSTT:
        """The model ``config`` names, loaded where it says."""
        return cls(
            model=config.model,
            device=config.device,
            compute_type=config.compute_type,
            language=config.language,
            beam_size=config.beam_size,
            cpu_threads=config.cpu_threads,
            cache_dir=config.cache_dir,
            batch_size=config.batch_size,
        )

    def _load(self, path: Path, compute_type: str, cpu_threads: int) -> WhisperModel:
        if self.device == "cuda":
            try:
                return WhisperModel(
                    str(path),
                    device="cuda",
                    compute_type=pick_compute_type(compute_type, "cuda"),
                    local_files_only=True,
                )
            except (RuntimeError, ValueError):
                logger.warning("loading Whisper model %s on CUDA failed; using the CPU", path)
                self.device = "cpu"
        return WhisperModel(
            str(path),
            device="cpu",
            compute_type=pick_compute_type(compute_type, "cpu"),
            cpu_threads=cpu_threads,
            local_files_only=True,
        )

    def warm_up(self) -> None:
        """Run the model (and faster-whisper's VAD) once so the first call is not slow."""
        noise = np.random.default_rng(0).normal(0.0, 0.01, WHISPER_RATE).astype(np.float32)
        for vad_filter in (False, True):
            self._decode(noise, vad_filter=vad_filter)

    def transcribe_sync(self, pcm: np.ndarray, sample_rate: int) -> Transcript:
        """Transcribe ``pcm`` (1-D int16 at ``sample_rate``) on the calling thread."""
        _check(pcm, sample_rate)
        started = time.perf_counter()
        audio_ms = len(pcm) * 1000 // sample_rate
        if pcm.size == 0 or int(np.abs(pcm).max()) < SILENT_PEAK:
            text, confidence, no_speech_prob, language = "", 0.0, 1.0, self.language
        else:
            audio = int16_to_float32(resample(pcm, sample_rate, WHISPER_RATE))
            text, confidence, no_speech_prob, language = self._decode(audio, vad_filter=True)
        return Transcript(
            text=text,
            confidence=confidence,
            no_speech_prob=no_speech_prob,
            language=language,
            audio_ms=audio_ms,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    async def transcribe(
        self, pcm: np.ndarray, sample_rate: int, *, priority: Priority = Priority.FINAL,
        deadline: float | None = None, expect: str | None = None,
    ) -> Transcript:
        """Transcribe ``pcm`` on the instance's worker thread, best priority first; see
        :class:`~switchboard.conversation.engines.SpeechToText`. ``expect`` is not used
        here: the speech server pairs Whisper with a grammar for it."""
        if self.batch_size > 1:
            _check(pcm, sample_rate)
            timed = await self._queue.run_item((pcm, sample_rate), priority=priority,
                                               deadline=deadline)
        else:
            timed = await self._queue.run(lambda: self.transcribe_sync(pcm, sample_rate),
                                          priority=priority, deadline=deadline)
        return replace(timed.value, queue_ms=round(timed.queue_ms, 1))

    def health(self) -> str | None:
        return None if self._queue.alive else "the Whisper worker thread is not running"

    def _decode(self, audio: np.ndarray, *, vad_filter: bool) -> tuple[str, float, float, str]:
        segments, info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            vad_filter=vad_filter,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts: list[str] = []
        logprob_sum = 0.0
        tokens = 0
        no_speech_prob = 1.0
        for segment in segments:
            no_speech_prob = min(no_speech_prob, segment.no_speech_prob)
            if (
                segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < MIN_AVG_LOGPROB
            ) or segment.compression_ratio > MAX_COMPRESSION_RATIO:
                logger.debug("dropped a likely hallucination: %r", segment.text)
                continue
            texts.append(segment.text.strip())
            logprob_sum += segment.avg_logprob * len(segment.tokens)
            tokens += len(segment.tokens)
        confidence = math.exp(logprob_sum / tokens) if tokens else 0.0
        return " ".join(t for t in texts if t), confidence, no_speech_prob, info.language

    def word_ends(self, pcm: np.ndarray, sample_rate: int) -> list[float]:
        """When each word of ``pcm`` ends, in seconds (Whisper's word timestamps; for
        benches that cut recordings between words)."""
        _check(pcm, sample_rate)
        audio = int16_to_float32(resample(pcm, sample_rate, WHISPER_RATE))
        segments, _ = self._model.transcribe(audio, language=self.language, beam_size=1,
                                             word_timestamps=True,
                                             condition_on_previous_text=False)
        return [word.end for segment in segments for word in segment.words or []]

    def _decode_batch(self, items: list[tuple[np.ndarray, int]]) -> list[Transcript]:
        """Several utterances in one pass of the model: the GPU path (on a CPU the encoder
        pads every utterance to 30 s anyway, so a batch costs as much as its parts). No
        VAD filter here (the endpointer cut the audio); the same hallucination filters."""
        started = time.perf_counter()
        empty = {index for index, (pcm, _) in enumerate(items)
                 if pcm.size == 0 or int(np.abs(pcm).max()) < SILENT_PEAK}
        audible = [(index, int16_to_float32(resample(pcm, rate, WHISPER_RATE)))
                   for index, (pcm, rate) in enumerate(items) if index not in empty]
        decoded: dict[int, tuple[str, float, float]] = {}
        if audible:
            extract = self._model.feature_extractor
            features = np.stack([pad_or_trim(extract(audio)[:, :-1]) for _, audio in audible])
            prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
            outputs = self._model.model.generate(
                self._model.encode(features), [prompt] * len(audible),
                beam_size=self.beam_size, max_length=self._model.max_length,
                return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                suppress_tokens=get_suppressed_tokens(self._tokenizer, [-1]))
            for (index, _), output in zip(audible, outputs, strict=True):
                decoded[index] = self._kept(output)
        elapsed = (time.perf_counter() - started) * 1000
        transcripts = []
        for index, (pcm, rate) in enumerate(items):
            text, confidence, no_speech_prob = decoded.get(index, ("", 0.0, 1.0))
            transcripts.append(Transcript(
                text=text, confidence=confidence, no_speech_prob=no_speech_prob,
                language=self.language, audio_ms=len(pcm) * 1000 // rate, elapsed_ms=elapsed))
        return transcripts

    def _kept(self, output: WhisperGenerationResult) -> tuple[str, float, float]:
        """Text, confidence and no-speech probability of one decoded utterance; no text
        when the filters take it for a hallucination."""
        tokens = [t for t in output.sequences_ids[0] if t < self._tokenizer.eot]
        avg_logprob = output.scores[0] * len(tokens) / (len(tokens) + 1)
        text = self._tokenizer.decode(tokens).strip()
        if (output.no_speech_prob > NO_SPEECH_PROB and avg_logprob < MIN_AVG_LOGPROB) or \
                get_compression_ratio(text) > MAX_COMPRESSION_RATIO or not tokens:
            return "", 0.0, output.no_speech_prob
        return text, math.exp(avg_logprob), output.no_speech_prob

    def close(self) -> None:
        """Let the running transcription finish, drop queued ones, stop the worker thread."""
        self._queue.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
