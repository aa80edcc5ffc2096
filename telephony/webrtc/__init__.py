"""The WebRTC gateway: browser calls over aiortc, answered by the conversation pipeline.

``gateway.py`` answers HTTP offers and runs one pipeline per peer connection; ``media.py``
turns the browser's audio track into clocked 20 ms frames and the pipeline's frames into a
paced outbound track; ``ice.py`` decides which candidates and servers ICE uses.
"""
