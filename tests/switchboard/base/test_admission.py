"""Per-source admission of new calls (the SIP workers' and the softphone's flood limits)."""

from __future__ import annotations

import re

import pytest

from switchboard.base.admission import AdmissionSettingError, SourceAdmission, parse_networks


def admission(rate: str = "", concurrent: int = 0, trusted: str = "") -> SourceAdmission:
    return SourceAdmission(rate=rate, concurrent=concurrent,
                           trusted=parse_networks(trusted, "TRUSTED"), rate_setting="RATE")


def test_concurrent_calls_are_counted_per_host_not_per_port() -> None:
    limits = admission(concurrent=2)
    assert limits.admit("10.0.0.5:5060") is None
    assert limits.admit("10.0.0.5:5062") is None
    refusal = limits.admit("10.0.0.5:5064")
    assert refusal is not None and "2 calls from 10.0.0.5" in refusal.reason
    assert limits.admit("10.0.0.6:5060") is None  # another caller is not held back
    limits.release("10.0.0.5:5060")
    assert limits.held("10.0.0.5") == 1
    assert limits.admit("10.0.0.5:5066") is None


def test_new_calls_are_limited_in_a_moving_window() -> None:
    limits = admission(rate="3/minute")
    for _ in range(3):
        assert limits.admit("[2001:db8::1]:5060") is None
        limits.release("[2001:db8::1]:5060")
    refusal = limits.admit("[2001:db8::1]:5061")
    assert refusal is not None and "new calls from 2001:db8::1" in refusal.reason
    assert 1 <= refusal.retry_after_s <= 60
    assert limits.held("2001:db8::1") == 0  # a refused call holds nothing
    assert limits.admit("192.0.2.1") is None


def test_trusted_networks_pass_and_are_not_counted() -> None:
    limits = admission(rate="1/minute", concurrent=1, trusted="192.0.2.0/24, ::1")
    for _ in range(5):
        assert limits.admit("192.0.2.9:5060") is None
        assert limits.admit("[::1]:5060") is None
    assert limits.held("192.0.2.9") == 0
    limits.release("192.0.2.9:5060")  # nothing to release, nothing goes negative
    assert limits.admit("198.51.100.1") is None
    assert limits.admit("198.51.100.1") is not None


def test_unreadable_settings_name_the_setting() -> None:
    with pytest.raises(AdmissionSettingError, match="RATE='lots'"):
        admission(rate="lots")
    with pytest.raises(AdmissionSettingError, match=re.escape("TRUSTED: '10.0.0.300'")):
        parse_networks("10.0.0.0/8, 10.0.0.300", "TRUSTED")
