"""The kiosk protocol gate (cores/protocol.py): pure functions, no fixtures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from constants.states import ClientEvent, ErrorCode
from constants.tunables import CLIENT_FRAME_MAX_BYTES, CLIENT_FRAMES_BURST, CLIENT_FRAMES_PER_S
from cores.protocol import (
    FLOOD_CLOSE_FACTOR,
    Command,
    FloodGate,
    ProtocolError,
    TokenBucket,
    Verdict,
    encode,
    error_frame,
    origin_allowed,
    parse_client_frame,
)


def refused(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    return info.value


# --- accepted frames -------------------------------------------------------------------------


def test_show_menu_with_empty_values_is_accepted():
    assert parse_client_frame('{"event":"SHOW_MENU","values":{}}') == Command(ClientEvent.SHOW_MENU)


def test_show_menu_and_cancel_without_values_are_accepted():
    assert parse_client_frame('{"event":"SHOW_MENU"}') == Command(ClientEvent.SHOW_MENU)
    assert parse_client_frame('{"event":"CANCEL"}') == Command(ClientEvent.CANCEL)


def test_cancel_with_empty_values_is_accepted():
    assert parse_client_frame('{"event": "CANCEL", "values": {}}') == Command(ClientEvent.CANCEL)


def test_order_of_one_drink_is_accepted_with_its_id_and_quantity():
    command = parse_client_frame('{"event":"ORDER","values":{"id":"cola","total":1}}')
    assert command == Command(ClientEvent.ORDER, drink_id="cola", quantity=1)


def test_order_accepts_a_forty_character_id_of_the_allowed_alphabet():
    drink = "a-b_c0" + "x" * 34
    command = parse_client_frame(encode({"event": "ORDER", "values": {"id": drink, "total": 1}}))
    assert command.drink_id == drink


def test_command_is_immutable():
    command = Command(ClientEvent.CANCEL)
    with pytest.raises(AttributeError):
        command.event = ClientEvent.ORDER  # type: ignore[misc]


# --- malformed frames ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        '{"event":"SHOW_MENU","values":{}} trailing',
        "[]",
        '["SHOW_MENU", {}]',
        '"SHOW_MENU"',
        "1",
        "null",
        "true",
    ],
)
def test_text_that_is_not_a_json_object_is_a_malformed_frame(text):
    assert refused(text).code is ErrorCode.MALFORMED_FRAME


def test_binary_frame_is_refused_even_when_it_holds_valid_json():
    error = refused(b'{"event":"SHOW_MENU","values":{}}')
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert "binary" in error.message


def test_frame_over_the_size_limit_is_refused_before_parsing():
    padding = " " * CLIENT_FRAME_MAX_BYTES
    error = refused('{"event":"SHOW_MENU","values":{}}' + padding)
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert str(CLIENT_FRAME_MAX_BYTES) in error.message


def test_size_limit_counts_utf8_bytes_not_characters():
    # 1500 three-byte characters: under the limit in characters, over it in bytes.
    text = encode({"event": "SHOW_MENU", "values": {"x": "\u20ac" * 1500}})
    assert len(text) < CLIENT_FRAME_MAX_BYTES < len(text.encode())
    assert "bytes" in refused(text).message


def test_deeply_nested_json_is_refused_without_crashing():
    depth = (CLIENT_FRAME_MAX_BYTES - 2) // 2
    text = "[" * depth + "]" * depth
    assert len(text.encode()) <= CLIENT_FRAME_MAX_BYTES
    assert refused(text).code is ErrorCode.MALFORMED_FRAME


def test_deeply_nested_values_are_refused():
    inner = "{}"
    for _ in range(600):
        inner = '{"a":' + inner + "}"
    text = '{"event":"SHOW_MENU","values":' + inner + "}"
    assert len(text.encode()) <= CLIENT_FRAME_MAX_BYTES
    assert refused(text).code in (ErrorCode.MALFORMED_FRAME, ErrorCode.BAD_VALUES)


def test_lone_surrogate_in_a_text_frame_is_malformed():
    assert refused('{"event":"SHOW_MENU","values":{}}\ud800').code is ErrorCode.MALFORMED_FRAME


def test_duplicate_keys_are_refused_so_a_frame_cannot_say_two_things():
    text = '{"event":"SHOW_MENU","event":"PAYMENT_SUCCESS","values":{}}'
    assert refused(text).code is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_refused(constant):
    text = '{"event":"ORDER","values":{"id":"cola","total":' + constant + "}}"
    assert refused(text).code is ErrorCode.MALFORMED_FRAME


def test_unexpected_top_level_keys_are_refused():
    error = refused('{"event":"SHOW_MENU","values":{},"admin":true}')
    assert error.code is ErrorCode.MALFORMED_FRAME
    assert "admin" in error.message


@pytest.mark.parametrize(
    "text", ['{"values":{}}', '{"event":null}', '{"event":1}', '{"event":["ORDER"]}']
)
def test_missing_or_non_string_event_is_a_malformed_frame(text):
    assert refused(text).code is ErrorCode.MALFORMED_FRAME


# --- unknown events --------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["PAY", "show_menu", "Order", "", "REFUND"])
def test_event_that_is_not_a_kiosk_command_is_unknown(event):
    assert refused(encode({"event": event, "values": {}})).code is ErrorCode.UNKNOWN_EVENT


@pytest.mark.parametrize(
    "event", ["PAYMENT_SUCCESS", "DISPENSED", "ORDER_CREATED", "IDLE", "DISPENSING", "ERROR"]
)
def test_client_cannot_send_a_state_event(event):
    error = refused(encode({"event": event, "values": {"order_id": "x"}}))
    assert error.code is ErrorCode.UNKNOWN_EVENT
    assert "machine" in error.message


def test_unknown_event_message_does_not_repeat_a_huge_name():
    error = refused(encode({"event": "X" * 3000, "values": {}}))
    assert error.code is ErrorCode.UNKNOWN_EVENT
    assert len(error.message) < 200


# --- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["SHOW_MENU", "CANCEL"])
@pytest.mark.parametrize("values", [{"id": "cola"}, [], None, "x", 0, [{}]])
def test_show_menu_and_cancel_refuse_anything_but_empty_values(event, values):
    assert refused(encode({"event": event, "values": values})).code is ErrorCode.BAD_VALUES


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"total": 1},
        {"id": "", "total": 1},
        {"id": None, "total": 1},
        {"id": 7, "total": 1},
        {"id": ["cola"], "total": 1},
        {"id": "Cola", "total": 1},
        {"id": "co la", "total": 1},
        {"id": "../menu", "total": 1},
        {"id": "cola\n", "total": 1},
        {"id": "x" * 41, "total": 1},
        {"id": "k\u00f6la", "total": 1},
    ],
)
def test_order_without_a_valid_drink_id_has_bad_values(values):
    assert refused(encode({"event": "ORDER", "values": values})).code is ErrorCode.BAD_VALUES


@pytest.mark.parametrize("total", [2, 0, -1, 1.0, 1.5, True, "1", None, [1], {"n": 1}, 10**30])
def test_order_of_anything_but_exactly_one_drink_is_refused(total):
    error = refused(encode({"event": "ORDER", "values": {"id": "cola", "total": total}}))
    assert error.code is ErrorCode.BAD_VALUES
    assert error.message == "only one drink per order"


def test_order_without_total_is_refused():
    error = refused('{"event":"ORDER","values":{"id":"cola"}}')
    assert error.code is ErrorCode.BAD_VALUES
    assert "total" in error.message


@pytest.mark.parametrize("values", [None, [], "cola", 1])
def test_order_values_must_be_an_object(values):
    assert refused(encode({"event": "ORDER", "values": values})).code is ErrorCode.BAD_VALUES


def test_order_without_values_is_refused():
    assert refused('{"event":"ORDER"}').code is ErrorCode.BAD_VALUES


def test_order_with_extra_keys_is_refused():
    text = encode({"event": "ORDER", "values": {"id": "cola", "total": 1, "price": 0}})
    error = refused(text)
    assert error.code is ErrorCode.BAD_VALUES
    assert "price" in error.message


# --- any input at all ------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_any_text_is_either_a_command_or_a_protocol_error(text):
    try:
        command = parse_client_frame(text)
    except ProtocolError as error:
        assert isinstance(error.code, ErrorCode)
        assert error.message
    else:
        assert command.event in ClientEvent


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.sampled_from(["SHOW_MENU", "ORDER", "CANCEL", "PAYMENT_SUCCESS"]), json_values)
def test_any_json_values_are_either_a_valid_command_or_refused(event, values):
    try:
        command = parse_client_frame(json.dumps({"event": event, "values": values}))
    except ProtocolError as error:
        assert error.code in (ErrorCode.BAD_VALUES, ErrorCode.UNKNOWN_EVENT)
    else:
        assert command.event.value == event
        if command.event is ClientEvent.ORDER:
            assert command.quantity == 1 and command.drink_id


# --- outgoing frames -------------------------------------------------------------------------


def test_error_frame_carries_code_and_message_in_the_frame_shape():
    frame = json.loads(error_frame(ErrorCode.SOLD_OUT, "Cola is sold out"))
    assert frame == {
        "event": "ERROR",
        "values": {"code": "sold_out", "message": "Cola is sold out"},
    }


def test_encode_is_compact_json_that_keeps_unicode():
    text = encode({"event": "SHOW_MENU", "values": [{"name": "Teh Manis \u2615"}]})
    assert text == '{"event":"SHOW_MENU","values":[{"name":"Teh Manis \u2615"}]}'


def test_encode_refuses_nan_so_a_page_never_gets_invalid_json():
    with pytest.raises(ValueError):
        encode({"event": "X", "values": {"amount": float("nan")}})


# --- flood gate ------------------------------------------------------------------------------


def test_a_burst_of_frames_arriving_together_is_handled_up_to_the_burst():
    gate = FloodGate()
    verdicts = [gate.check(100.0) for _ in range(CLIENT_FRAMES_BURST + 1)]
    assert verdicts == [Verdict.HANDLE] * CLIENT_FRAMES_BURST + [Verdict.LIMIT]


def test_page_sending_fifteen_frames_a_second_is_never_limited():
    gate = FloodGate(per_s=20, burst=20)
    verdicts = [gate.check(100.0 + i / 15) for i in range(15 * 60)]
    assert set(verdicts) == {Verdict.HANDLE}


def test_page_at_the_rate_after_a_burst_is_handled_as_tokens_come_back():
    gate = FloodGate(per_s=4, burst=2)
    assert [gate.check(0.0) for _ in range(3)] == [Verdict.HANDLE] * 2 + [Verdict.LIMIT]
    # One token comes back every 1/4 s.
    assert gate.check(0.25) is Verdict.HANDLE
    assert gate.check(0.25) is Verdict.LIMIT
    assert gate.check(0.5) is Verdict.HANDLE


def test_page_sending_above_the_rate_is_limited_only_for_the_excess():
    gate = FloodGate(per_s=10, burst=10)
    verdicts = [gate.check(i / 20) for i in range(20 * 10)]  # 20 a second for 10 s
    handled = verdicts.count(Verdict.HANDLE)
    assert Verdict.CLOSE not in verdicts
    # The burst, then the rate: 10 + 10 a second (the last frame arrives at 9.95 s).
    assert handled == 10 + int(9.95 * 10)


def test_limit_lifts_once_the_bucket_has_refilled():
    gate = FloodGate(per_s=2, burst=2)
    for _ in range(3):
        gate.check(10.0)
    assert gate.check(10.4) is Verdict.LIMIT
    assert [gate.check(11.5) for _ in range(2)] == [Verdict.HANDLE] * 2


def test_page_that_keeps_flooding_is_closed_once_five_times_the_burst_arrived_at_once():
    gate = FloodGate(per_s=2, burst=2, close_factor=5)
    verdicts = [gate.check(50.0) for _ in range(11)]
    assert verdicts[:2] == [Verdict.HANDLE] * 2
    assert verdicts[2:10] == [Verdict.LIMIT] * 8
    assert verdicts[10] is Verdict.CLOSE


def test_page_flooding_at_five_times_the_rate_is_closed_but_not_at_four():
    def first_close(per_s_sent: float) -> int | None:
        gate = FloodGate(per_s=10, burst=10, close_factor=5)
        for i in range(int(per_s_sent * 30)):
            if gate.check(i / per_s_sent) is Verdict.CLOSE:
                return i
        return None

    assert first_close(40) is None
    assert first_close(60) is not None


def test_default_gate_handles_the_rate_then_limits_then_closes_a_frozen_flood():
    gate = FloodGate()
    verdicts = [gate.check(1000.0) for _ in range(CLIENT_FRAMES_BURST * FLOOD_CLOSE_FACTOR + 1)]
    assert verdicts.count(Verdict.HANDLE) == CLIENT_FRAMES_BURST
    assert verdicts[-1] is Verdict.CLOSE
    assert set(verdicts[CLIENT_FRAMES_BURST:-1]) == {Verdict.LIMIT}
    assert gate.per_s == CLIENT_FRAMES_PER_S


def test_clock_that_steps_back_refills_nothing():
    bucket = TokenBucket(rate_per_s=1, burst=1)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@given(st.lists(st.floats(0, 0.5, allow_nan=False), max_size=300))
def test_frames_handled_never_exceed_the_burst_plus_the_rate_times_the_time(gaps):
    gate = FloodGate(per_s=5, burst=3)
    now, handled = 0.0, 0
    for gap in gaps:
        now += gap
        handled += gate.check(now) is Verdict.HANDLE
    assert handled <= 3 + 5 * now + 1e-9


# --- the handshake's Origin ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (None, "127.0.0.1:3333"),
        (None, None),
        ("null", "127.0.0.1:3333"),
        ("http://127.0.0.1:3333", "127.0.0.1:3333"),
        ("http://LOCALHOST:3333", "localhost:3333"),
        ("https://kiosk.example", "kiosk.example"),
        ("http://kiosk.example", "kiosk.example:80"),
        ("http://[::1]:3333", "[::1]:3333"),
    ],
)
def test_no_origin_null_and_the_pages_own_origin_are_allowed(origin, host):
    assert origin_allowed(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://evil.example", "127.0.0.1:3333"),
        ("http://127.0.0.1:3334", "127.0.0.1:3333"),
        ("http://localhost:3333", "127.0.0.1:3333"),
        ("http://127.0.0.1:3333", None),
        ("ftp://127.0.0.1:3333", "127.0.0.1:3333"),
        ("http://127.0.0.1:3333/", "127.0.0.1:3333"),
        ("http://user@127.0.0.1:3333", "127.0.0.1:3333"),
        ("http://127.0.0.1:99999", "127.0.0.1:99999"),
        ("", "127.0.0.1:3333"),
        ("NULL", "127.0.0.1:3333"),
        ("file://", "127.0.0.1:3333"),
        ("http://127.0.0.1:3333", "127.0.0.1:3333/ws"),
    ],
)
def test_other_origins_are_refused(origin, host):
    assert not origin_allowed(origin, host)


def test_listed_origins_are_allowed_whatever_the_host():
    listed = ("http://kiosk.local:8080", "https://Shop.Example")
    assert origin_allowed("http://kiosk.local:8080", "127.0.0.1:3333", listed)
    assert origin_allowed("https://shop.example:443", "127.0.0.1:3333", listed)
    assert not origin_allowed("http://kiosk.local", "127.0.0.1:3333", listed)
    assert not origin_allowed("http://shop.example", "127.0.0.1:3333", listed)
