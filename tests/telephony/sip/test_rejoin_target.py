"""What a node needs to take a SIP dialog back from the other party (RFC 3891), read off
the dialog's 200 OK; and who supports it."""

from telephony.sip.call import rejoin_target, sip_headers, supports_replaces

OK_TO_INVITE = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
    "Call-ID: 14mRlHqjS3FCTrARaIp0C0qDz\r\n"
    "From: <sip:caller@127.0.0.1>;tag=caller-tag-1\r\n"
    "To: <sip:bot@127.0.0.1>;tag=bot-tag-2\r\n"
    "CSeq: 6375 INVITE\r\n"
    "Supported: replaces, 100rel, timer\r\n"
    "Content-Type: application/sdp\r\n\r\n"
    "v=0\r\nFrom: <sip:body@x>;tag=in-the-body\r\n"
)


def test_an_answered_inbound_call_is_replaced_by_the_callers_own_tags() -> None:
    target = rejoin_target(OK_TO_INVITE, inbound=True,
                           contact="<sip:caller@127.0.0.1:25070;ob>")
    assert target == {
        "uri": "sip:caller@127.0.0.1:25070;ob",
        "replaces": "14mRlHqjS3FCTrARaIp0C0qDz;to-tag=caller-tag-1;from-tag=bot-tag-2",
    }


def test_an_outbound_call_names_the_callee_as_the_party() -> None:
    target = rejoin_target(OK_TO_INVITE, inbound=False, contact="sip:bot@127.0.0.1:5070")
    assert target is not None
    assert target["replaces"] == "14mRlHqjS3FCTrARaIp0C0qDz;to-tag=bot-tag-2;from-tag=caller-tag-1"


def test_compact_headers_are_read_and_the_body_is_not() -> None:
    compact = ("SIP/2.0 200 OK\r\ni: abc@host\r\nf: sip:a@h;tag=A\r\nt: <sip:b@h>;TAG=B\r\n"
               "k: timer,replaces\r\n\r\n")
    assert sip_headers(compact) == {"call-id": "abc@host", "from": "sip:a@h;tag=A",
                                    "to": "<sip:b@h>;TAG=B", "supported": "timer,replaces"}
    assert rejoin_target(compact, inbound=True, contact="sip:a@h") == {
        "uri": "sip:a@h", "replaces": "abc@host;to-tag=A;from-tag=B"}
    assert supports_replaces(compact)
    assert sip_headers(OK_TO_INVITE)["from"] == "<sip:caller@127.0.0.1>;tag=caller-tag-1"


def test_without_both_tags_or_a_contact_there_is_no_target() -> None:
    no_to_tag = OK_TO_INVITE.replace(";tag=bot-tag-2", "")
    assert rejoin_target(no_to_tag, inbound=True, contact="sip:caller@127.0.0.1") is None
    assert rejoin_target(OK_TO_INVITE, inbound=True, contact="") is None
    assert rejoin_target("garbage\r\n\r\n", inbound=True, contact="sip:x@y") is None


def test_supported_must_list_replaces_itself() -> None:
    assert supports_replaces(OK_TO_INVITE)
    assert not supports_replaces(OK_TO_INVITE.replace("replaces, ", ""))
    assert not supports_replaces(OK_TO_INVITE.replace("replaces", "replaces-not"))
    assert not supports_replaces("INVITE sip:x SIP/2.0\r\n\r\n")
