"""SIPp caller scenarios, written at test time with the caller's audio file filled in."""

from __future__ import annotations

from pathlib import Path

_FROM = "From: sipp <sip:sipp[local_port]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]"
"""The caller's From; the user part holds SIPp's port so a test can find its call."""

_DIALOG = _FROM + """
To: <sip:bot@[remote_ip]:[remote_port]>;tag=[$totag]
Call-ID: [call_id]"""

_INVITE = """
  <send retrans="500"><![CDATA[
INVITE sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp[local_port]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:sipp@[local_ip]:[local_port]
Max-Forwards: 70
<extra headers>Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
"""

_ANSWERED = """
  <recv response="200" rtd="true" rrs="true">
    <action><ereg regexp=";tag=([^;> \\r\\n]+)" search_in="hdr" header="To:"
                  assign_to="junk,totag"/></action>
  </recv>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
""" + _DIALOG + """
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
  ]]></send>
  <nop><action><exec rtp_stream="{wav},1,0"/></action></nop>
  <Reference variables="junk"/>
"""

_OK = """
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Length: 0
  ]]></send>
"""

_BYE = """
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
""" + _DIALOG + """
CSeq: 3 BYE
Max-Forwards: 70
Content-Length: 0
  ]]></send>
  <recv response="200"/>
"""

_ACK_REFUSAL = """  <send><![CDATA[
ACK sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
From: sipp <sip:sipp[local_port]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
  ]]></send>
"""
"""The ACK of a final error answer to the INVITE."""

_BODIES = {
    # Talk (the WAV), then hang up after ``hold_ms``.
    "caller_hangs_up": _ANSWERED + '  <pause milliseconds="{hold_ms}"/>\n' + _BYE,
    # Talk, then wait for the bot's BYE.
    "bot_hangs_up": _ANSWERED + '  <recv request="BYE" timeout="{wait_ms}"/>\n' + _OK,
    # Talk, accept the REFER, report the transfer done, then take the BYE.
    "transferred": _ANSWERED + """
  <recv request="REFER" timeout="{wait_ms}">
    <action><ereg regexp="([0-9]+)" search_in="hdr" header="CSeq:" assign_to="refercseq"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 202 Accepted
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port]>
Content-Length: 0
  ]]></send>
  <send retrans="500"><![CDATA[
NOTIFY [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
""" + _DIALOG + """
CSeq: 2 NOTIFY
Max-Forwards: 70
Contact: sip:sipp@[local_ip]:[local_port]
Event: refer;id=[$refercseq]
Subscription-State: terminated;reason=noresource
Content-Type: message/sipfrag
Content-Length: [len]

SIP/2.0 200 OK
  ]]></send>
  <recv response="200"/>
  <recv request="BYE" timeout="{wait_ms}"/>
""" + _OK,
    # Expect 486 Busy Here.
    "busy": '\n  <recv response="486"/>\n' + _ACK_REFUSAL,
    # Expect 403 Forbidden (a source outside SWITCHBOARD_SIP_ALLOWED_NETWORKS).
    "forbidden": '\n  <recv response="403"/>\n' + _ACK_REFUSAL,
    # A flood's call: held for hold_ms when answered; a 503 or 486 is acknowledged.
    "flood": """
  <recv response="503" optional="true" next="refused"/>
  <recv response="486" optional="true" next="refused"/>
""" + _ANSWERED.replace(
        '  <nop><action><exec rtp_stream="{wav},1,0"/></action></nop>\n', ""
    ) + '  <pause milliseconds="{hold_ms}"/>\n' + _BYE + """
  <pause milliseconds="0" next="done"/>
  <label id="refused"/>
""" + _ACK_REFUSAL + """  <label id="done"/>
""",
    # Answer and send no RTP at all, never hang up; wait for the bot's BYE.
    "silent_until_bye": _ANSWERED.replace(
        '  <nop><action><exec rtp_stream="{wav},1,0"/></action></nop>\n', ""
    ) + '  <recv request="BYE" timeout="{wait_ms}"/>\n' + _OK,
}


def write_scenario(path: Path, kind: str, *, wav: Path | None = None, hold_ms: int = 0,
                   wait_ms: int = 30000, invite_headers: tuple[str, ...] = ()) -> Path:
    """Write the SIPp scenario ``kind`` (see ``_BODIES``) to ``path``; the INVITE carries
    ``invite_headers`` ("Name: value") too."""
    body = _BODIES[kind].format(wav=wav, hold_ms=hold_ms, wait_ms=wait_ms)
    invite = _INVITE.replace("<extra headers>", "".join(f"{h}\n" for h in invite_headers))
    path.write_text(
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        f'<scenario name="{kind}">{invite}{body}</scenario>\n'
    )
    return path
