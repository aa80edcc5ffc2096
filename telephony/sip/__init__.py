"""SIP media workers: PJSUA2 calls turned into 20 ms PCM frames for the conversation pipeline.

One worker process holds one PJSUA2 endpoint (at most four calls), one asyncio loop and one
node. ``endpoint.py`` owns the thread that drives PJSIP, ``call.py`` the PJSUA2 call and
account objects, ``media_port.py`` the bridge between PJSIP's media clock and asyncio,
``worker.py`` the calls' lifecycle on the asyncio side.
"""

RTP_PORTS_PER_WORKER = 100
"""RTP ports one worker uses from its SWITCHBOARD_SIP_RTP_PORT; workers are this far apart."""
