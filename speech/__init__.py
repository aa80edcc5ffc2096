"""Speech: audio helpers, voice activity detection and turn ends, speech to text, text to speech.

This package knows nothing about calls or dialogs: it turns PCM into events and text, and
text into PCM.
"""
