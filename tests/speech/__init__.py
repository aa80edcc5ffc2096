"""Tests of the speech package: audio, models, VAD, STT and TTS."""
