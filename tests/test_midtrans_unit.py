"""cores.midtrans without the sandbox: signatures, Transaction parsing, the retry schedule, and
the error shapes the sandbox cannot produce, played by a scripted HTTP server on port 0."""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from cores.config import Settings
from cores.midtrans import (
    GatewayRefused,
    GatewayTimeout,
    GatewayUnreachable,
    MalformedAnswer,
    MidtransClient,
    MidtransError,
    Transaction,
    backoff_delay,
    refund_idempotency_key,
    signature,
    verify_signature,
)

KEY = "SB-Mid-server-TEST"
OID = "vm-1-20261126-000123"


def qris_body(order_id: str = OID, **changes: Any) -> dict[str, Any]:
    """A qris charge answer as shared/midtrans.md draws it."""
    body = {
        "status_code": "201",
        "status_message": "QRIS transaction is created",
        "transaction_id": "0d8178e1-c7e6-4e55-9a4d-3f1b0c3c7b11",
        "order_id": order_id,
        "merchant_id": "G490526303",
        "gross_amount": "7000.00",
        "currency": "IDR",
        "payment_type": "qris",
        "transaction_time": "2026-11-26 10:00:00",
        "transaction_status": "pending",
        "fraud_status": "accept",
        "acquirer": "gopay",
        "actions": [
            {
                "name": "generate-qr-code",
                "method": "GET",
                "url": "http://gw/v2/qris/0d8178e1/qr-code",
            },
            {"name": "generate-qr-code-v2", "method": "GET", "url": "http://gw/v4/qris/x/qr-code"},
        ],
        "qr_string": "00020101021226650013ID.CO.QRIS.WWW6304A623",
        "expiry_time": "2026-11-26 10:15:00",
    }
    body.update(changes)
    return body


def status_body(transaction_status: str, status_code: str, **changes: Any) -> dict[str, Any]:
    body = qris_body(transaction_status=transaction_status, status_code=status_code, **changes)
    body.pop("qr_string")
    return body


