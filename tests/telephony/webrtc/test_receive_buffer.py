"""What a WebRTC leg holds of the audio it receives before the call gets it."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection

from telephony.webrtc.media import AIORTC_AUDIO_BUFFER, hold_received_audio


async def test_agent_legs_hold_one_received_frame_not_four() -> None:
    """aiortc's receivers hold four frames (80 ms); the agents' legs hold one. The buffer
    is aiortc's private one: this fails when an aiortc upgrade moves it."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        [audio, video] = pc.getTransceivers()
        assert getattr(audio.receiver, AIORTC_AUDIO_BUFFER)._prefetch == 4
        assert hold_received_audio(pc, 1)
        held = getattr(audio.receiver, AIORTC_AUDIO_BUFFER)
        assert (held._prefetch, held.capacity) == (1, 4)
        assert getattr(video.receiver, AIORTC_AUDIO_BUFFER)._is_video  # left alone
    finally:
        await pc.close()
