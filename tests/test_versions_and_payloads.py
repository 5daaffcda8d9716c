"""Version comparison and the exact Alibaba payloads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otaflash import alibaba, versions
from otaflash.client import Offer
from otaflash.errors import InputError, RuleError


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("9", "10"),
        ("1", "2"),
        ("1.9.0", "1.10.0"),
        ("1.2", "1.2.1"),
        ("1.0.rc1", "1.0"),
        ("1.0-rc1", "1.0-rc2"),
        ("v1.2", "1.3"),
        ("2.0.0", "10.0.0"),
        ("1.0.0-alpha", "1.0.0-beta"),
    ],
)
def test_versions_order(older: str, newer: str) -> None:
    assert versions.compare(older, newer) == -1
    assert versions.compare(newer, older) == 1
    assert versions.Version(older) < versions.Version(newer)


@pytest.mark.parametrize(("a", "b"), [("1.2", "1.2.0"), ("v3", "3"), ("007", "7"), ("1_0", "1.0")])
def test_versions_equal(a: str, b: str) -> None:
    assert versions.compare(a, b) == 0
    assert versions.Version(a) == versions.Version(b)
    assert hash(versions.Version(a)) == hash(versions.Version(b))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_integer_versions_compare_as_integers(a: int, b: int) -> None:
    assert versions.compare(str(a), str(b)) == (a > b) - (a < b)


@pytest.mark.parametrize("bad", ["", "1/2", "../x", "a b", "1" * 65, "x+y", ".."])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(InputError, match="invalid"):
        versions.validate_version(bad)
    with pytest.raises(InputError):
        versions.validate_product_key(bad + "/")


def test_payloads_are_exactly_alibabas() -> None:
    inform = json.loads(alibaba.inform_payload("1.0.1", msg_id="123"))
    assert inform == {"id": "123", "params": {"version": "1.0.1"}}
    inform = json.loads(alibaba.inform_payload("1.0.1", "MCU", msg_id="123"))
    assert inform == {"id": "123", "params": {"version": "1.0.1", "module": "MCU"}}
    progress = json.loads(alibaba.progress_payload(-1, "failed", "MCU", msg_id="1"))
    assert progress == {"id": "1", "params": {"step": "-1", "desc": "failed", "module": "MCU"}}
    get = json.loads(alibaba.firmware_get_payload("MCU", msg_id="9"))
    assert get == {
        "id": "9",
        "version": "1.0",
        "params": {"module": "MCU"},
        "method": "thing.ota.firmware.get",
    }
    push = json.loads(alibaba.push_payload({"size": 1}, msg_id="5"))
    assert push == {"code": "1000", "id": "5", "message": "success", "data": {"size": 1}}
    assert json.loads(alibaba.reply_payload("5", None)) == {"id": "5", "code": 200, "data": {}}
    assert alibaba.parse_topic("/sys/pk/dn/thing/ota/firmware/get") == ("get", "pk", "dn")
    assert alibaba.parse_topic("/ota/device/upgrade/pk/dn") == ("upgrade", "pk", "dn")
    assert alibaba.parse_topic("/ota/device/upgrade/pk/dn/x") is None


@pytest.mark.parametrize("spelling", ["Md5", "MD5", "md5", "SHA256", "Sha256", "sha-256"])
def test_sign_method_is_case_insensitive(spelling: str) -> None:
    method = alibaba.sign_method_name(spelling)
    sign = "a" * (32 if method == "md5" else 64)
    data = {"size": 5, "version": "2", "url": "http://x/y", "signMethod": spelling, "sign": sign}
    offer = Offer.from_data(data, 2)
    assert offer.sign_method == method
    assert (offer.md5 if method == "md5" else offer.sha256) == sign
    assert offer.source == 2
    assert not offer.forced


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signMethod": "crc32"}, "unknown signMethod"),
        ({"sign": "abc"}, "not a md5 hex digest"),
        ({"size": -1}, "negative"),
        ({"version": "../1"}, "invalid version"),
        ({"url": None, "size": None}, "size"),
    ],
)
def test_unusable_offers_are_refused(change: dict[str, object], message: str) -> None:
    data = {"size": 5, "version": "2", "url": "http://x", "signMethod": "Md5", "sign": "a" * 32}
    data.update(change)
    with pytest.raises(RuleError, match=message):
        Offer.from_data({k: v for k, v in data.items() if v is not None}, 3)
