"""The pooled speech service: ``switchboard speech-server`` hosts Whisper and Piper once
per machine (or per GPU); media processes reach it through :class:`SpeechPool`."""
