"""The conversation core: the per-call pipeline, its collaborators, the media and engine
protocols it runs on, and the records it produces. Knows no transport and no engine
implementation; transports adapt media to ``media.py``, engines implement ``engines.py``."""