# --------------------------------------------------------------------------------------------
# A scripted HTTP server


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless raw is given
    raw: bytes | None = None
    content_type: str = "application/json"
    drop: bool = False  # close the connection without an answer
    delay_s: float = 0.0  # wait this long before answering (bounded by the stub's stop)
    stall_body_s: float = 0.0  # send the headers, then wait this long before the body


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Stub:
    """Answers each request with the next scripted Reply (then `always`), records every one."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.always: Reply | None = None
        self.seen: list[Seen] = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._answer(self)

            def do_POST(self) -> None:
                stub._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client gave up on a delayed answer: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else b""
        self.seen.append(Seen(handler.command, handler.path, dict(handler.headers), data))
        reply = self.replies.popleft() if self.replies else self.always
        if reply is None:
            reply = Reply(599, {"status_code": "599", "status_message": "no scripted reply"})
        if reply.delay_s:
            self.release.wait(reply.delay_s)
        if reply.drop:
            handler.close_connection = True
            return
        payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", reply.content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if reply.stall_body_s:
            handler.wfile.flush()
            self.release.wait(reply.stall_body_s)
        handler.wfile.write(payload)

    def start(self) -> Stub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class FakeTime:
    """A monotonic clock that only the injected sleep moves: the schedule, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class MaxRandom(random.Random):
    """Full jitter always drawing its upper bound, to check the exponential envelope."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub().start()
    yield server
    server.stop()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(stub: Stub, fake_time: FakeTime) -> Iterator[Any]:
    made: list[MidtransClient] = []

    def make(**options: Any) -> MidtransClient:
        settings: dict[str, Any] = {
            "connect_timeout": 0.5,
            "read_timeout": 0.5,
            "retry_attempts": 4,
            "retry_budget_s": 10.0,
            "retry_base_s": 0.01,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
            "rng": random.Random(7),
        }
        settings.update(options)
        client = MidtransClient(stub.url, KEY, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def ok(body: dict[str, Any]) -> Reply:
    return Reply(200, body)


def error(code: str, message: str = "error", http: int | None = None, **extra: Any) -> Reply:
    return Reply(http or int(code), {"status_code": code, "status_message": message, **extra})


ITEMS = [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}]


# --------------------------------------------------------------------------------------------
# Signatures


def test_signature_is_sha512_hex_of_order_status_amount_and_key():
    # Vector from `printf '%s' "vm-1-20261126-0001232017000.00SB-Mid-server-TEST" | sha512sum`.
    assert signature(OID, "201", "7000.00", KEY) == (
        "96e88774fb9af2ec3a6670ac3a93f7a4441ae10366c93752aeee902a8c57912a"
        "354bfdab48e88945ff901487162c5ffb6fc3953165af722456bfb43ba01f43cd"
    )


def test_signature_depends_on_every_part():
    base = signature(OID, "200", "7000.00", KEY)
    assert signature(OID + "x", "200", "7000.00", KEY) != base
    assert signature(OID, "201", "7000.00", KEY) != base
    assert signature(OID, "200", "7000", KEY) != base
    assert signature(OID, "200", "7000.00", KEY + "x") != base


def signed(**changes: Any) -> dict[str, Any]:
    body = status_body("settlement", "200")
    body["signature_key"] = signature(body["order_id"], "200", "7000.00", KEY)
    body.update(changes)
    return body


def test_verify_signature_accepts_a_genuine_notification():
    assert verify_signature(signed(), KEY)


def test_verify_signature_accepts_the_digest_in_upper_case():
    body = signed()
    assert verify_signature({**body, "signature_key": body["signature_key"].upper()}, KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"gross_amount": "70000.00"},
        {"status_code": "201"},
        {"order_id": "vm-1-other"},
        {"signature_key": "0" * 128},
        {"signature_key": ""},
    ],
    ids=["amount", "status_code", "order_id", "zeros", "empty"],
)
def test_verify_signature_rejects_a_tampered_notification(changes):
    assert not verify_signature(signed(**changes), KEY)


@pytest.mark.parametrize("name", ["order_id", "status_code", "gross_amount", "signature_key"])
def test_verify_signature_rejects_a_notification_missing_a_field(name):
    body = signed()
    del body[name]
    assert not verify_signature(body, KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"gross_amount": 7000},
        {"gross_amount": 7000.0},
        {"status_code": 200},
        {"order_id": None},
        {"signature_key": ["x"]},
        {"signature_key": "é" * 128},
    ],
    ids=["amount-int", "amount-float", "code-int", "order-none", "sig-list", "sig-non-ascii"],
)
def test_verify_signature_is_false_for_mistyped_fields_and_never_raises(changes):
    assert verify_signature(signed(**changes), KEY) is False


def test_verify_signature_rejects_the_wrong_key_an_empty_key_and_non_mappings():
    assert not verify_signature(signed(), KEY + "x")
    assert not verify_signature(signed(), "")
    assert not verify_signature(["not", "a", "mapping"], KEY)  # type: ignore[arg-type]
    assert not verify_signature(None, KEY)  # type: ignore[arg-type]


def test_refund_idempotency_key_is_stable_short_and_distinct_per_refund():
    first = refund_idempotency_key(OID, "r1", 7000)
    assert first == refund_idempotency_key(OID, "r1", 7000)
    assert len(first) <= 46
    assert first != refund_idempotency_key(OID, "r2", 7000)
    assert first != refund_idempotency_key(OID + "x", "r1", 7000)
    assert first != refund_idempotency_key(OID, "r1", 3000)


# --------------------------------------------------------------------------------------------
# Transaction


def test_transaction_reads_a_qris_charge_answer():
    body = qris_body()
    txn = Transaction.from_body(body)
    assert txn.order_id == OID
    assert txn.status_code == "201"
    assert txn.gross_amount == "7000.00"
    assert txn.amount_idr == 7000
    assert txn.payment_type == "qris"
    assert txn.qr_string.startswith("000201")
    assert txn.actions["generate-qr-code-v2"] == "http://gw/v4/qris/x/qr-code"
    assert txn.qr_image_url == "http://gw/v2/qris/0d8178e1/qr-code"
    assert txn.is_pending and not txn.is_paid and not txn.is_final_unpaid
    assert txn.transaction_time == "2026-11-26 10:00:00"
    assert txn.raw == body


def test_transaction_expiry_is_read_as_jakarta_time():
    # 2026-11-26 10:15:00 WIB is 03:15:00 UTC: `date -u -d "2026-11-26 10:15:00 +0700" +%s`.
    assert Transaction.from_body(qris_body()).expiry_epoch == 1795662900


def test_transaction_expiry_with_an_explicit_zone_keeps_that_zone():
    txn = Transaction.from_body(qris_body(expiry_time="2026-11-26T03:15:00+00:00"))
    assert txn.expiry_epoch == 1795662900


@pytest.mark.parametrize("value", [None, "", "tomorrow"])
def test_transaction_expiry_is_none_when_absent_or_unreadable(value):
    body = qris_body(expiry_time=value)
    assert Transaction.from_body(body).expiry_epoch is None


def test_transaction_without_expiry_time_is_accepted():
    body = qris_body()
    del body["expiry_time"]
    assert Transaction.from_body(body).expiry_time is None


def test_transaction_of_gopay_has_no_qr_string_but_an_image_url():
    body = qris_body(payment_type="gopay", status_message="GO-PAY transaction is created")
    del body["qr_string"]
    txn = Transaction.from_body(body)
    assert txn.qr_string is None
    assert txn.qr_image_url == "http://gw/v2/qris/0d8178e1/qr-code"


def test_transaction_without_actions_has_no_image_url():
    body = qris_body()
    del body["actions"]
    assert Transaction.from_body(body).qr_image_url is None


def test_transaction_status_is_compared_case_insensitively():
    txn = Transaction.from_body(status_body("SETTLEMENT", "200"))
    assert txn.transaction_status == "settlement"
    assert txn.is_paid


@pytest.mark.parametrize(
    ("status", "fraud", "paid"),
    [
        ("settlement", "accept", True),
        ("settlement", None, True),
        ("capture", "accept", True),
        ("capture", "challenge", False),
        ("capture", None, False),
        ("pending", "accept", False),
        ("refund", "accept", False),
    ],
)
def test_transaction_is_paid_only_on_settlement_or_accepted_capture(status, fraud, paid):
    assert Transaction.from_body(status_body(status, "200", fraud_status=fraud)).is_paid is paid


@pytest.mark.parametrize("status", ["deny", "cancel", "expire", "failure"])
def test_transaction_deny_cancel_expire_failure_are_final_unpaid(status):
    txn = Transaction.from_body(status_body(status, "202"))
    assert txn.is_final_unpaid and not txn.is_paid and not txn.is_pending


def test_transaction_of_a_refund_carries_the_refund_amount():
    txn = Transaction.from_body(status_body("partial_refund", "200", refund_amount="3000.00"))
    assert txn.is_refunded and not txn.is_paid and not txn.is_final_unpaid
    assert txn.refund_amount == "3000.00"


def test_transaction_accepts_a_numeric_status_code_and_amount():
    txn = Transaction.from_body(qris_body(status_code=201, gross_amount=7000))
    assert txn.status_code == "201"
    assert txn.gross_amount == "7000.00"
    assert txn.amount_idr == 7000


@pytest.mark.parametrize(
    "missing", ["order_id", "transaction_id", "transaction_status", "status_code", "gross_amount"]
)
def test_transaction_missing_a_required_field_is_malformed(missing):
    body = qris_body()
    del body[missing]
    with pytest.raises(MalformedAnswer, match=missing):
        Transaction.from_body(body)


@pytest.mark.parametrize(
    "changes",
    [
        {"gross_amount": "seven thousand"},
        {"gross_amount": "7000.50"},
        {"gross_amount": "-7000.00"},
        {"gross_amount": "NaN"},
        {"gross_amount": True},
        {"transaction_status": ["pending"]},
        {"qr_string": 42.5},
        {"actions": {"generate-qr-code": "http://x"}},
        {"transaction_id": ""},
    ],
)
def test_transaction_with_mistyped_fields_is_malformed(changes):
    with pytest.raises(MalformedAnswer):
        Transaction.from_body(qris_body(**changes))


@pytest.mark.parametrize("body", [[], "pending", None, 201])
def test_transaction_from_something_not_an_object_is_malformed(body):
    with pytest.raises(MalformedAnswer, match="not a JSON object"):
        Transaction.from_body(body)


# --------------------------------------------------------------------------------------------
# Backoff maths


def test_backoff_is_full_jitter_under_a_doubling_envelope():
    rng = random.Random(1)
    for attempt in range(1, 8):
        ceiling = 0.25 * 2 ** (attempt - 1)
        draws = [backoff_delay(attempt, 0.25, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling / 2  # jitter spreads over the whole range


def test_backoff_envelope_doubles_per_attempt():
    assert [backoff_delay(n, 0.25, MaxRandom()) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]


def test_status_read_is_retried_with_backoff_until_it_succeeds(stub, make_client, fake_time):
    stub.script(error("503"), error("500"), ok(status_body("pending", "201")))
    client = make_client(rng=MaxRandom(), retry_base_s=0.1)
    txn = client.status(OID)
    assert txn.is_pending
    assert len(stub.seen) == 3
    assert fake_time.sleeps == [0.1, 0.2]


def test_retries_stop_at_the_attempt_cap(stub, make_client, fake_time):
    stub.always = error("503", "Service Unavailable")
    client = make_client(retry_attempts=3)
    with pytest.raises(GatewayUnreachable) as caught:
        client.status(OID)
    assert not isinstance(caught.value, GatewayTimeout)
    assert caught.value.code == "503"
    assert caught.value.attempts == 3
    assert len(stub.seen) == 3
    assert len(fake_time.sleeps) == 2


def test_retries_stop_when_the_next_delay_would_exceed_the_budget(stub, make_client, fake_time):
    stub.always = error("500")
    # Delays 0.3, 0.6, then 1.2 would end past 1.0 s: three attempts, two sleeps.
    client = make_client(retry_attempts=10, retry_budget_s=1.0, retry_base_s=0.3, rng=MaxRandom())
    with pytest.raises(GatewayUnreachable) as caught:
        client.status(OID)
    assert caught.value.attempts == 3
    assert fake_time.sleeps == [0.3, 0.6]


def test_last_attempt_timeouts_are_cut_to_the_remaining_budget(stub, fake_time):
    class Recording(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.timeouts: list[Any] = []

        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            self.timeouts.append(kwargs["timeout"])
            return super().request(*args, **kwargs)

    stub.always = error("500")
    with Recording() as session:
        client = MidtransClient(
            stub.url,
            KEY,
            session,
            connect_timeout=3.0,
            read_timeout=10.0,
            retry_attempts=2,
            retry_budget_s=4.0,
            retry_base_s=2.0,
            rng=MaxRandom(),
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )
        with pytest.raises(GatewayUnreachable):
            client.status(OID)
    assert session.timeouts == [(3.0, 4.0), (2.0, 2.0)]


def test_http_429_is_retried_like_a_5xx(stub, make_client):
    stub.script(error("429", "rate limit"), ok(status_body("pending", "201")))
    assert make_client().status(OID).is_pending
    assert len(stub.seen) == 2


def test_429_in_the_body_of_an_http_200_is_retried(stub, make_client):
    stub.script(error("429", http=200), error("503", http=200), ok(status_body("pending", "201")))
    assert make_client().status(OID).is_pending
    assert len(stub.seen) == 3


def test_429_when_retries_are_spent_is_unreachable_with_the_code(stub, make_client):
    stub.always = error("429", "rate limit")
    with pytest.raises(GatewayUnreachable) as caught:
        make_client(retry_attempts=2).status(OID)
    assert caught.value.code == "429"


def test_a_5xx_html_page_is_retried_not_malformed(stub, make_client):
    stub.always = Reply(502, raw=b"<html>Bad Gateway</html>", content_type="text/html")
    with pytest.raises(GatewayUnreachable) as caught:
        make_client(retry_attempts=2).status(OID)
    assert caught.value.code == "502"
    assert len(stub.seen) == 2


def test_a_dropped_connection_is_retried(stub, make_client):
    stub.script(Reply(drop=True), ok(status_body("settlement", "200")))
    assert make_client().status(OID).is_paid
    assert len(stub.seen) == 2


def test_a_read_timeout_is_retried_then_raises_gateway_timeout(stub, make_client):
    stub.always = Reply(200, status_body("pending", "201"), delay_s=5.0)
    client = make_client(read_timeout=0.1, retry_attempts=2)
    with pytest.raises(GatewayTimeout) as caught:
        client.status(OID)
    assert isinstance(caught.value, GatewayUnreachable)
    assert isinstance(caught.value.__cause__, requests.RequestException)
    assert caught.value.attempts == 2


def test_a_read_timeout_in_the_middle_of_the_body_is_a_gateway_timeout(stub, make_client):
    stub.always = Reply(200, status_body("pending", "201"), stall_body_s=5.0)
    with pytest.raises(GatewayTimeout):
        make_client(read_timeout=0.1, retry_attempts=1).status(OID)


def test_nothing_listening_is_unreachable_after_retries(fake_time):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    client = MidtransClient(
        f"http://127.0.0.1:{port}",
        KEY,
        connect_timeout=0.5,
        read_timeout=0.5,
        retry_attempts=2,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )
    with client, pytest.raises(GatewayUnreachable) as caught:
        client.status(OID)
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert caught.value.attempts == 2


# --------------------------------------------------------------------------------------------
# Answers that cannot be trusted, and refusals


def test_a_non_json_answer_is_malformed_and_not_retried(stub, make_client):
    stub.always = Reply(200, raw=b"<html>hello</html>", content_type="text/html")
    with pytest.raises(MalformedAnswer, match="not JSON") as caught:
        make_client().status(OID)
    assert isinstance(caught.value.__cause__, ValueError)
    assert len(stub.seen) == 1


def test_a_json_list_is_malformed(stub, make_client):
    stub.always = Reply(200, [status_body("pending", "201")])
    with pytest.raises(MalformedAnswer, match="not a JSON object"):
        make_client().status(OID)


def test_an_answer_without_status_code_is_malformed(stub, make_client):
    body = status_body("pending", "201")
    del body["status_code"]
    stub.always = Reply(200, body)
    with pytest.raises(MalformedAnswer, match="status_code"):
        make_client().status(OID)


def test_a_success_answer_missing_fields_is_malformed(stub, make_client):
    body = status_body("pending", "201")
    del body["transaction_id"]
    stub.always = Reply(200, body)
    with pytest.raises(MalformedAnswer, match="transaction_id") as caught:
        make_client().status(OID)
    assert caught.value.op == "status" and caught.value.order_id == OID
    assert len(stub.seen) == 1


def test_an_answer_about_another_order_is_malformed(stub, make_client):
    stub.always = ok(status_body("settlement", "200", order_id="vm-1-someone-else"))
    with pytest.raises(MalformedAnswer, match="another|vm-1-someone-else"):
        make_client().status(OID)


def test_a_success_code_the_call_does_not_expect_is_malformed(stub, make_client):
    stub.always = ok(status_body("pending", "201"))
    with pytest.raises(MalformedAnswer, match="unexpected status_code 201"):
        make_client().cancel(OID)


def test_a_success_body_with_an_http_error_status_is_malformed(stub, make_client):
    stub.always = Reply(404, status_body("pending", "201"))
    with pytest.raises(MalformedAnswer, match="HTTP 404"):
        make_client().status(OID)


def test_an_error_body_with_http_200_is_refused(stub, make_client):
    stub.always = error("401", "Access denied", http=200)
    with pytest.raises(GatewayRefused) as caught:
        make_client().status(OID)
    assert caught.value.code == "401"
    assert caught.value.message == "Access denied"
    assert caught.value.body["status_code"] == "401"


def test_refusals_are_not_retried(stub, make_client):
    stub.always = error("412", "Merchant cannot modify the status of the transaction")
    with pytest.raises(GatewayRefused) as caught:
        make_client().cancel(OID)
    assert caught.value.code == "412"
    assert caught.value.attempts == 1
    assert len(stub.seen) == 1


def test_a_400_carries_its_validation_messages(stub, make_client):
    messages = ["transaction_details.gross_amount is not equal to the sum of item_details"]
    stub.always = error("400", "Validation Error", validation_messages=messages)
    with pytest.raises(GatewayRefused) as caught:
        make_client().charge(OID, 7000, ITEMS, idempotency_key="k-1")
    assert caught.value.validation_messages == messages


def test_a_404_status_is_refused(stub, make_client):
    stub.always = error("404", "Transaction doesn't exist.")
    with pytest.raises(GatewayRefused) as caught:
        make_client().status(OID)
    assert caught.value.code == "404"


def test_every_error_is_a_midtrans_error(stub, make_client):
    stub.script(error("406"), Reply(200, raw=b"x"), error("503"))
    client = make_client(retry_attempts=1)
    for _ in range(3):
        with pytest.raises(MidtransError):
            client.status(OID)


# --------------------------------------------------------------------------------------------
# What goes on the wire


def test_charge_sends_auth_json_headers_idempotency_key_and_body(stub, make_client):
    stub.always = ok(qris_body())
    client = make_client(notification_url="http://127.0.0.1:9/notification")
    txn = client.charge(
        OID,
        7000,
        ITEMS,
        idempotency_key="key-123",
        expiry_minutes=3,
        metadata={"machine_id": "vm-1"},
        customer_details={"first_name": "Kiosk"},
    )
    assert txn.is_pending and txn.qr_string
    (seen,) = stub.seen
    assert (seen.method, seen.path) == ("POST", "/v2/charge")
    assert (
        seen.headers["Authorization"] == "Basic " + base64.b64encode(b"%s:" % KEY.encode()).decode()
    )
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Idempotency-Key"] == "key-123"
    assert seen.headers["X-Override-Notification"] == "http://127.0.0.1:9/notification"
    assert json.loads(seen.body) == {
        "payment_type": "qris",
        "transaction_details": {"order_id": OID, "gross_amount": 7000},
        "item_details": ITEMS,
        "custom_expiry": {"expiry_duration": 3, "unit": "minute"},
        "metadata": {"machine_id": "vm-1"},
        "customer_details": {"first_name": "Kiosk"},
    }


def test_charge_without_notification_url_sends_no_override(stub, make_client):
    stub.always = ok(qris_body())
    make_client().charge(OID, 7000, ITEMS, payment_type="gopay", idempotency_key="k")
    (seen,) = stub.seen
    assert "X-Override-Notification" not in seen.headers
    sent = json.loads(seen.body)
    assert sent["payment_type"] == "gopay"
    assert "custom_expiry" not in sent and "metadata" not in sent


def test_a_charge_denied_at_once_is_an_answer_not_an_error(stub, make_client):
    stub.always = ok(qris_body(status_code="202", transaction_status="deny"))
    txn = make_client().charge(OID, 7000, ITEMS, idempotency_key="k")
    assert txn.is_final_unpaid


def test_a_charge_in_flight_is_retried_with_the_same_idempotency_key(stub, make_client):
    in_flight = {
        "status_code": "202",
        "status_message": "Request with this Idempotency-Key is being processed",
    }
    stub.script(Reply(drop=True), Reply(202, in_flight), Reply(202, in_flight), ok(qris_body()))
    txn = make_client(retry_attempts=5).charge(OID, 7000, ITEMS, idempotency_key="same-key")
    assert txn.is_pending
    assert [s.headers["Idempotency-Key"] for s in stub.seen] == ["same-key"] * 4
    assert len({s.body for s in stub.seen}) == 1


def test_a_charge_still_in_flight_when_retries_are_spent_is_unreachable(stub, make_client):
    stub.always = Reply(202, {"status_code": "202", "status_message": "being processed"})
    with pytest.raises(GatewayUnreachable) as caught:
        make_client(retry_attempts=2).charge(OID, 7000, ITEMS, idempotency_key="k")
    assert caught.value.code == "202"


@pytest.mark.parametrize("key", ["", "x" * 47, "has space", "ключ"])
def test_charge_refuses_a_bad_idempotency_key_before_sending(stub, make_client, key):
    with pytest.raises(ValueError):
        make_client().charge(OID, 7000, ITEMS, idempotency_key=key)
    assert stub.seen == []


def test_charge_refuses_a_non_integer_amount(stub, make_client):
    with pytest.raises(TypeError):
        make_client().charge(OID, 7000.0, ITEMS, idempotency_key="k")  # type: ignore[arg-type]
    assert stub.seen == []


def test_status_cancel_expire_use_their_paths(stub, make_client):
    stub.script(
        ok(status_body("pending", "201")),
        ok(status_body("cancel", "200")),
        ok(status_body("expire", "407")),
    )
    client = make_client()
    assert client.status(OID).is_pending
    assert client.cancel(OID).transaction_status == "cancel"
    assert client.expire(OID).transaction_status == "expire"
    assert [(s.method, s.path) for s in stub.seen] == [
        ("GET", f"/v2/{OID}/status"),
        ("POST", f"/v2/{OID}/cancel"),
        ("POST", f"/v2/{OID}/expire"),
    ]


def test_cancel_and_expire_keep_one_idempotency_key_per_call_across_retries(stub, make_client):
    stub.script(
        error("503"),
        ok(status_body("cancel", "200")),
        Reply(drop=True),
        ok(status_body("expire", "407")),
        ok(status_body("cancel", "200")),
    )
    client = make_client()
    client.cancel(OID)
    client.expire(OID)
    client.cancel(OID)
    keys = [s.headers["Idempotency-Key"] for s in stub.seen]
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert len({keys[0], keys[2], keys[4]}) == 3  # a new call, a new key


def test_order_ids_are_quoted_in_paths(stub, make_client):
    stub.always = error("404")
    with pytest.raises(GatewayRefused):
        make_client().status("a/b?c")
    assert stub.seen[0].path == "/v2/a%2Fb%3Fc/status"


def test_refund_sends_its_key_amount_reason_and_a_derived_idempotency_key(stub, make_client):
    stub.always = ok(status_body("refund", "200", refund_amount="7000.00"))
    txn = make_client().refund(OID, refund_key="vm-1-000123-r1", amount=7000, reason="jammed")
    assert txn.is_refunded and txn.refund_amount == "7000.00"
    (seen,) = stub.seen
    assert seen.path == f"/v2/{OID}/refund"
    assert json.loads(seen.body) == {
        "refund_key": "vm-1-000123-r1",
        "amount": 7000,
        "reason": "jammed",
    }
    assert seen.headers["Idempotency-Key"] == refund_idempotency_key(OID, "vm-1-000123-r1", 7000)


def test_a_retried_refund_keeps_its_idempotency_key(stub, make_client):
    stub.script(error("500"), ok(status_body("refund", "200")))
    make_client().refund(OID, refund_key="r1", amount=7000, reason="x")
    assert stub.seen[0].headers["Idempotency-Key"] == stub.seen[1].headers["Idempotency-Key"]


# --------------------------------------------------------------------------------------------
# Logs and lifecycle


def test_each_call_logs_order_outcome_and_elapsed_but_never_the_key(stub, make_client, caplog):
    stub.script(error("503"), ok(status_body("pending", "201")), error("412"))
    client = make_client()
    with caplog.at_level(logging.INFO, logger="cores.midtrans"):
        client.status(OID)
        with pytest.raises(GatewayRefused):
            client.cancel(OID)
    calls = [
        r for r in caplog.records if r.getMessage().startswith("midtrans ") and "outcome" in r.kv
    ]
    assert [(r.kv["op"], r.kv["outcome"], r.kv["attempts"]) for r in calls] == [
        ("status", "pending", 2),
        ("cancel", "refused_412", 1),
    ]
    assert all(r.levelno == logging.INFO and r.kv["order_id"] == OID for r in calls)
    assert all(isinstance(r.kv["elapsed_ms"], int) for r in calls)
    assert KEY not in caplog.text and all(KEY not in str(r.kv) for r in caplog.records)


def test_from_settings_uses_base_url_and_server_key(stub):
    settings = Settings(midtrans_base_url_override=stub.url + "/")
    stub.always = ok(status_body("pending", "201"))
    with MidtransClient.from_settings(settings) as client:
        assert client.base_url == stub.url
        client.status(OID)
    expected = base64.b64encode(f"{settings.server_key}:".encode()).decode()
    assert stub.seen[0].headers["Authorization"] == f"Basic {expected}"


def test_close_leaves_a_session_passed_in_open(stub):
    stub.always = ok(status_body("pending", "201"))
    with requests.Session() as session:
        client = MidtransClient(stub.url, KEY, session)
        client.close()
        assert client.status(OID).is_pending  # the caller's session still works
