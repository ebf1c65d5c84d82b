"""Fuzzed requests against the notification receiver (services/notification_service.py),
started in-process on port 0 against a private real Redis and the local sandbox, sent as raw
bytes over a socket and drawn by hypothesis (tests/fuzz_strategies.py).

Properties, for every request Midtrans, or anyone else, may send:

- the sender gets a JSON answer with a Midtrans-style status_code in bounded time; never
  silence, never a crash;
- only a validly signed body is answered 200, and even then the body decides nothing: the
  order goes on the RECHECK set for the desk, which reads the status from Midtrans;
- a refused request changes nothing in Redis.

Requests that once hung or crashed the receiver (lone surrogates, a stalled body) have
regression tests at the end. Profiles and the count of cases run: tests/fuzz_helpers.py.
"""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from constants.tunables import NOTIFICATION_REQUEST_DEADLINE_S
from cores.broker import Broker
from cores.config import LOCAL_SANDBOX_KEY
from services.notification_service import NotificationServer
from tests import fuzz_strategies as fz
from tests.fuzz_helpers import FUZZ, PINNED, WAIT_S, count, exchange, fuzz_test
from tests.machine_helpers import desk_result, eventually, machine_state


@pytest.fixture
def order_on_screen(broker: Broker) -> str:
    """The machine shows a real order: a forged notification for it must change nothing."""
    broker.show_menu()
    return broker.place_order(fz.IN_STOCK)


def notification_port(receiver: NotificationServer) -> int:
    return receiver.port


@fuzz_test
@settings(FUZZ)
@given(data=st.data())
def test_notification_receiver_answers_4xx_json_unless_the_body_is_validly_signed(
    notification_server, broker, order_on_screen, errors, data
):
    count("notification")
    ids = st.just(order_on_screen) | fz.notification_text
    unknown = fz.notification_text.filter(lambda oid: oid != order_on_screen)
    case = data.draw(fz.notification_requests(LOCAL_SANDBOX_KEY, ids, unknown))
    notification_server.desk.handled.clear()
    before = machine_state(broker)
    answer = exchange(notification_port(notification_server), case.raw)
    assert answer is not None, f"closed without an answer: {case.label} {case.raw[:300]!r}"
    body = answer.json()
    assert body == {"status_code": str(answer.status), "status_message": body["status_message"]}
    assert isinstance(body["status_message"], str) and body["status_message"]
    after = machine_state(broker)
    if case.may_succeed:
        assert answer.status == 200, (case.label, body, case.raw[:300])
        # Accepted: the order goes on the RECHECK set with a hint to the desk, which reads
        # the order, finds none, and takes it off again. The body itself decides nothing.
        order_id = json.loads(case.raw.partition(b"\r\n\r\n")[2])["order_id"]
        assert desk_result(notification_server, order_id, timeout_s=WAIT_S) == "unknown_order"
        eventually(
            lambda: broker.redis.zscore(broker.recheck_key, order_id) is None,
            WAIT_S,
            f"the desk to take {order_id!r} off the RECHECK set",
        )
        after = machine_state(broker)
        hint = broker.redis.xrevrange(broker.commands_key, count=1)[0][1]
        assert hint == {"command": "RECHECK", "order_id": order_id}
        assert after.pop("commands")[0] == before.pop("commands")[0] + 1
    else:
        assert 400 <= answer.status < 500, (case.label, answer.status, body, case.raw[:300])
        assert not notification_server.desk.handled
    assert after == before
    errors.check()


# --- defects the fuzzing found (fixed), kept as regressions ---


@fuzz_test
@PINNED
@given(
    field=st.sampled_from(["order_id", "status_code", "gross_amount", "signature_key"]),
    junk=fz.surrogates,
)
@example(field="order_id", junk="\ud800")
def test_notification_with_lone_surrogates_gets_a_4xx_answer(
    notification_server, broker, errors, field, junk
):
    count("regression_surrogate_notification")
    body = {
        "order_id": "vm-1-x",
        "status_code": "200",
        "gross_amount": "7000.00",
        "transaction_status": "settlement",
        "signature_key": "0" * 128,
    }
    body[field] = junk + str(body[field])
    raw_body = json.dumps(body).encode()
    before = machine_state(broker)
    raw = fz.request_bytes(
        "POST", "/notification", [("Content-Length", str(len(raw_body)))], raw_body
    )
    answer = exchange(notification_port(notification_server), raw)
    assert answer is not None, "closed without an answer"
    assert 400 <= answer.status < 500
    assert machine_state(broker) == before


#: How long a stalled request may hold a connection before the receiver answers it: its
#: deadline, and a margin for a busy machine.
STALL_BOUND_S = NOTIFICATION_REQUEST_DEADLINE_S + 1.0


def test_notification_body_shorter_than_its_content_length_is_answered_408_at_the_deadline(
    notification_server,
):
    count("regression_stalled_notification")
    with socket.create_connection(("127.0.0.1", notification_port(notification_server))) as sock:
        sock.sendall(b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        sock.settimeout(STALL_BOUND_S)
        try:
            answer = sock.recv(1024)
        except TimeoutError:
            pytest.fail(f"no answer and no close within {STALL_BOUND_S} s")
    assert answer.startswith(b"HTTP/1.1 408")
