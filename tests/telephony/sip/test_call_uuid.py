"""The call id a SIP INVITE brings (``X-Call-UUID``) is the call's id; any other gets one."""

import uuid

from telephony.sip.endpoint import call_uuid

INVITE = (
    "INVITE sip:bot@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
    "{header}"
    "Content-Type: application/sdp\r\n\r\n"
    "v=0\r\n{body}"
)


def test_a_uuid_header_names_the_call_in_either_spelling() -> None:
    given = uuid.uuid4()
    for value in (str(given), given.hex, str(given).upper()):
        message = INVITE.format(header=f"X-Call-UUID: {value}\r\n", body="")
        assert call_uuid(message) == given.hex
    assert call_uuid(INVITE.format(header=f"x-call-uuid:{given}\r\n", body="")) == given.hex


def test_without_a_valid_header_the_call_gets_a_new_id() -> None:
    given = uuid.uuid4()
    for message in (
        INVITE.format(header="", body=""),
        INVITE.format(header="X-Call-UUID: not-a-uuid\r\n", body=""),
        INVITE.format(header=f"X-Call-UUID: {given.hex}00\r\n", body=""),  # too long
        INVITE.format(header="", body=f"X-Call-UUID: {given}\r\n"),  # in the body
    ):
        made = call_uuid(message)
        assert made != given.hex and len(made) == 32 and int(made, 16) >= 0
    assert call_uuid(INVITE.format(header="", body="")) != call_uuid(
        INVITE.format(header="", body=""))
