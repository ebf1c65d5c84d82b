"""QRIS payloads: the EMV merchant-presented QR string that a Midtrans QRIS charge returns.

A payload is a run of TLV fields: a 2-digit tag, a 2-digit length (in characters) and the
value. Templates (26 merchant account, 62 additional data) hold TLV fields of their own. The
last field, 63, is the CRC-16/CCITT-FALSE of everything before its value, "6304" included,
as 4 uppercase hex digits (EMV QRCPS Merchant-Presented Mode, section 4.7; QRIS follows it).

The local sandbox builds these; the kiosk renders `qr_string` as it comes, so tests use
`is_valid` to check what a charge answers.
"""

from __future__ import annotations

import re

#: Tags this module writes at the top level.
PAYLOAD_FORMAT = "00"
POINT_OF_INITIATION = "01"
MERCHANT_ACCOUNT = "26"
MERCHANT_CATEGORY = "52"
CURRENCY = "53"
AMOUNT = "54"
COUNTRY = "58"
MERCHANT_NAME = "59"
MERCHANT_CITY = "60"
ADDITIONAL_DATA = "62"
CRC = "63"

#: Point of initiation: 11 static (the payer types the amount), 12 dynamic (amount included).
STATIC = "11"
DYNAMIC = "12"
#: ISO 4217 numeric code of the rupiah.
IDR = "360"

#: Globally unique identifiers of the acquirers a Midtrans QRIS charge may use (`qris.acquirer`).
GUIDS = {"gopay": "COM.GO-JEK.WWW", "airpay shopee": "ID.CO.SHOPEE.WWW"}
#: National merchant PAN prefixes (NNS) of those acquirers.
PAN_PREFIXES = {"gopay": "93600914", "airpay shopee": "93600918"}

_REQUIRED = (PAYLOAD_FORMAT, MERCHANT_CATEGORY, CURRENCY, COUNTRY, MERCHANT_NAME, MERCHANT_CITY)
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def crc16(data: str) -> str:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection) of `data` as 4 hex digits."""
    crc = 0xFFFF
    for byte in data.encode("utf-8"):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return f"{crc:04X}"


def tlv(tag: str, value: str) -> str:
    """One field: `tlv("58", "ID")` -> "5802ID". Values are printable ASCII, at most 99 chars."""
    if not re.fullmatch(r"\d\d", tag):
        raise ValueError(f"tag {tag!r} is not two digits")
    if not value or len(value) > 99:
        raise ValueError(f"tag {tag}: value must be 1 to 99 characters, got {len(value)}")
    if not _PRINTABLE.match(value):
        raise ValueError(f"tag {tag}: value must be printable ASCII")
    return f"{tag}{len(value):02d}{value}"


def build(
    *,
    merchant_name: str,
    merchant_city: str,
    merchant_id: str,
    reference: str,
    amount: int | None = None,
    acquirer: str = "gopay",
    merchant_category: str = "5814",
    terminal: str = "A01",
) -> str:
    """A QRIS payload for one payment of `amount` rupiah (None: a static QR without amount).

    `reference` (at most 25 characters) goes into tag 62 as the reference label, so that each
    transaction's QR differs; `merchant_id` into the merchant account template (tag 26).
    """
    if acquirer not in GUIDS:
        raise ValueError(f"unknown acquirer {acquirer!r}")
    if amount is not None and (
        isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0
    ):
        raise ValueError("amount must be a whole number of rupiah > 0")
    if len(reference) > 25 or len(terminal) > 25:
        raise ValueError("reference and terminal are at most 25 characters")
    digits = "".join(c for c in merchant_id if c.isdigit()) or "0"
    pan = PAN_PREFIXES[acquirer] + digits[-10:].rjust(10, "0")
    account = (
        tlv("00", GUIDS[acquirer]) + tlv("01", pan) + tlv("02", merchant_id) + tlv("03", "UMI")
    )
    fields = [
        tlv(PAYLOAD_FORMAT, "01"),
        tlv(POINT_OF_INITIATION, STATIC if amount is None else DYNAMIC),
        tlv(MERCHANT_ACCOUNT, account),
        tlv(MERCHANT_CATEGORY, merchant_category),
        tlv(CURRENCY, IDR),
    ]
    if amount is not None:
        fields.append(tlv(AMOUNT, str(amount)))
    fields += [
        tlv(COUNTRY, "ID"),
        tlv(MERCHANT_NAME, merchant_name[:25]),
        tlv(MERCHANT_CITY, merchant_city[:15]),
        tlv(ADDITIONAL_DATA, tlv("05", reference) + tlv("07", terminal)),
    ]
    body = "".join(fields) + CRC + "04"
    return body + crc16(body)


def parse(payload: str) -> dict[str, str]:
    """The fields of a TLV string by tag. Works on a payload and on a template's value.

    Raises ValueError on a truncated field, a non-numeric tag or length, or a repeated tag.
    """
    fields: dict[str, str] = {}
    i = 0
    while i < len(payload):
        head = payload[i : i + 4]
        if len(head) < 4 or not head.isdigit() or not head.isascii():
            raise ValueError(f"malformed field header at position {i}")
        tag, length = head[:2], int(head[2:])
        value = payload[i + 4 : i + 4 + length]
        if len(value) != length:
            raise ValueError(f"field {tag} at position {i} is truncated")
        if tag in fields:
            raise ValueError(f"field {tag} appears twice")
        fields[tag] = value
        i += 4 + length
    return fields


def is_valid(payload: str) -> bool:
    """True when `payload` parses, starts with 000201, has the mandatory fields and a merchant
    account, and ends with a CRC field whose value matches."""
    if not isinstance(payload, str) or not payload.startswith("000201"):
        return False
    try:
        fields = parse(payload)
    except ValueError:
        return False
    if any(tag not in fields for tag in _REQUIRED):
        return False
    if not any(f"{n:02d}" in fields for n in range(2, 52)):
        return False
    if list(fields)[-1] != CRC or len(fields[CRC]) != 4:
        return False
    return crc16(payload[:-4]) == fields[CRC].upper()
