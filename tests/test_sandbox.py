"""cores.sandbox over real HTTP: the Midtrans subset of shared/midtrans.md, the simulator,
notifications, faults, bad input, and the SANDBOX service process.

Each test starts its own Sandbox on port 0 with an injected clock (real time plus an offset the
test moves), so expiries are reached by moving the clock, not by waiting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from cores import qris
from cores.config import Settings
from sandbox import FAULTS, Sandbox, SandboxError
from services.sandbox_service import build

KEY = "SB-Mid-server-unit-test-key"
JAKARTA = timezone(timedelta(hours=7))
ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WAIT_S = 5.0


# --------------------------------------------------------------------------------------------
# Helpers


class FakeClock:
    """Unix time that runs with real time, plus whatever the test adds with `advance`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Receiver:
    """A notification receiver on port 0. Answers 500 to the first `fail_first` POSTs, then 200,
    and records each accepted body with its arrival (monotonic) time."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.posts: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.cond:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                    if not failing:
                        receiver.posts.append(json.loads(data))
                        receiver.arrivals.append(time.monotonic())
                        receiver.cond.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def wait_for(self, predicate, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.posts), timeout)
            assert ok, f"notifications seen: {[summary(p) for p in self.posts]}"
            return list(self.posts)

    def wait_count(self, n: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        return self.wait_for(lambda posts: len(posts) >= n, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT_S)


class Api:
    """requests against the sandbox with the server key; every call has a timeout."""

    def __init__(self, session: requests.Session, base: str) -> None:
        self.session = session
        self.base = base

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.base + path, timeout=10, **kw)

    def charge(
        self,
        order_id: str,
        amount: int = 7000,
        payment_type: str = "qris",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> requests.Response:
        body: dict[str, Any] = {
            "payment_type": payment_type,
            "transaction_details": {"order_id": order_id, "gross_amount": amount},
            "item_details": [{"id": "cola", "price": amount, "quantity": 1, "name": "Cola"}],
        }
        body.update(extra)
        return self.post("/v2/charge", json=body, headers=headers or {})

    def status(self, ident: str) -> requests.Response:
        return self.get(f"/v2/{ident}/status")


def summary(post: dict[str, Any]) -> str:
    return f"{post.get('order_id')}:{post.get('transaction_status')}:{post.get('status_code')}"


def signed(body: dict[str, Any], key: str = KEY) -> bool:
    text = body["order_id"] + body["status_code"] + body["gross_amount"] + key
    return body["signature_key"] == hashlib.sha512(text.encode()).hexdigest()


def of(posts: list[dict[str, Any]], order_id: str) -> list[str]:
    return [p["transaction_status"] for p in posts if p["order_id"] == order_id]


def raw_http(sandbox: Sandbox, data: bytes, shut_write: bool = False) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def raw_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def jakarta(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=JAKARTA)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def sandbox(clock, receiver):
    sb = Sandbox(port=0, server_key=KEY, notification_url=receiver.url, clock=clock, seed=7)
    sb.notify_retry_delays_s = (0.05, 0.1, 0.2)
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def api(sandbox):
    session = requests.Session()
    session.auth = (KEY, "")
    session.headers["Accept"] = "application/json"
    yield Api(session, sandbox.url)
    session.close()


@pytest.fixture
def anon(sandbox):
    """A session without credentials (the QR image and the simulator need none)."""
    session = requests.Session()
    yield Api(session, sandbox.url)
    session.close()


# --------------------------------------------------------------------------------------------
# POST /v2/charge


def test_qris_charge_answers_pending_with_a_valid_qr_string_and_qr_actions(api, sandbox):
    r = api.charge("vm-1-0001", metadata={"machine_id": "vm-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["status_code"] == "201"
    assert body["status_message"] == "QRIS transaction is created"
    assert body["transaction_status"] == "pending"
    assert body["payment_type"] == "qris"
    assert body["gross_amount"] == "7000.00"
    assert body["currency"] == "IDR"
    assert body["fraud_status"] == "accept"
    assert body["acquirer"] == "gopay"
    assert body["merchant_id"] == "G000000001"
    assert qris.is_valid(body["qr_string"])
    assert qris.parse(body["qr_string"])["54"] == "7000"
    actions = {a["name"]: a for a in body["actions"]}
    tid = body["transaction_id"]
    assert actions["generate-qr-code"]["url"] == f"{sandbox.url}/v2/qris/{tid}/qr-code"
    assert actions["generate-qr-code"]["method"] == "GET"
    assert "generate-qr-code-v2" in actions


def test_gopay_charge_answers_gopay_actions_and_no_qr_string(api, sandbox):
    body = api.charge("vm-1-gp", payment_type="gopay").json()
    assert body["status_code"] == "201"
    assert body["status_message"] == "GO-PAY transaction is created"
    assert body["payment_type"] == "gopay"
    assert "qr_string" not in body
    names = [a["name"] for a in body["actions"]]
    assert names == ["generate-qr-code", "deeplink-redirect", "get-status", "cancel"]
    assert body["actions"][0]["url"].endswith(f"/v2/gopay/{body['transaction_id']}/qr-code")


def test_charge_times_are_jakarta_and_expiry_defaults_to_15_minutes(api, clock):
    body = api.charge("vm-1-time").json()
    created = jakarta(body["transaction_time"])
    assert abs(created.timestamp() - clock()) < 5
    assert jakarta(body["expiry_time"]) - created == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("duration", "unit", "seconds"),
    [(30, "second", 30), (2, "minute", 120), (1, "hour", 3600), (1, "day", 86400)],
)
def test_custom_expiry_sets_the_expiry_time(api, duration, unit, seconds):
    body = api.charge(
        f"vm-1-exp-{unit}", custom_expiry={"expiry_duration": duration, "unit": unit}
    ).json()
    delta = jakarta(body["expiry_time"]) - jakarta(body["transaction_time"])
    assert delta == timedelta(seconds=seconds)


def test_order_id_of_50_allowed_characters_is_accepted(api):
    order_id = ("aZ09-_~." * 7)[:50]
    assert api.charge(order_id).json()["order_id"] == order_id


def test_qris_acquirer_shopee_is_reflected_in_answer_and_qr(api):
    body = api.charge("vm-1-sp", qris={"acquirer": "airpay shopee"}).json()
    assert body["acquirer"] == "airpay shopee"
    assert qris.parse(qris.parse(body["qr_string"])["26"])["00"] == "ID.CO.SHOPEE.WWW"


def good_charge(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "payment_type": "qris",
        "transaction_details": {"order_id": "vm-1-bad", "gross_amount": 7000},
        "item_details": [{"id": "cola", "price": 7000, "quantity": 1, "name": "Cola"}],
    }
    body.update(changes)
    return body


def details(**changes: Any) -> dict[str, Any]:
    return {"order_id": "vm-1-bad", "gross_amount": 7000, **changes}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            good_charge(transaction_details=details(gross_amount=8000)),
            "transaction_details.gross_amount is not equal to the sum of item_details",
        ),
        (good_charge(transaction_details=details(gross_amount=0), item_details=None), "gross"),
        (good_charge(transaction_details=details(gross_amount=-7000), item_details=None), "gross"),
        (good_charge(transaction_details=details(gross_amount=7000.5)), "whole"),
        (good_charge(transaction_details=details(gross_amount="7000")), "number"),
        (good_charge(transaction_details=details(gross_amount=True)), "number"),
        (good_charge(transaction_details=details(order_id="a b")), "order_id"),
        (good_charge(transaction_details=details(order_id="a#b")), "order_id"),
        (good_charge(transaction_details=details(order_id="x" * 51)), "order_id"),
        (good_charge(transaction_details=details(order_id=123)), "order_id"),
        (good_charge(transaction_details={"gross_amount": 7000}), "order_id is required"),
        (good_charge(transaction_details={"order_id": "a"}), "gross_amount is required"),
        (good_charge(payment_type="credit_card"), "payment_type"),
        (good_charge(payment_type=None), "payment_type is required"),
        (good_charge(transaction_details=None), "transaction_details"),
        (good_charge(transaction_details=[1]), "transaction_details"),
        (good_charge(item_details=[{"price": 7000, "quantity": "1", "name": "C"}]), "quantity"),
        (good_charge(item_details=[{"price": 7000, "quantity": 1}]), "name"),
        (good_charge(item_details=[7000]), "item_details[0]"),
        (good_charge(item_details={"price": 7000}), "item_details"),
        (good_charge(custom_expiry={"expiry_duration": 5, "unit": "week"}), "unit"),
        (good_charge(custom_expiry={"expiry_duration": 0, "unit": "minute"}), "duration"),
        (good_charge(custom_expiry={"expiry_duration": 5, "unit": ["minute"]}), "unit"),
        (good_charge(custom_expiry="15m"), "custom_expiry"),
        (good_charge(qris={"acquirer": "bank"}), "acquirer"),
        (good_charge(metadata=["vm-1"]), "metadata"),
        (good_charge(customer_details="bob"), "customer_details"),
    ],
    ids=lambda v: None if isinstance(v, dict) else re.sub(r"\W+", "-", str(v))[:40],
)
def test_invalid_charge_gets_400_with_validation_messages_and_creates_nothing(
    api, sandbox, body, message
):
    body = {k: v for k, v in body.items() if v is not None}
    r = api.post("/v2/charge", json=body)
    assert r.status_code == 400
    answer = r.json()
    assert answer["status_code"] == "400"
    assert any(message in m for m in answer["validation_messages"]), answer
    assert sandbox.transactions() == []


def test_invalid_charge_lists_every_problem_at_once(api):
    r = api.post("/v2/charge", json={"transaction_details": {"gross_amount": -1}})
    assert len(r.json()["validation_messages"]) == 3


def test_duplicate_order_id_gets_406_while_pending_and_once_paid(api, sandbox):
    assert api.charge("vm-1-dup").json()["status_code"] == "201"
    r = api.charge("vm-1-dup")
    assert (r.status_code, r.json()["status_code"]) == (406, "406")
    sandbox.pay("vm-1-dup")
    assert api.charge("vm-1-dup").status_code == 406
    assert len(sandbox.transactions()) == 1


@pytest.mark.parametrize("ending", ["cancel", "expire", "deny"])
def test_order_id_may_be_charged_again_after_it_ended_unpaid(api, sandbox, ending):
    first = api.charge("vm-1-again").json()
    if ending == "deny":
        sandbox.deny("vm-1-again")
    else:
        assert api.post(f"/v2/vm-1-again/{ending}").status_code == 200
    second = api.charge("vm-1-again").json()
    assert second["status_code"] == "201"
    assert second["transaction_id"] != first["transaction_id"]
    assert api.status("vm-1-again").json()["transaction_id"] == second["transaction_id"]
    assert api.status(first["transaction_id"]).json()["transaction_status"] == ending
    assert [t["transaction_status"] for t in sandbox.transactions()] == [ending, "pending"]


# --------------------------------------------------------------------------------------------
# Auth


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Basic " + base64.b64encode(b"SB-Mid-server-other:").decode(),
        "Bearer " + KEY,
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(KEY.encode()[:-1] + b":").decode(),
    ],
    ids=["missing", "wrong-key", "not-basic", "garbage", "prefix-of-key"],
)
def test_bad_or_missing_server_key_gets_401_on_every_api_call(sandbox, auth):
    headers = {"Authorization": auth} if auth else {}
    with requests.Session() as s:
        for method, path in [
            ("POST", "/v2/charge"),
            ("GET", "/v2/anything/status"),
            ("POST", "/v2/anything/cancel"),
            ("POST", "/v2/anything/expire"),
            ("POST", "/v2/anything/refund"),
        ]:
            r = s.request(method, sandbox.url + path, json={}, headers=headers, timeout=10)
            assert r.status_code == 401, path
            assert r.json()["status_code"] == "401"


def test_without_a_configured_key_any_sandbox_key_works_and_signs(caplog):
    with Sandbox(port=0) as sb, requests.Session() as s:
        assert any("ANY server key" in r.getMessage() for r in caplog.records)
        s.auth = ("SB-Mid-server-whatever", "")
        body = Api(s, sb.url).charge("vm-1-any").json()
        assert body["status_code"] == "201"
        status = Api(s, sb.url).status("vm-1-any").json()
        assert signed(status, "SB-Mid-server-whatever")
        for key in ("Mid-server-production", "SB-Mid-server-", "SB-Mid-client-x"):
            s.auth = (key, "")
            assert Api(s, sb.url).status("vm-1-any").status_code == 401, key


def test_an_empty_configured_server_key_is_refused():
    with pytest.raises(ValueError):
        Sandbox(server_key=" ")


# --------------------------------------------------------------------------------------------
# GET /v2/{id}/status


def test_status_by_order_id_and_by_transaction_id_is_the_same_signed_answer(api):
    charged = api.charge("vm-1-st", metadata={"machine_id": "vm-1"}).json()
    by_order = api.status("vm-1-st")
    by_tid = api.status(charged["transaction_id"])
    assert by_order.status_code == by_tid.status_code == 200
    assert by_order.json() == by_tid.json()
    body = by_order.json()
    assert body["status_code"] == "201"
    assert body["transaction_status"] == "pending"
    assert body["gross_amount"] == "7000.00"
    assert body["metadata"] == {"machine_id": "vm-1"}
    assert body["expiry_time"] == charged["expiry_time"]
    assert signed(body)


def test_status_of_unknown_order_is_404(api):
    r = api.status("no-such-order")
    assert r.status_code == 404
    assert r.json()["status_code"] == "404"
    assert r.json()["status_message"] == "Transaction doesn't exist."


def test_status_after_payment_is_settlement_with_settlement_fields(api, sandbox):
    api.charge("vm-1-paid")
    sandbox.pay("vm-1-paid")
    body = api.status("vm-1-paid").json()
    assert body["status_code"] == "200"
    assert body["transaction_status"] == "settlement"
    assert body["transaction_type"] == "on-us"
    assert body["issuer"] == "gopay"
    assert body["acquirer"] == "gopay"
    assert "settlement_time" in body
    assert signed(body)


def test_status_of_a_denied_payment_is_202_with_http_200(api, sandbox):
    api.charge("vm-1-den")
    sandbox.deny("vm-1-den")
    r = api.status("vm-1-den")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("202", "deny")


def test_gopay_paid_by_scanning_settles_as_qris(api, sandbox, receiver):
    api.charge("vm-1-gq", payment_type="gopay")
    paid = api.post("/simulator/pay/vm-1-gq").json()
    assert paid["payment_type"] == "qris"
    assert api.status("vm-1-gq").json()["payment_type"] == "qris"
    posts = receiver.wait_count(2)
    assert [(p["transaction_status"], p["payment_type"]) for p in posts] == [
        ("pending", "gopay"),
        ("settlement", "qris"),
    ]


# --------------------------------------------------------------------------------------------
# Expiry


def test_status_read_after_custom_expiry_says_expire_407_and_notifies(api, clock, receiver):
    api.charge("vm-1-ex", custom_expiry={"expiry_duration": 2, "unit": "minute"})
    clock.advance(115)
    assert api.status("vm-1-ex").json()["transaction_status"] == "pending"
    clock.advance(10)
    r = api.status("vm-1-ex")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("407", "expire")
    assert signed(r.json())
    posts = receiver.wait_count(2)
    expired = posts[-1]
    assert (expired["transaction_status"], expired["status_code"]) == ("expire", "202")
    assert signed(expired)


def test_default_expiry_is_reached_after_15_minutes(api, clock):
    api.charge("vm-1-ex15")
    clock.advance(15 * 60 - 5)
    assert api.status("vm-1-ex15").json()["transaction_status"] == "pending"
    clock.advance(5)
    assert api.status("vm-1-ex15").json()["transaction_status"] == "expire"


def test_expired_transaction_cannot_be_paid_or_cancelled(api, sandbox, clock):
    api.charge("vm-1-ex2", custom_expiry={"expiry_duration": 1, "unit": "minute"})
    clock.advance(61)
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("vm-1-ex2")
    assert caught.value.status_code == "412"
    assert api.post("/v2/vm-1-ex2/cancel").status_code == 412


def test_expiry_timer_expires_and_notifies_without_any_read(api, receiver):
    api.charge("vm-1-timer", custom_expiry={"expiry_duration": 1, "unit": "second"})
    posts = receiver.wait_for(lambda ps: "expire" in of(ps, "vm-1-timer"))
    assert of(posts, "vm-1-timer") == ["pending", "expire"]


def test_check_expiries_applies_a_moved_clock_at_once(api, sandbox, clock, receiver):
    api.charge("vm-1-chk", custom_expiry={"expiry_duration": 1, "unit": "hour"})
    clock.advance(3601)
    sandbox.check_expiries()
    receiver.wait_for(lambda ps: "expire" in of(ps, "vm-1-chk"))


# --------------------------------------------------------------------------------------------
# cancel / expire


def test_cancel_of_pending_answers_200_cancel_then_412(api, sandbox):
    api.charge("vm-1-c")
    r = api.post("/v2/vm-1-c/cancel")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("200", "cancel")
    assert api.status("vm-1-c").json()["transaction_status"] == "cancel"
    again = api.post("/v2/vm-1-c/cancel")
    assert (again.status_code, again.json()["status_code"]) == (412, "412")


def test_cancel_by_transaction_id_works(api):
    tid = api.charge("vm-1-ct", payment_type="gopay").json()["transaction_id"]
    assert api.post(f"/v2/{tid}/cancel").json()["transaction_status"] == "cancel"


def test_cancel_of_settled_or_unknown_is_refused(api, sandbox):
    api.charge("vm-1-cs")
    sandbox.pay("vm-1-cs")
    assert api.post("/v2/vm-1-cs/cancel").status_code == 412
    assert api.post("/v2/nope/cancel").status_code == 404
    assert api.post("/v2/nope/expire").status_code == 404


def test_cancel_checks_state_before_body(api, sandbox):
    api.charge("vm-1-cb")
    sandbox.pay("vm-1-cb")
    assert api.post("/v2/vm-1-cb/cancel", data=b"not json").status_code == 412
    api.charge("vm-1-cb2")
    r = api.post("/v2/vm-1-cb2/cancel", data=b"not json")
    assert r.status_code == 400
    assert api.status("vm-1-cb2").json()["transaction_status"] == "pending"


def test_expire_of_pending_answers_407_with_http_200(api):
    api.charge("vm-1-e")
    r = api.post("/v2/vm-1-e/expire")
    assert r.status_code == 200
    assert (r.json()["status_code"], r.json()["transaction_status"]) == ("407", "expire")
    status = api.status("vm-1-e").json()
    assert (status["status_code"], status["transaction_status"]) == ("407", "expire")
    assert api.post("/v2/vm-1-e/expire").status_code == 412


def test_expire_of_settled_is_412(api, sandbox):
    api.charge("vm-1-es")
    sandbox.pay("vm-1-es")
    assert api.post("/v2/vm-1-es/expire").status_code == 412


# --------------------------------------------------------------------------------------------
# refund


@pytest.fixture
def paid(api, sandbox):
    api.charge("vm-1-r")
    sandbox.pay("vm-1-r")
    return "vm-1-r"


def test_refund_without_body_refunds_everything_left(api, paid):
    r = api.post(f"/v2/{paid}/refund")
    assert r.status_code == 200
    body = r.json()
    assert (body["status_code"], body["transaction_status"]) == ("200", "refund")
    assert body["refund_amount"] == "7000.00"
    assert body["refund_key"]
    status = api.status(paid).json()
    assert status["transaction_status"] == "refund"
    assert status["refund_amount"] == "7000.00"


def test_partial_refunds_add_up_to_the_gross_amount(api, paid, sandbox):
    first = api.post(f"/v2/{paid}/refund", json={"refund_key": "r1", "amount": 3000}).json()
    assert (first["transaction_status"], first["refund_amount"]) == ("partial_refund", "3000.00")
    status = api.status(paid).json()
    assert (status["transaction_status"], status["refund_amount"]) == ("partial_refund", "3000.00")
    too_much = api.post(f"/v2/{paid}/refund", json={"refund_key": "r2", "amount": 4001})
    assert (too_much.status_code, too_much.json()["status_code"]) == (400, "414")
    rest = api.post(f"/v2/{paid}/refund", json={"refund_key": "r3", "amount": 4000}).json()
    assert (rest["transaction_status"], rest["refund_amount"]) == ("refund", "4000.00")
    status = api.status(paid).json()
    assert status["refund_amount"] == "7000.00"
    assert [x["refund_key"] for x in status["refunds"]] == ["r1", "r3"]
    assert api.post(f"/v2/{paid}/refund", json={"refund_key": "r4"}).status_code == 412
    [ledger] = sandbox.transactions()
    assert [x["refund_amount"] for x in ledger["refunds"]] == ["3000.00", "4000.00"]


@pytest.mark.parametrize("amount", [0, -100, 100.5, 7001])
def test_refund_of_an_invalid_amount_is_414_with_http_400(api, paid, amount):
    r = api.post(f"/v2/{paid}/refund", json={"refund_key": "k", "amount": amount})
    assert (r.status_code, r.json()["status_code"]) == (400, "414")
    assert api.status(paid).json()["transaction_status"] == "settlement"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1]", b'{"amount": "7000"}', b'{"refund_key": 5}', b'{"reason": 1}'],
)
def test_refund_with_a_malformed_body_is_400(api, paid, body):
    r = api.post(f"/v2/{paid}/refund", data=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert api.status(paid).json()["transaction_status"] == "settlement"


def test_refund_key_replay_gets_the_same_answer_and_refunds_once(api, paid, sandbox):
    first = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 7000})
    again = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 7000})
    bare = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk"})
    assert first.json() == again.json() == bare.json()
    assert len(sandbox.transactions()[0]["refunds"]) == 1


def test_refund_key_reused_for_another_refund_is_406(api, paid, sandbox):
    api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 1000})
    other_amount = api.post(f"/v2/{paid}/refund", json={"refund_key": "rk", "amount": 2000})
    assert (other_amount.status_code, other_amount.json()["status_code"]) == (406, "406")
    api.charge("vm-1-r-other")
    sandbox.pay("vm-1-r-other")
    other_order = api.post("/v2/vm-1-r-other/refund", json={"refund_key": "rk", "amount": 1000})
    assert other_order.status_code == 406


def test_refund_checks_in_midtrans_order(api, sandbox):
    assert api.post("/v2/nope/refund", data=b"junk").status_code == 404
    api.charge("vm-1-ro")
    assert api.post("/v2/vm-1-ro/refund", data=b"junk").status_code == 412
    assert api.post("/v2/vm-1-ro/refund", json={"amount": 0}).status_code == 412
    sandbox.pay("vm-1-ro")
    assert api.post("/v2/vm-1-ro/refund", data=b"junk").status_code == 400


# --------------------------------------------------------------------------------------------
# Idempotency-Key


def test_same_idempotency_key_gets_the_same_answer_and_one_transaction(api, sandbox):
    key = {"Idempotency-Key": "0d8178e1-aaaa-bbbb-cccc-000000000001"}
    first = api.charge("vm-1-idem", headers=key)
    second = api.charge("vm-1-idem", headers=key)
    other_body = api.charge("vm-1-idem-other", headers=key)
    assert first.status_code == second.status_code == other_body.status_code == 200
    assert first.json() == second.json() == other_body.json()
    assert [t["order_id"] for t in sandbox.transactions()] == ["vm-1-idem"]


def test_failed_answers_are_not_stored_under_the_idempotency_key(api, sandbox):
    key = {"Idempotency-Key": "k-failed"}
    assert api.charge("vm-1-if", amount=-1, headers=key).status_code == 400
    assert api.charge("vm-1-if", headers=key).json()["status_code"] == "201"


def test_idempotency_key_is_forgotten_after_5_minutes(api, clock):
    key = {"Idempotency-Key": "k-old"}
    assert api.charge("vm-1-iold", headers=key).status_code == 200
    clock.advance(299)
    assert api.charge("vm-1-iold", headers=key).status_code == 200
    clock.advance(2)
    assert api.charge("vm-1-iold", headers=key).status_code == 406


def test_idempotency_key_longer_than_46_characters_is_400(api, sandbox):
    r = api.charge("vm-1-ilong", headers={"Idempotency-Key": "k" * 47})
    assert r.status_code == 400
    assert sandbox.transactions() == []


def test_idempotency_key_also_covers_refunds(api, paid, sandbox):
    key = {"Idempotency-Key": "refund-key-1"}
    first = api.post(f"/v2/{paid}/refund", json={"amount": 1000}, headers=key)
    second = api.post(f"/v2/{paid}/refund", json={"amount": 1000}, headers=key)
    assert first.json() == second.json()
    assert len(sandbox.transactions()[0]["refunds"]) == 1


def test_repeat_while_the_first_is_in_flight_gets_http_202(sandbox):
    sandbox.set_faults(LATENCY_MS=800)
    body = good_charge(transaction_details=details(order_id="vm-1-fly"))
    headers = {"Idempotency-Key": "k-in-flight"}
    barrier = threading.Barrier(2)
    answers: list[requests.Response] = []

    def send() -> None:
        with requests.Session() as s:
            barrier.wait(WAIT_S)
            answers.append(
                s.post(
                    sandbox.url + "/v2/charge",
                    json=body,
                    headers=headers,
                    auth=(KEY, ""),
                    timeout=10,
                )
            )

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    answers.sort(key=lambda r: r.status_code)
    assert [r.status_code for r in answers] == [200, 202]
    assert answers[1].json() == {
        "status_code": "202",
        "status_message": "Request with this Idempotency-Key is being processed",
    }
    sandbox.set_faults(LATENCY_MS=0)
    with requests.Session() as s:
        again = s.post(
            sandbox.url + "/v2/charge", json=body, headers=headers, auth=(KEY, ""), timeout=10
        )
    assert again.json() == answers[0].json()
    assert len(sandbox.transactions()) == 1


# --------------------------------------------------------------------------------------------
# QR image


def test_qr_image_urls_serve_a_png_without_auth(api, anon):
    qris_body = api.charge("vm-1-png").json()
    gopay_body = api.charge("vm-1-png-gp", payment_type="gopay").json()
    for body in (qris_body, gopay_body):
        for action in body["actions"]:
            if action["name"].startswith("generate-qr-code"):
                r = anon.session.get(action["url"], timeout=10)
                assert r.status_code == 200, action
                assert r.headers["Content-Type"] == "image/png"
                width, height = png_size(r.content)
                assert width > 0 and width == height


def test_qr_image_of_unknown_transaction_is_404_json(anon):
    r = anon.get("/v2/qris/00000000-0000-0000-0000-000000000000/qr-code")
    assert (r.status_code, r.json()["status_code"]) == (404, "404")


# --------------------------------------------------------------------------------------------
# Notifications


def test_each_change_is_notified_signed_with_string_values_and_metadata_object(
    api, sandbox, receiver
):
    api.charge("vm-1-n", metadata={"machine_id": "vm-1", "n": 1})
    sandbox.pay("vm-1-n")
    api.post("/v2/vm-1-n/refund", json={"refund_key": "n1", "amount": 2000})
    posts = receiver.wait_count(3)
    assert [(p["transaction_status"], p["status_code"]) for p in posts] == [
        ("pending", "201"),
        ("settlement", "200"),
        ("partial_refund", "200"),
    ]
    for post in posts:
        assert signed(post)
        assert post["metadata"] == {"machine_id": "vm-1", "n": 1}
        assert post["status_message"] == "midtrans payment notification"
        for name, value in post.items():
            if name not in ("metadata", "refunds"):
                assert isinstance(value, str), name
    assert posts[2]["refund_amount"] == "2000.00"


@pytest.mark.parametrize(
    ("ending", "status"), [("cancel", "cancel"), ("expire", "expire"), ("deny", "deny")]
)
def test_cancel_expire_and_deny_are_notified_with_202(api, sandbox, receiver, ending, status):
    api.charge("vm-1-n2")
    if ending == "deny":
        api.post("/simulator/deny/vm-1-n2")
    else:
        api.post(f"/v2/vm-1-n2/{ending}")
    last = receiver.wait_count(2)[-1]
    assert (last["transaction_status"], last["status_code"]) == (status, "202")
    assert signed(last)


def test_x_override_notification_sends_to_each_listed_url_instead(api, sandbox, receiver):
    second, third = Receiver(), Receiver()
    try:
        api.charge("vm-1-ov", headers={"X-Override-Notification": f"{second.url}, {third.url}"})
        sandbox.pay("vm-1-ov")
        for r in (second, third):
            assert of(r.wait_count(2), "vm-1-ov") == ["pending", "settlement"]
        api.charge("vm-1-plain")
        assert of(receiver.wait_count(1), "vm-1-plain") == ["pending"]
        assert of(receiver.posts, "vm-1-ov") == []
    finally:
        second.close()
        third.close()


def test_x_override_notification_must_be_http_urls(api, sandbox):
    r = api.charge("vm-1-ovbad", headers={"X-Override-Notification": "ftp://x"})
    assert r.status_code == 400
    assert sandbox.transactions() == []


def test_failing_receiver_is_retried_until_it_accepts(api):
    flaky = Receiver(fail_first=2)
    try:
        api.charge("vm-1-flaky", headers={"X-Override-Notification": flaky.url})
        posts = flaky.wait_count(1)
        assert flaky.attempts == 3
        assert of(posts, "vm-1-flaky") == ["pending"]
    finally:
        flaky.close()


def test_unreachable_receiver_does_not_stop_other_deliveries(api, sandbox):
    good = Receiver()
    dead = f"http://127.0.0.1:{free_port()}/gone"
    try:
        api.charge("vm-1-dead", headers={"X-Override-Notification": f"{dead},{good.url}"})
        sandbox.pay("vm-1-dead")
        assert of(good.wait_count(2), "vm-1-dead") == ["pending", "settlement"]
        assert api.status("vm-1-dead").json()["transaction_status"] == "settlement"
    finally:
        good.close()


# --------------------------------------------------------------------------------------------
# Faults


def test_latency_is_added_to_api_answers(api, sandbox):
    api.charge("vm-1-lat")
    sandbox.set_faults(LATENCY_MS=300)
    start = time.monotonic()
    assert api.status("vm-1-lat").status_code == 200
    assert time.monotonic() - start >= 0.3


def test_error_rate_answers_500_503_or_429_and_changes_nothing(api, sandbox):
    sandbox.set_faults(ERROR_RATE=1)
    codes = set()
    for i in range(12):
        r = api.charge(f"vm-1-err-{i}")
        assert r.status_code in (500, 503, 429)
        assert r.json()["status_code"] == str(r.status_code)
        assert r.json()["status_message"]
        codes.add(r.status_code)
    assert len(codes) > 1
    assert sandbox.transactions() == []


def test_error_rate_covers_the_qr_image_too(api, anon, sandbox):
    url = api.charge("vm-1-err-qr").json()["actions"][0]["url"]
    sandbox.set_faults(ERROR_RATE=1)
    assert anon.session.get(url, timeout=10).status_code in (500, 503, 429)


def test_drop_rate_closes_the_connection_after_carrying_out_the_call(api, sandbox):
    sandbox.set_faults(DROP_RATE=1)
    key = {"Idempotency-Key": "k-dropped"}
    with pytest.raises(requests.ConnectionError):
        api.charge("vm-1-drop", headers=key)
    sandbox.set_faults(DROP_RATE=0)
    [txn] = sandbox.transactions()
    retry = api.charge("vm-1-drop", headers=key).json()
    assert retry["transaction_id"] == txn["transaction_id"]


def test_http200_errors_moves_every_error_code_into_the_body(api, sandbox):
    sandbox.set_faults(HTTP200_ERRORS=1)
    r = api.status("nope")
    assert (r.status_code, r.json()["status_code"]) == (200, "404")
    with requests.Session() as s:
        r = s.get(sandbox.url + "/v2/nope/status", timeout=10)
    assert (r.status_code, r.json()["status_code"]) == (200, "401")
    assert api.charge("vm-1-h", amount=0).json()["status_code"] == "400"
    sandbox.set_faults(ERROR_RATE=1)
    r = api.status("nope")
    assert r.status_code == 200 and r.json()["status_code"] in ("500", "503", "429")


def test_pending_after_pay_hides_the_payment_from_status_reads_for_a_while(
    api, sandbox, clock, receiver
):
    sandbox.set_faults(PENDING_AFTER_PAY_S=60)
    api.charge("vm-1-pap", payment_type="gopay")
    sandbox.pay("vm-1-pap")
    status = api.status("vm-1-pap").json()
    assert (status["status_code"], status["transaction_status"]) == ("201", "pending")
    assert status["payment_type"] == "gopay"
    assert signed(status)
    assert api.post("/v2/vm-1-pap/cancel").status_code == 412
    assert api.post("/v2/vm-1-pap/expire").status_code == 412
    assert sandbox.transactions()[0]["transaction_status"] == "settlement"
    receiver.wait_for(lambda ps: "settlement" in of(ps, "vm-1-pap"))
    clock.advance(61)
    assert api.status("vm-1-pap").json()["transaction_status"] == "settlement"


def test_notify_delay_holds_notifications_back(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_DELAY_S=0.4)
    start = time.monotonic()
    api.charge("vm-1-late")
    receiver.wait_count(1)
    assert receiver.arrivals[0] - start >= 0.4


def test_notify_duplicate_rate_sends_each_notification_twice(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_DUPLICATE_RATE=1)
    api.charge("vm-1-twice")
    posts = receiver.wait_count(2)
    assert posts[0] == posts[1]


def test_notify_reorder_sends_a_transactions_notifications_newest_first(api, sandbox, receiver):
    sandbox.set_faults(NOTIFY_REORDER=1)
    api.charge("vm-1-rev")
    sandbox.pay("vm-1-rev")
    assert of(receiver.wait_count(2), "vm-1-rev") == ["settlement", "pending"]


def test_refund_disabled_answers_412(api, paid, sandbox):
    sandbox.set_faults(REFUND_DISABLED=1)
    r = api.post(f"/v2/{paid}/refund", json={"refund_key": "x", "amount": 7000})
    assert (r.status_code, r.json()["status_code"]) == (412, "412")
    assert api.status(paid).json()["transaction_status"] == "settlement"


def test_channel_disabled_answers_402_to_charges(api, sandbox):
    sandbox.set_faults(CHANNEL_DISABLED=1)
    r = api.charge("vm-1-402")
    assert (r.status_code, r.json()["status_code"]) == (402, "402")
    assert sandbox.transactions() == []


def test_bad_qr_fault_hands_out_an_unparsable_qr_string(api, sandbox):
    sandbox.set_faults(BAD_QR=1)
    assert not qris.is_valid(api.charge("vm-1-badqr").json()["qr_string"])


def test_faults_never_touch_the_simulator(api, anon, sandbox):
    api.charge("vm-1-sim-f")
    sandbox.set_faults(ERROR_RATE=1, DROP_RATE=1)
    assert anon.get("/simulator/transactions").status_code == 200
    assert anon.get("/simulator").status_code == 200
    assert anon.post("/simulator/pay/vm-1-sim-f").status_code == 200


def test_faults_endpoint_shows_and_changes_the_switches(anon, sandbox):
    shown = anon.get("/simulator/faults").json()
    assert set(shown) == set(FAULTS)
    assert all(v == 0 for v in shown.values())
    r = anon.post("/simulator/faults", json={"LATENCY_MS": 5, "SANDBOX_FAULT_ERROR_RATE": 0.5})
    assert r.status_code == 200
    assert (r.json()["LATENCY_MS"], r.json()["ERROR_RATE"]) == (5, 0.5)
    assert sandbox.faults["ERROR_RATE"] == 0.5


@pytest.mark.parametrize(
    "body",
    [
        b'{"NOPE": 1}',
        b'{"ERROR_RATE": 2}',
        b'{"LATENCY_MS": -1}',
        b'{"LATENCY_MS": 1.5}',
        b'{"ERROR_RATE": "x"}',
        b"not json",
        b"[]",
    ],
)
def test_faults_endpoint_refuses_bad_settings_and_changes_nothing(anon, sandbox, body):
    r = anon.post("/simulator/faults", data=body)
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert r.json()["validation_messages"]
    assert all(v == 0 for v in sandbox.faults.values())


def test_set_faults_refuses_unknown_names():
    sb = Sandbox()
    with pytest.raises(ValueError):
        sb.set_faults(SOMETHING=1)


def test_constructor_faults_are_applied():
    sb = Sandbox(faults={"LATENCY_MS": 20, "SANDBOX_FAULT_REFUND_DISABLED": 1})
    assert sb.faults["LATENCY_MS"] == 20
    assert sb.faults["REFUND_DISABLED"] == 1


# --------------------------------------------------------------------------------------------
# Simulator


def test_simulator_page_lists_pending_transactions_with_qr_and_buttons(api, anon, sandbox):
    api.charge("vm-1-page")
    api.charge("vm-1-page-paid")
    sandbox.pay("vm-1-page-paid")
    r = anon.get("/simulator")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert 'data-order="vm-1-page"' in page
    assert 'data-order="vm-1-page-paid"' not in page
    assert 'data-act="pay"' in page and 'data-act="deny"' in page
    # No external resources: every src/href is relative to the sandbox.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    img = re.search(r'<img[^>]*src="([^"]+)"', page).group(1)
    assert png_size(anon.get(img).content)[0] > 0
    fragment = anon.get("/simulator?part=list").text
    assert 'data-order="vm-1-page"' in fragment and "<html" not in fragment


def test_simulator_transactions_is_the_ledger_with_a_status_filter(api, anon, sandbox):
    api.charge("vm-1-l1")
    api.charge("vm-1-l2", payment_type="gopay")
    sandbox.pay("vm-1-l2")
    api.post("/v2/vm-1-l2/refund", json={"refund_key": "l2", "amount": 7000})
    everything = anon.get("/simulator/transactions").json()
    assert [(t["order_id"], t["transaction_status"]) for t in everything] == [
        ("vm-1-l1", "pending"),
        ("vm-1-l2", "refund"),
    ]
    for t in everything:
        for name in (
            "order_id",
            "transaction_id",
            "gross_amount",
            "payment_type",
            "transaction_status",
            "transaction_time",
            "qr_image_url",
            "refunds",
        ):
            assert name in t, name
    assert everything[1]["refunds"][0]["refund_amount"] == "7000.00"
    assert everything[0]["qr_image_url"].startswith(sandbox.url + "/v2/qris/")
    pending = anon.get("/simulator/transactions?status=pending").json()
    assert [t["order_id"] for t in pending] == ["vm-1-l1"]
    assert sandbox.transactions(status="refund")[0]["order_id"] == "vm-1-l2"


def test_simulator_pay_and_deny_answer_404_unknown_and_412_not_pending(api, anon):
    r = anon.post("/simulator/pay/nope")
    assert (r.status_code, r.json()["status_code"]) == (404, "404")
    api.charge("vm-1-sp1")
    assert anon.post("/simulator/pay/vm-1-sp1").json()["transaction_status"] == "settlement"
    again = anon.post("/simulator/pay/vm-1-sp1")
    assert (again.status_code, again.json()["status_code"]) == (412, "412")
    assert anon.post("/simulator/deny/vm-1-sp1").status_code == 412
    api.charge("vm-1-sp2")
    assert anon.post("/simulator/deny/vm-1-sp2").json()["transaction_status"] == "deny"


def test_simulator_pay_works_without_content_length(api, sandbox):
    api.charge("vm-1-curl")
    answer = raw_http(
        sandbox,
        b"POST /simulator/pay/vm-1-curl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    status, body = raw_json(answer)
    assert (status, body["transaction_status"]) == (200, "settlement")


def test_programmatic_pay_and_deny_raise_sandbox_errors(api, sandbox):
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("nope")
    assert caught.value.status_code == "404"
    api.charge("vm-1-prog")
    assert sandbox.deny("vm-1-prog")["transaction_status"] == "deny"
    with pytest.raises(SandboxError) as caught:
        sandbox.pay("vm-1-prog")
    assert caught.value.status_code == "412"


def test_root_redirects_to_the_simulator(anon):
    r = anon.get("/", allow_redirects=False)
    assert (r.status_code, r.headers["Location"]) == (302, "/simulator")


# --------------------------------------------------------------------------------------------
# Bad input


def test_non_json_charge_is_400(api, sandbox):
    for data in (b"not json", b"[1, 2]", b"", b'"text"', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        r = api.post("/v2/charge", data=data, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["status_code"]) == (400, "400"), data[:10]
        assert r.json()["validation_messages"]
    assert sandbox.transactions() == []


def test_body_over_64_kib_is_400_and_the_connection_stays_usable(api):
    big = json.dumps({"payment_type": "qris", "pad": "x" * 70_000}).encode()
    r = api.post("/v2/charge", data=big, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")
    assert api.status("nope").status_code == 404


def test_post_without_content_length_is_400(sandbox):
    auth = base64.b64encode(f"{KEY}:".encode()).decode()
    answer = raw_http(
        sandbox,
        f"POST /v2/charge HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode(),
    )
    status, body = raw_json(answer)
    assert (status, body["status_code"]) == (400, "400")
    assert "Content-Length" in body["validation_messages"][0]


def test_chunked_body_is_400(api):
    r = api.post("/v2/charge", data=iter([b"{}"]), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["status_code"]) == (400, "400")


def test_body_shorter_than_its_content_length_is_400_not_a_hang(sandbox):
    answer = raw_http(
        sandbox,
        b"POST /v2/charge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
        shut_write=True,
    )
    assert raw_json(answer)[0] == 400


def test_malformed_request_line_gets_a_json_error(sandbox):
    status, body = raw_json(raw_http(sandbox, b"NOT A REQUEST\r\n\r\n"))
    assert status == 400
    assert body["status_code"] == "400"


def test_unknown_paths_and_methods_get_json_errors(api, anon):
    for path in ("/nope", "/v2/", "/v2/a/b/c/d/e", "/v2/x/unknown", "/simulator/nope"):
        r = anon.get(path)
        assert (r.status_code, r.json()["status_code"]) == (404, "404"), path
    assert api.get("/v2/charge").status_code == 405
    assert api.post("/v2/x/status").status_code == 405
    assert anon.session.delete(anon.base + "/simulator/faults", timeout=10).status_code == 405


def test_server_keeps_serving_after_bad_input(api, sandbox):
    raw_http(sandbox, b"\x00\x01garbage\r\n\r\n")
    api.post("/v2/charge", data=b"{")
    assert api.charge("vm-1-after").json()["status_code"] == "201"


# --------------------------------------------------------------------------------------------
# Concurrency and lifecycle


def test_concurrent_charges_all_succeed_with_distinct_transactions(sandbox):
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        with requests.Session() as s:
            r = Api(s, sandbox.url)
            s.auth = (KEY, "")
            body = r.charge(f"vm-1-par-{i}").json()
            with lock:
                answers.append(body)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert len({a["transaction_id"] for a in answers if a["status_code"] == "201"}) == 20
    assert len(sandbox.transactions()) == 20


def test_concurrent_pays_of_one_order_settle_it_once(api, sandbox, receiver):
    api.charge("vm-1-race")
    codes: list[int] = []

    def pay() -> None:
        with requests.Session() as s:
            codes.append(s.post(sandbox.url + "/simulator/pay/vm-1-race", timeout=10).status_code)

    threads = [threading.Thread(target=pay) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert sorted(codes) == [200] + [412] * 9
    receiver.wait_for(lambda ps: "settlement" in of(ps, "vm-1-race"))
    sandbox.stop()
    assert of(receiver.posts, "vm-1-race") == ["pending", "settlement"]


def test_stop_closes_the_port_and_open_connections():
    sb = Sandbox(port=0, server_key=KEY).start()
    port = sb.port
    assert sb.url == f"http://127.0.0.1:{port}"
    with requests.Session() as s:
        assert s.get(sb.url + "/simulator/faults", timeout=10).status_code == 200
        sb.stop()
        sb.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serve_forever_returns_after_request_stop():
    sb = Sandbox(port=0, server_key=KEY)
    thread = threading.Thread(target=sb.serve_forever)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while sb._server is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with requests.Session() as s:
            assert s.get(sb.url + "/simulator/faults", timeout=10).status_code == 200
    finally:
        sb.request_stop()
        thread.join(WAIT_S)
    assert not thread.is_alive()


def test_service_builds_the_sandbox_from_settings():
    settings = Settings(
        sandbox_host="127.0.0.1",
        sandbox_port=0,
        midtrans_server_key=KEY,
        sandbox_notification_url="http://127.0.0.1:9/n",
        sandbox_faults={"LATENCY_MS": 7},
    )
    sb = build(settings)
    assert sb.server_key == KEY
    assert sb.notification_urls == ["http://127.0.0.1:9/n"]
    assert sb.faults["LATENCY_MS"] == 7


def test_service_process_serves_until_sigterm_then_stops_cleanly():
    script = (
        "from cores.config import Settings\n"
        "from cores.logs import setup\n"
        "from services.sandbox_service import run\n"
        "setup('SANDBOX', 'vm-1')\n"
        "run(Settings(sandbox_port=0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen = []
        url = None
        try:
            while url is None:
                line = lines.get(timeout=20)
                seen.append(line)
                found = re.search(r"msg=\"sandbox ready\".* url=(http://\S+)", line)
                url = found.group(1) if found else None
            with requests.Session() as s:
                assert s.get(url + "/simulator/faults", timeout=10).status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(WAIT_S)
        while not lines.empty():
            seen.append(lines.get())
    text = "".join(seen)
    assert "ANY key" in text
    assert 'msg="sandbox stopped"' in text
    assert "Traceback" not in text
