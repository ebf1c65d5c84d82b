"""cores.qris: the EMV/QRIS payload the sandbox hands out as `qr_string`."""

from __future__ import annotations

import pytest

from cores import qris


def payload(**changes: object) -> str:
    args: dict = {
        "merchant_name": "DRINK MACHINE",
        "merchant_city": "JAKARTA",
        "merchant_id": "G000000001",
        "reference": "A0123456789",
        "amount": 7000,
    }
    args.update(changes)
    return qris.build(**args)


def test_crc16_is_ccitt_false_on_the_standard_check_string():
    assert qris.crc16("123456789") == "29B1"
    assert qris.crc16("") == "FFFF"


def test_crc16_is_four_uppercase_hex_digits():
    value = qris.crc16("000201010212")
    assert len(value) == 4
    assert value == value.upper()
    int(value, 16)


def test_built_payload_carries_every_qris_field_in_order():
    fields = qris.parse(payload())
    assert list(fields) == ["00", "01", "26", "52", "53", "54", "58", "59", "60", "62", "63"]
    assert fields["00"] == "01"
    assert fields["01"] == qris.DYNAMIC
    assert fields["53"] == "360"
    assert fields["54"] == "7000"
    assert fields["58"] == "ID"
    assert fields["59"] == "DRINK MACHINE"
    assert fields["60"] == "JAKARTA"


def test_merchant_account_template_names_the_acquirer_guid_and_merchant():
    account = qris.parse(qris.parse(payload())["26"])
    assert account["00"] == "COM.GO-JEK.WWW"
    assert account["02"] == "G000000001"
    assert account["01"].startswith("93600914")
    shopee = qris.parse(qris.parse(payload(acquirer="airpay shopee"))["26"])
    assert shopee["00"] == "ID.CO.SHOPEE.WWW"


def test_additional_data_carries_the_reference():
    assert qris.parse(qris.parse(payload())["62"])["05"] == "A0123456789"


def test_crc_field_is_valid_and_uppercase():
    text = payload()
    assert text[-8:-4] == "6304"
    assert text[-4:] == qris.crc16(text[:-4])
    assert text[-4:] == text[-4:].upper()
    assert qris.is_valid(text)


def test_static_payload_has_no_amount():
    fields = qris.parse(payload(amount=None))
    assert fields["01"] == qris.STATIC
    assert "54" not in fields


def test_different_references_give_different_payloads():
    assert payload(reference="A1") != payload(reference="A2")


@pytest.mark.parametrize(
    "broken",
    [
        lambda p: p[:-4] + ("0000" if p[-4:] != "0000" else "1111"),
        lambda p: p.replace("DRINK MACHINE", "DRINK MACHINF"),
        lambda p: p[:-1],
        lambda p: p + "00",
        lambda p: "X" + p[1:],
        lambda p: "",
    ],
    ids=["wrong-crc", "tampered-name", "truncated", "trailing-garbage", "bad-start", "empty"],
)
def test_is_valid_rejects_tampered_or_truncated_payloads(broken):
    assert not qris.is_valid(broken(payload()))


def test_is_valid_rejects_a_payload_without_merchant_account():
    body = (
        qris.tlv("00", "01")
        + qris.tlv("52", "5814")
        + qris.tlv("53", "360")
        + qris.tlv("58", "ID")
        + qris.tlv("59", "X")
        + qris.tlv("60", "Y")
        + "6304"
    )
    assert not qris.is_valid(body + qris.crc16(body))


def test_is_valid_rejects_non_strings():
    assert not qris.is_valid(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "00", "0005ab", "AB02xx", "0002xx0002yy"])
def test_parse_raises_on_malformed_tlv(text):
    with pytest.raises(ValueError):
        qris.parse(text)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": True},
        {"reference": "R" * 26},
        {"acquirer": "bank"},
        {"merchant_name": "Caf\u00e9"},
    ],
    ids=["zero", "negative", "bool", "long-reference", "acquirer", "non-ascii"],
)
def test_build_refuses_bad_values(changes):
    with pytest.raises(ValueError):
        payload(**changes)


def test_tlv_refuses_values_longer_than_99():
    with pytest.raises(ValueError):
        qris.tlv("59", "x" * 100)
